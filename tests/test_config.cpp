// Pipeline config validation: every kind of error with its exact message and position, all of
// them in one pass; overrides; defaults; the resolved config round trip.
#include "pathline/engine/config.hpp"
#include "support/support.hpp"

namespace pathline {
namespace {

const std::string kBase =
    "[dataset]\n"           // 1
    "type = \"toy2d\"\n"    // 2
    "shape = \"moons\"\n"   // 3
    "\n"                    // 4
    "[model]\n"             // 5
    "type = \"mlp\"\n"      // 6
    "width = 64\n";         // 7

// A registry with the built-ins plus a dataset that has a required key.
const Registry& registry() {
  static Registry* r = [] {
    auto* copy = new Registry(testing::builtin_registry());
    Factory<Dataset> factory = [](const Params&, const BuildContext&) -> std::shared_ptr<Dataset> { return nullptr; };
    copy->add({Kind::dataset,
               {"needs_file", "test dataset", {ParamSpec::string("file", "", "where the data is").required()}},
               nullptr,
               factory});
    return copy;
  }();
  return *r;
}

std::vector<std::string> problems(const std::string& text, const std::vector<std::string>& overrides = {}) {
  ConfigOptions options;
  options.overrides = overrides;
  try {
    parse_config(text, "pipe.toml", registry(), options);
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()).find("\n\n"), std::string::npos);
    return e.problems();
  }
  return {};
}

std::string one_problem(const std::string& text, const std::vector<std::string>& overrides = {}) {
  auto p = problems(text, overrides);
  EXPECT_EQ(p.size(), 1u) << ::testing::PrintToString(p);
  return p.empty() ? "" : p[0];
}

std::string names(Kind kind) {
  std::string out;
  for (const auto& n : registry().names(kind)) out += (out.empty() ? "" : ", ") + n;
  return out;
}

TEST(Config, ValidConfigFillsEveryDefault) {
  PipelineConfig c = parse_config(kBase, "pipe.toml", registry());
  EXPECT_EQ(c.component(Kind::dataset).type, "toy2d");
  EXPECT_EQ(c.component(Kind::dataset).params.string("shape"), "moons");
  EXPECT_EQ(c.component(Kind::model).params.integer("width"), 64);
  EXPECT_EQ(c.component(Kind::model).params.integer("depth"), 4);  // the mlp's default
  EXPECT_EQ(c.component(Kind::path).type, "linear");
  EXPECT_EQ(c.component(Kind::coupling).type, "independent");
  EXPECT_EQ(c.component(Kind::time_sampler).type, "uniform");
  EXPECT_EQ(c.component(Kind::parameterization).type, "velocity");
  EXPECT_EQ(c.component(Kind::solver).type, "euler");
  EXPECT_TRUE(c.metrics.empty());
  EXPECT_EQ(c.table("train").integer("steps"), 2000);
  EXPECT_EQ(c.table("train").real_list("betas"), (std::vector<double>{0.9, 0.999}));
  EXPECT_EQ(c.table("run").string("device"), "cpu");
}

TEST(Config, ResolvedConfigRoundTripsToTheSameValues) {
  PipelineConfig c = parse_config(kBase + "[train]\nlr = 3e-4\nbetas = [0.8, 0.95]\n[[metric]]\ntype = \"energy_distance\"\n",
                                  "pipe.toml", registry());
  std::string text = c.to_toml();
  PipelineConfig again = parse_config(text, "resolved.toml", registry());
  EXPECT_EQ(again.to_toml(), text);
  EXPECT_DOUBLE_EQ(again.table("train").real("lr"), 3e-4);
  EXPECT_EQ(again.table("train").real_list("betas"), (std::vector<double>{0.8, 0.95}));
  ASSERT_EQ(again.metrics.size(), 1u);
  EXPECT_EQ(again.metrics[0].type, "energy_distance");
  EXPECT_NE(text.find("[solver]\ntype = \"euler\"\n"), std::string::npos);
}

TEST(Config, TomlSyntaxErrorGivesPosition) {
  std::string p = one_problem("[dataset]\ntype = \"toy2d\"\nshape = moons\n");
  EXPECT_EQ(p.rfind("pipe.toml:3:9: TOML syntax error: ", 0), 0u) << p;
}

TEST(Config, UnknownTableSuggestsClosest) {
  EXPECT_EQ(one_problem(kBase + "[trian]\nsteps = 5\n"),
            "pipe.toml:8:2: unknown table [trian]; did you mean [train]? known tables: dataset, path, coupling, "
            "time_sampler, parameterization, model, solver, metric, run, train, sample, eval");
}

TEST(Config, TopLevelKeyIsReported) {
  EXPECT_EQ(one_problem("seed = 3\n" + kBase),
            "pipe.toml:1:1: expected a table such as [run], found a top-level key 'seed' (an integer (3))");
}

TEST(Config, UnknownComponentTypeListsRegisteredAndSuggests) {
  EXPECT_EQ(one_problem(kBase + "[path]\ntype = \"linaer\"\n"),
            "pipe.toml:9:8: unknown path type 'linaer'; did you mean 'linear'? registered paths: " + names(Kind::path));
  EXPECT_EQ(one_problem(kBase + "[solver]\ntype = \"zzzzzzzz\"\n"),
            "pipe.toml:9:8: unknown solver type 'zzzzzzzz'; registered solvers: " + names(Kind::solver));
}

TEST(Config, UnknownKeySuggestsClosest) {
  std::string text = kBase;
  text.replace(text.find("width"), 5, "widht");
  EXPECT_EQ(one_problem(text), "pipe.toml:7:1: unknown key 'widht' in [model] (type 'mlp'); did you mean 'width'?");
  EXPECT_EQ(one_problem(kBase + "[train]\nbogus_key = 1\n").rfind("pipe.toml:9:1: unknown key 'bogus_key' in [train]; valid keys: steps, ", 0),
            0u);
}

TEST(Config, WrongTypeNamesExpectedAndFound) {
  std::string text = kBase;
  text.replace(text.find("64"), 2, "\"big\"");
  EXPECT_EQ(one_problem(text), "pipe.toml:7:9: model.width: expected an integer, found a string (\"big\")");
  EXPECT_EQ(one_problem(kBase + "[train]\nlr = \"fast\"\n"),
            "pipe.toml:9:6: train.lr: expected a number, found a string (\"fast\")");
  EXPECT_EQ(one_problem(kBase + "[train]\nsteps = 2.5\n"),
            "pipe.toml:9:9: train.steps: expected an integer, found a float (2.5)");
  EXPECT_EQ(one_problem(kBase + "[train]\nbetas = [0.9, \"x\"]\n"),
            "pipe.toml:9:9: train.betas[1]: expected a number, found a string (\"x\")");
  EXPECT_EQ(one_problem(kBase + "[train]\nbetas = [0.9]\n"),
            "pipe.toml:9:9: train.betas: expected a list of 2 numbers, found 1");
  EXPECT_EQ(one_problem(kBase + "[path]\ntype = 3\n"),
            "pipe.toml:9:8: path.type: expected a string naming a path, found an integer (3)");
}

TEST(Config, IntegerIsAcceptedWhereAFloatIsExpected) {
  PipelineConfig c = parse_config(kBase + "[train]\nlr = 1\n", "pipe.toml", registry());
  EXPECT_DOUBLE_EQ(c.table("train").real("lr"), 1.0);
}

TEST(Config, OutOfRangeNamesTheBound) {
  std::string text = kBase;
  text.replace(text.find("64"), 2, "0");
  EXPECT_EQ(one_problem(text), "pipe.toml:7:9: model.width = 0 is out of range: must be >= 1");
  EXPECT_EQ(one_problem(kBase + "[train]\nlr = -0.5\n"), "pipe.toml:9:6: train.lr = -0.5 is out of range: must be > 0");
  EXPECT_EQ(one_problem(kBase + "time_embedding = 3\n"),
            "pipe.toml:8:18: model.time_embedding = 3 is out of range: must be a multiple of 2");
  EXPECT_EQ(one_problem(kBase + "[train]\nbetas = [0.9, 1.0]\n"),
            "pipe.toml:9:9: train.betas[1] = 1 is out of range: must be < 1");
}

TEST(Config, BadChoiceSuggests) {
  std::string text = kBase;
  text.replace(text.find("\"moons\""), 7, "\"moon\"");
  std::string p = one_problem(text);
  EXPECT_EQ(p.rfind("pipe.toml:3:9: dataset.shape: expected one of ", 0), 0u) << p;
  EXPECT_NE(p.find(", found 'moon'; did you mean 'moons'?"), std::string::npos) << p;
}

TEST(Config, MissingRequiredKeyAndTables) {
  EXPECT_EQ(one_problem("[dataset]\ntype = \"needs_file\"\n[model]\ntype = \"mlp\"\n"),
            "pipe.toml:1:1: [dataset] (type 'needs_file'): missing required key 'file' (string: where the data is)");
  EXPECT_EQ(one_problem("[model]\ntype = \"mlp\"\n"),
            "pipe.toml:1:1: missing table [dataset]; registered datasets: " + names(Kind::dataset));
  EXPECT_EQ(one_problem(kBase + "[path]\nsigma_min = 0.1\n"),
            "pipe.toml:8:1: [path]: missing key 'type'; registered paths: " + names(Kind::path));
}

TEST(Config, ReportsEveryProblemInOnePassInFileOrder) {
  std::string text =
      "[dataset]\n"
      "type = \"toy2d\"\n"
      "shape = \"moons\"\n"
      "noise = -1.0\n"       // 4: out of range
      "[model]\n"
      "type = \"mlp\"\n"
      "width = \"wide\"\n"   // 7: wrong type
      "[solver]\n"
      "type = \"eulr\"\n"    // 9: unknown type
      "[train]\n"
      "stpes = 10\n";        // 11: unknown key
  auto p = problems(text);
  ASSERT_EQ(p.size(), 4u) << ::testing::PrintToString(p);
  EXPECT_EQ(p[0].rfind("pipe.toml:4:9: dataset.noise = -1 is out of range", 0), 0u) << p[0];
  EXPECT_EQ(p[1], "pipe.toml:7:9: model.width: expected an integer, found a string (\"wide\")");
  EXPECT_EQ(p[2].rfind("pipe.toml:9:8: unknown solver type 'eulr'; did you mean 'euler'?", 0), 0u) << p[2];
  EXPECT_EQ(p[3], "pipe.toml:11:1: unknown key 'stpes' in [train]; did you mean 'steps'?");
}

TEST(Config, OverridesReplaceAndAddValues) {
  PipelineConfig c = parse_config(kBase, "pipe.toml", registry(),
                                  {{"model.width=32", "train.steps=7", "solver.type=heun", "dataset.shape=circles",
                                    "train.betas=[0.5, 0.6]", "run.name=\"quoted\""}});
  EXPECT_EQ(c.component(Kind::model).params.integer("width"), 32);
  EXPECT_EQ(c.table("train").integer("steps"), 7);
  EXPECT_EQ(c.component(Kind::solver).type, "heun");
  EXPECT_EQ(c.component(Kind::dataset).params.string("shape"), "circles");
  EXPECT_EQ(c.table("train").real_list("betas"), (std::vector<double>{0.5, 0.6}));
  EXPECT_EQ(c.table("run").string("name"), "quoted");
}

TEST(Config, OverridesAreValidatedTheSameWay) {
  auto p = problems(kBase, {"model.width=0", "train.stepz=3", "modle.width=3", "nodot", "path.type=cosinee"});
  ASSERT_EQ(p.size(), 5u) << ::testing::PrintToString(p);
  EXPECT_EQ(p[0], "--set model.width=0: model.width = 0 is out of range: must be >= 1");
  EXPECT_EQ(p[1], "--set train.stepz=3: unknown key 'stepz' in [train]; did you mean 'steps'?");
  EXPECT_EQ(p[2].rfind("--set modle.width=3: unknown table [modle]; did you mean [model]?", 0), 0u) << p[2];
  EXPECT_EQ(p[3], "--set nodot: expected table.key=value, e.g. --set train.steps=500");
  EXPECT_EQ(p[4].rfind("--set path.type=cosinee: unknown path type 'cosinee'", 0), 0u) << p[4];
}

TEST(Config, CudaWithoutCudaIsAConfigError) {
  if (torch::cuda::is_available()) GTEST_SKIP() << "this LibTorch has CUDA";
  EXPECT_EQ(one_problem(kBase + "[run]\ndevice = \"cuda\"\n"),
            "pipe.toml:9:10: run.device = \"cuda\", but CUDA is not available to this LibTorch build "
            "(torch::cuda::is_available() is false); use \"cpu\"");
  EXPECT_EQ(one_problem(kBase, {"run.device=cuda"}),
            "--set run.device=cuda: run.device = \"cuda\", but CUDA is not available to this LibTorch build "
            "(torch::cuda::is_available() is false); use \"cpu\"");
}

TEST(Config, MetricsAsTableOrList) {
  PipelineConfig one = parse_config(kBase + "[metric]\ntype = \"energy_distance\"\n", "pipe.toml", registry());
  EXPECT_EQ(one.metrics.size(), 1u);
  PipelineConfig two = parse_config(kBase + "[[metric]]\ntype = \"energy_distance\"\n[[metric]]\ntype = \"energy_distance\"\nmax_samples = 10\n",
                                    "pipe.toml", registry());
  ASSERT_EQ(two.metrics.size(), 2u);
  EXPECT_EQ(two.metrics[1].params.integer("max_samples"), 10);
  EXPECT_EQ(one_problem(kBase + "[[metric]]\ntype = \"energy_distanse\"\n").rfind(
                "pipe.toml:9:8: unknown metric type 'energy_distanse'; did you mean 'energy_distance'?", 0),
            0u);
}

TEST(Config, MissingFileIsOneLine) {
  try {
    load_config("/nonexistent/pipe.toml", registry());
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "/nonexistent/pipe.toml: cannot read the config file: no such file");
  }
}

TEST(Config, ClosestMatch) {
  EXPECT_EQ(closest_match("moon", {"moons", "circles"}), "moons");
  EXPECT_EQ(closest_match("linaer", {"linear", "cosine"}), "linear");
  EXPECT_EQ(closest_match("xyzzy", {"linear", "cosine"}), "");
}

}  // namespace
}  // namespace pathline
