// [run]: its keys, declared beside the jobs that read them (jobs.cpp, build.cpp), and read once.
#include "pathline/engine/settings.hpp"

namespace pathline {

const std::vector<ParamSpec>& RunSettings::specs() {
  static const std::vector<ParamSpec> specs = {
      ParamSpec::string("name", "",
                        "run name: the run directory is `<dir>/<name>` (`-2`, `-3`, ... if it exists); \"\" "
                        "(the default): the config file's stem"),
      ParamSpec::string("dir", "runs", "parent folder of run directories"),
      ParamSpec::integer("seed", 0,
                         "seeds every random draw: data, source, times, pairing, initialisation, sampling")
          .at_least(0),
      ParamSpec::choice(
          "device", {"auto", "cpu", "cuda"}, "auto",
          "where the model trains, samples and is judged: `\"auto\"` = a CUDA GPU when one is visible, else "
          "the CPU; `\"cpu\"`; `\"cuda\"` = the GPU (of index `LOCAL_RANK` in a data-parallel run), an error "
          "(exit 2, one line) where none is visible. `summary.json`'s `platform.device` says which ran"),
      ParamSpec::boolean("deterministic", false,
                         "only deterministic kernels (LibTorch's deterministic algorithms, cuDNN's "
                         "deterministic convolutions), so that a GPU run repeats bit for bit and resumes "
                         "exactly; slower, and an operation without such a kernel stops the run naming it. "
                         "CPU runs repeat at a fixed thread count anyway"),
      ParamSpec::integer("threads", 0,
                         "LibTorch intra-op threads; 0 uses every core (divided among the ranks of a "
                         "data-parallel run on the machine)")
          .at_least(0),
      ParamSpec::real("timeout", 300.0,
                      "data parallel: seconds to wait for the other ranks, to meet and in each collective, "
                      "before stopping with an error ([distributed.md](distributed.md))")
          .greater_than(0)};
  return specs;
}

RunSettings RunSettings::read(const Params& t) {
  RunSettings s;
  s.name = t.string("name");
  s.dir = t.string("dir");
  s.seed = static_cast<std::uint64_t>(t.integer("seed"));
  s.device = t.string("device");
  s.deterministic = t.boolean("deterministic");
  s.threads = t.integer("threads");
  s.timeout = t.real("timeout");
  return s;
}

// The Markdown table of docs/pipeline.md: `key` | default | meaning.
std::string settings_markdown(const std::vector<ParamSpec>& specs) {
  std::string text = "| key | default | meaning |\n|-----|---------|---------|\n";
  for (const ParamSpec& spec : specs) {
    // format_value writes a float "auto" as "auto".
    std::string value = spec.is_required() ? "required" : format_value(*spec.default_value);
    if (!value.empty() && value.front() == '"') value = "`" + value + "`";  // strings as code
    text += "| `" + spec.name + "` | " + value + " | " + spec.doc + " |\n";
  }
  return text;
}

}  // namespace pathline
