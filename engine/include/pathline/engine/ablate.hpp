// Ablations: the [ablation] table of a pipeline file expanded into variants, validated all at once,
// grouped by what training computes (train once, sample many), run as child processes, and
// summarised in results.csv, results.md and charts.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "pathline/engine/train.hpp"

namespace pathline {

// One variant: the swept keys' values (as --set text) in the order of the sweep's keys.
struct AblationVariant {
  std::vector<std::pair<std::string, std::string>> settings;
  // Swept keys that do not apply to this variant (not a parameter of its component), dropped.
  std::vector<std::string> dropped;
  std::string label;     // "path.type=cosine, solver.steps=4"
  std::string dir;       // its folder name in the ablation directory
  std::string training;  // the training-relevant config's hash: variants sharing it share a model
  std::vector<std::string> overrides() const;
};

struct AblationPlan {
  std::filesystem::path file;
  std::vector<std::string> base_overrides;  // the ablate command's own --set
  std::vector<std::string> keys;            // swept keys, in the file's order
  std::vector<AblationVariant> variants;    // distinct variants, in sweep order
  std::vector<std::string> notes;           // duplicates merged, keys dropped
  std::size_t trainings() const;            // distinct training configs
};

// Reads [ablation], expands it ("grid" or "zip", sub-tables as zipped groups, "*" for a type: every
// registered component of that kind) and validates every variant. Throws ConfigError with every
// problem of every variant ("file:line:column: variant N (label): message") before anything runs.
PATHLINE_API AblationPlan plan_ablation(const std::filesystem::path& file, const Registry& registry,
                                        const std::vector<std::string>& overrides);

// Starts and waits for the `pathline` children an ablation runs (a training or a sampling each).
// The command line supplies one; the engine starts no processes itself.
class ChildRunner {
 public:
  virtual ~ChildRunner() = default;
  // Starts `pathline ARGS...` with its stderr written to `log`; returns an id for finished().
  virtual long start(const std::vector<std::string>& args, const std::filesystem::path& log) = 0;
  struct Finished {
    long id = -1;
    bool ok = false;
    std::string failure;  // "killed by signal 9", or "" (the child's log says why)
  };
  // Waits until one started child ends; id -1 when none is running.
  virtual Finished finished() = 0;
};

struct AblateOptions {
  std::vector<std::string> overrides;
  int jobs = 1;                              // concurrent child processes
  std::optional<std::filesystem::path> out;  // default: <run.dir>/<config stem>-ablation
  ChildRunner* runner = nullptr;             // runs each training and sampling (not needed for a dry run)
  std::vector<std::string> plugin_dirs;      // passed on to the children
  bool dry_run = false;                      // plan, validate and print; run nothing
};

// What an ablation did: its directory, how many variants it has and how many of them failed.
struct AblateResult {
  std::filesystem::path dir;
  std::size_t variants = 0, failed = 0;  // both 0 for a dry run
};

// `pathline ablate CONFIG`: runs what is not done yet (a re-run skips finished variants and resumes
// unfinished trainings), writes results.csv, results.md, results.png and results.svg into the
// ablation directory and says how it went.
PATHLINE_API AblateResult ablate_job(const std::filesystem::path& file, const Registry& registry,
                                     const AblateOptions& options, const Logger& log);

}  // namespace pathline
