// `pathline ablate`: expansion (grid, zip, groups, "*"), validation of every variant at once, shared
// trainings, skipping on re-run, failures that do not stop the others, and the results files.
#include <nlohmann/json.hpp>

#include "pathline/engine/pipeline.hpp"
#include "pathline/plot/plot.hpp"
#include "support/support.hpp"

namespace pathline {
namespace {

namespace fs = std::filesystem;
using testing::lines_of;
using testing::read_text;
using testing::run_cli;

const char* kBase = R"([dataset]
type = "toy2d"
shape = "checkerboard"
[model]
type = "mlp"
width = 32
depth = 2
[train]
steps = 40
batch_size = 128
checkpoint_every = 0
[sample]
n = 300
trajectories = 0
[[metric]]
type = "energy_distance"
)";

class Ablate : public testing::FolderTest {
 protected:
  fs::path write(const std::string& ablation) {
    fs::path file = path("sweep.toml");
    testing::write_text(file, std::string(kBase) + "\n" + ablation);
    return file;
  }
  AblationPlan plan(const std::string& ablation, const std::vector<std::string>& overrides = {}) {
    return plan_ablation(write(ablation), testing::builtin_registry(), overrides);
  }
  static std::vector<std::string> labels(const AblationPlan& p) {
    std::vector<std::string> out;
    for (const auto& v : p.variants) out.push_back(v.label);
    return out;
  }
};

TEST_F(Ablate, GridZipAndGroupsExpandInFileOrder) {
  auto grid = plan("[ablation]\n\"solver.type\" = [\"euler\", \"heun\"]\n\"solver.steps\" = [2, 4, 8]\n");
  EXPECT_EQ(grid.keys, (std::vector<std::string>{"solver.type", "solver.steps"}));
  EXPECT_EQ(labels(grid), (std::vector<std::string>{
                              "solver.type=euler, solver.steps=2", "solver.type=euler, solver.steps=4",
                              "solver.type=euler, solver.steps=8", "solver.type=heun, solver.steps=2",
                              "solver.type=heun, solver.steps=4", "solver.type=heun, solver.steps=8"}));
  EXPECT_EQ(grid.trainings(), 1u);  // sampling keys only: one model for all six

  auto zip = plan(
      "[ablation]\nmode = \"zip\"\n\"solver.type\" = [\"euler\", \"heun\"]\n\"solver.steps\" = [8, 4]\n");
  EXPECT_EQ(labels(zip), (std::vector<std::string>{"solver.type=euler, solver.steps=8",
                                                   "solver.type=heun, solver.steps=4"}));

  // A sub-table is one axis whose keys move in step; the grid crosses it with the rest.
  auto grouped = plan(
      "[ablation]\n\"path.type\" = [\"linear\", \"cosine\"]\n[ablation.solver]\n\"solver.type\" = "
      "[\"euler\", "
      "\"midpoint\"]\n\"solver.steps\" = [8, 4]\n");
  EXPECT_EQ(labels(grouped),
            (std::vector<std::string>{"path.type=linear, solver.type=euler, solver.steps=8",
                                      "path.type=linear, solver.type=midpoint, solver.steps=4",
                                      "path.type=cosine, solver.type=euler, solver.steps=8",
                                      "path.type=cosine, solver.type=midpoint, solver.steps=4"}));
  EXPECT_EQ(grouped.trainings(), 2u);  // one model per path
}

TEST_F(Ablate, KeysThatDoNotApplyAreDroppedAndDuplicatesRunOnce) {
  auto p = plan("[ablation]\n\"solver.type\" = [\"euler\", \"dopri5\"]\n\"solver.steps\" = [2, 4]\n");
  EXPECT_EQ(labels(p), (std::vector<std::string>{"solver.type=euler, solver.steps=2",
                                                 "solver.type=euler, solver.steps=4", "solver.type=dopri5"}));
  ASSERT_EQ(p.variants[2].dropped.size(), 1u);
  EXPECT_EQ(p.variants[2].dropped[0], "solver.steps (not a parameter of solver 'dopri5')");
  ASSERT_EQ(p.notes.size(), 2u);
  EXPECT_EQ(p.notes[0], "dropped solver.steps (not a parameter of solver 'dopri5') in variant 3");
  EXPECT_NE(p.notes[1].find("repeats an earlier one"), std::string::npos) << p.notes[1];

  // One note per dropped key, naming the variants, however many there are.
  auto many = plan(
      "[ablation]\n\"run.seed\" = [0, 1, 2, 3, 4, 5, 6]\n[ablation.solver]\n\"solver.type\" = [\"euler\", "
      "\"dopri5\"]\n\"solver.atol\" = [1e-4, 1e-4]\n");
  ASSERT_EQ(many.variants.size(), 14u);
  ASSERT_EQ(many.notes.size(), 1u);
  EXPECT_EQ(many.notes[0],
            "dropped solver.atol (not a parameter of solver 'euler') in 7 variants: 1, 3, 5, 7, 9, 11, 13");
}

TEST_F(Ablate, StarSweepsEveryRegisteredComponentIncludingPlugins) {
  auto p = plan("[ablation]\n\"path.type\" = \"*\"\n");
  EXPECT_EQ(labels(p).size(), testing::builtin_registry().names(Kind::path).size());
  // A plugin installed beside the built-in ones joins the sweep without editing the file.
  fs::create_directories(path("plugins"));
  fs::copy_file(testing::fixture("fixture_good"), path("plugins") / "libfixture_good.so");
  write("[ablation]\n\"path.type\" = [\"*\"]\n");
  auto r = run_cli("ablate '" + path("sweep.toml").string() + "' --dry-run --plugin-dir '" +
                   path("plugins").string() + "'");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("path.type=fixture_path"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("path.type=linear"), std::string::npos) << r.err;
}

TEST_F(Ablate, EveryInvalidVariantIsReportedBeforeAnythingRuns) {
  write("[ablation]\n\"path.type\" = [\"linear\", \"bogus\"]\n\"solver.steps\" = [4, -1]\n");
  auto r = run_cli("ablate '" + path("sweep.toml").string() + "' --out '" + path("out").string() + "'");
  EXPECT_EQ(r.code, 2);
  const std::string file = path("sweep.toml").string();
  auto lines = lines_of(r.err);
  // Variants 2, 3 and 4 are bad; each line points at the [ablation] key and names the variant.
  std::size_t bad_path = 0, bad_steps = 0;
  for (const auto& line : lines) {
    if (line.rfind(file + ":19:15: variant ", 0) == 0 &&
        line.find("[ablation] path.type = bogus: unknown path type 'bogus'") != std::string::npos)
      ++bad_path;
    if (line.rfind(file + ":20:18: variant ", 0) == 0 &&
        line.find("[ablation] solver.steps = -1: ") != std::string::npos)
      ++bad_steps;
  }
  EXPECT_EQ(bad_path, 2u) << r.err;       // variants 3 and 4
  EXPECT_EQ(bad_steps, 2u) << r.err;      // variants 2 and 4
  EXPECT_FALSE(fs::exists(path("out")));  // nothing ran

  write("[ablation]\nmode = \"zip\"\n\"solver.type\" = [\"euler\", \"heun\"]\n\"solver.steps\" = [2]\n");
  auto zip = run_cli("ablate '" + path("sweep.toml").string() + "'");
  EXPECT_EQ(zip.code, 2);
  EXPECT_NE(
      zip.err.find(
          file +
          ":18:1: [ablation] zips lists of different lengths (2 for solver.type and 1 for solver.steps)"),
      std::string::npos)
      << zip.err;
  write("");
  auto none = run_cli("ablate '" + path("sweep.toml").string() + "'");
  EXPECT_EQ(none.code, 2);
  EXPECT_NE(none.err.find("no [ablation] table"), std::string::npos) << none.err;
}

// A typo in a sweep key is an error with a did-you-mean, as in pipeline tables, never a note and a
// lone "(base)" variant; an unquoted dotted key (a TOML table) is told to be quoted.
TEST_F(Ablate, SweepKeyTyposAreErrorsWithADidYouMean) {
  const std::string file = path("sweep.toml").string();
  auto refused = [&](const std::string& ablation) {
    write(ablation);
    auto r = run_cli("ablate '" + file + "' --dry-run");
    EXPECT_EQ(r.code, 2) << ablation << r.err;
    EXPECT_EQ(r.err.find("(base)"), std::string::npos) << r.err;
    return r.err;
  };
  EXPECT_CONTAINS(refused("[ablation]\n\"solver.typ\" = [\"euler\"]\n"),
                  file +
                      ":19:16: [ablation] \"solver.typ\": no solver of this sweep ('euler') has a parameter "
                      "'typ'; did you mean \"solver.type\"?");
  EXPECT_CONTAINS(refused("[ablation]\n\"solvr.steps\" = [2, 4]\n"),
                  file + ":19:17: [ablation] \"solvr.steps\": unknown table [solvr]; did you mean [solver]?");
  EXPECT_CONTAINS(refused("[ablation]\n\"train.lrr\" = [1e-3]\n"), "did you mean");
  EXPECT_CONTAINS(
      refused("[ablation]\nsolver.type = [\"euler\", \"heun\"]\n"),
      file +
          ":19:15: [ablation] solver.type: TOML reads an unquoted dotted key as a table; write the "
          "key in quotes: \"solver.type\" = [...]");
  // A key that some variants' components declare is still dropped where it does not apply.
  EXPECT_NO_THROW(plan("[ablation]\n\"solver.type\" = [\"euler\", \"dopri5\"]\n\"solver.rtol\" = [1e-3]\n"));
}

TEST_F(Ablate, TrainsOncePerTrainingConfigSkipsOnRerunAndSurvivesAFailingVariant) {
  // Two paths x two solvers: 4 variants, 2 trainings. A zipped t_start/t_end pair that cannot be
  // integrated (t_start above t_end) fails at sampling; the other variants go on.
  write(
      "[ablation]\n\"path.type\" = [\"linear\", \"cosine\"]\n\"solver.type\" = [\"euler\", \"midpoint\"]\n"
      "[ablation.interval]\n\"sample.t_start\" = [0.0, 0.9]\n\"sample.t_end\" = [1.0, 0.5]\n");
  const fs::path out = path("out");
  auto r = run_cli("ablate '" + path("sweep.toml").string() + "' --jobs 2 --out '" + out.string() + "'");
  EXPECT_EQ(r.code, 1) << r.err;  // some variants failed: said by the exit code
  std::size_t trainings = 0;
  for (const auto& e : fs::directory_iterator(out))
    trainings += e.path().filename().string().rfind("train-", 0) == 0;
  EXPECT_EQ(trainings, 2u);
  auto csv = lines_of(read_text(out / "results.csv"));
  ASSERT_EQ(csv.size(), 9u);  // header + 8 variants
  EXPECT_EQ(csv[0],
            "variant,path.type,solver.type,sample.t_start,sample.t_end,energy_distance,nfe,train_seconds,"
            "sample_seconds,status,error,dir");
  std::size_t ok = 0, failed = 0;
  for (std::size_t i = 1; i < csv.size(); ++i) {
    if (csv[i].find(",ok,") != std::string::npos) ++ok;
    if (csv[i].find(",failed,") != std::string::npos) {
      ++failed;
      EXPECT_NE(csv[i].find("must be below sample.t_end"), std::string::npos) << csv[i];
    }
  }
  EXPECT_EQ(ok, 4u);
  EXPECT_EQ(failed, 4u);
  const std::string md = read_text(out / "results.md");
  EXPECT_NE(md.find("| path.type | solver.type | sample.t_start | sample.t_end | energy_distance |"),
            std::string::npos);
  EXPECT_NE(md.find("**"), std::string::npos);  // the best value is marked
  EXPECT_NE(md.find("Failed variants:"), std::string::npos);
  if (plot::available()) {
    EXPECT_TRUE(fs::exists(out / "results.png"));
    EXPECT_EQ(read_text(out / "results.svg").find("<?xml"), 0u);
  } else {  // built with PATHLINE_CHARTS=OFF
    EXPECT_FALSE(fs::exists(out / "results.png"));
  }

  // The same command again: finished variants are skipped, nothing is trained again.
  auto again = run_cli("ablate '" + path("sweep.toml").string() + "' --jobs 2 --out '" + out.string() + "'");
  EXPECT_NE(again.err.find("ablate: 4 variants already done (skipped)"), std::string::npos) << again.err;
  EXPECT_EQ(again.err.find("] train "), std::string::npos) << again.err;
  EXPECT_EQ(lines_of(read_text(out / "results.csv")), csv);
}

}  // namespace
}  // namespace pathline
