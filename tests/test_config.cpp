// Pipeline config validation: the table of slots, every kind of error with its exact message and
// position, all of them in one pass; list parameters; metric entries and their names; overrides,
// including type changes and list entries; defaults; the resolved config round trip.
#include "pathline/engine/build.hpp"
#include "pathline/engine/config.hpp"
#include "support/support.hpp"

namespace pathline {
namespace {

const std::string kBase =
    "[dataset]\n"          // 1
    "type = \"toy2d\"\n"   // 2
    "shape = \"moons\"\n"  // 3
    "\n"                   // 4
    "[model]\n"            // 5
    "type = \"mlp\"\n"     // 6
    "width = 64\n";        // 7

// Config validation reads only declarations: a component is never built here, so the factories
// return nothing.
template <class Interface>
void declare(Registrar& registrar, std::string name, std::vector<ParamSpec> params) {
  registrar.add<Interface>(
      {std::move(name), "a component declared by the config tests", std::move(params)},
      [](const Params&, const BuildContext&) -> std::shared_ptr<Interface> { return nullptr; });
}

// The components these tests validate against, registered in-process the way a plugin does.
const Registry& registry() {
  static Registry* r = [] {
    auto* filled = new Registry();
    StagingRegistrar registrar(
        std::make_shared<PluginInfo>(PluginInfo{"config-tests", "1.0", {}, "explicit"}));
    declare<Dataset>(registrar, "toy2d",
                     {ParamSpec::choice("shape", {"checkerboard", "moons", "circles", "8gaussians"},
                                        "checkerboard", "which 2D distribution"),
                      ParamSpec::real("noise", 0.05, "standard deviation of added noise").at_least(0)});
    declare<Dataset>(registrar, "gaussian", {});
    declare<Dataset>(registrar, "needs_file",
                     {ParamSpec::string("file", "", "where the data is").required()});
    declare<Path>(registrar, "linear",
                  {ParamSpec::real("sigma_min", 0.0, "noise left at t = 1").at_least(0)});
    declare<Path>(registrar, "cosine", {});
    declare<Coupling>(registrar, "independent", {});
    declare<TimeSampler>(registrar, "uniform", {});
    declare<Parameterization>(registrar, "velocity", {});
    declare<Objective>(registrar, "flow_matching", {});
    declare<Model>(
        registrar, "mlp",
        {ParamSpec::integer("width", 256, "hidden units per layer").at_least(1),
         ParamSpec::integer("depth", 4, "hidden layers").at_least(1),
         ParamSpec::integer("time_embedding", 32, "sinusoidal features of t").at_least(2).multiple_of(2)});
    declare<Model>(
        registrar, "unet",
        {ParamSpec::int_list("channel_mult", {1, 2, 2}, "channel multiplier per resolution")
             .min_size(1)
             .at_least(1),
         ParamSpec::int_list("kernel", {3, 3}, "convolution kernel").size(2).at_least(1),
         ParamSpec::string_list("blocks", {"res"}, "block kinds per level").one_of({"res", "attn", "film"}),
         ParamSpec::string_list("tags", {}, "free labels"),
         ParamSpec::real_list("dropouts", {0.1}, "dropout per level").min_size(1).range(0, 1)});
    declare<Solver>(registrar, "euler", {ParamSpec::integer("steps", 100, "steps").at_least(1)});
    declare<Solver>(registrar, "heun", {ParamSpec::integer("steps", 50, "steps").at_least(1)});
    declare<TimeGrid>(registrar, "uniform", {});
    declare<Metric>(registrar, "energy_distance",
                    {ParamSpec::integer("max_samples", 2000, "samples per side").at_least(0)});
    declare<Metric>(registrar, "sliced_wasserstein",
                    {ParamSpec::integer("projections", 64, "directions").at_least(1)});
    // Declares a key every metric entry already has.
    declare<Metric>(registrar, "clashing", {ParamSpec::integer("samples", 5, "taken by the engine")});
    registrar.commit(*filled);
    return filled;
  }();
  return *r;
}

PipelineConfig parse(const std::string& text, const std::vector<std::string>& overrides = {}) {
  ConfigOptions options;
  options.overrides = overrides;
  return parse_config(text, "pipe.toml", registry(), options);
}

std::vector<std::string> problems(const std::string& text, const std::vector<std::string>& overrides = {}) {
  try {
    parse(text, overrides);
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

std::vector<std::string> metric_names(const PipelineConfig& c) {
  std::vector<std::string> out;
  for (const auto& m : c.metrics()) out.push_back(m.name);
  return out;
}

// ------------------------------------------------------------------------------------------------
// The table of slots

TEST(ConfigSlots, OneTableInPipelineOrder) {
  std::vector<std::string> tables;
  for (const auto& slot : pipeline_slots()) tables.push_back(slot.table);
  EXPECT_EQ(tables, (std::vector<std::string>{"dataset", "autoencoder", "source", "path", "coupling",
                                              "time_sampler", "parameterization", "objective", "model",
                                              "solver", "time_grid", "metric"}));
  ASSERT_NE(find_slot("source"), nullptr);
  EXPECT_EQ(find_slot("source")->kind, Kind::dataset);
  EXPECT_EQ(find_slot("source")->default_type, "gaussian");
  EXPECT_TRUE(find_slot("dataset")->required);
  EXPECT_TRUE(find_slot("model")->required);
  EXPECT_FALSE(find_slot("path")->required);
  EXPECT_EQ(find_slot("solver")->default_type, "euler");
  EXPECT_EQ(find_slot("time_grid")->default_type, "uniform");
  EXPECT_TRUE(find_slot("metric")->many);
  EXPECT_FALSE(find_slot("metric")->required);
  EXPECT_EQ(find_slot("train"), nullptr);  // an engine table, not a slot
  EXPECT_EQ(find_slot("nope"), nullptr);
  for (const auto& slot : pipeline_slots()) EXPECT_FALSE(slot.doc.empty()) << slot.table;
}

TEST(ConfigSlots, MetricEntriesHaveNameAndSamples) {
  const auto& specs = entry_specs("metric");
  ASSERT_EQ(specs.size(), 2u);
  EXPECT_EQ(specs[0].name, "name");
  EXPECT_EQ(specs[0].type, ParamType::string);
  EXPECT_EQ(specs[1].name, "samples");
  EXPECT_EQ(specs[1].type, ParamType::integer);
  EXPECT_TRUE(entry_specs("path").empty());
}

TEST(ConfigSlots, MetricsOfAConfigWithoutListsIsEmpty) {
  PipelineConfig empty;
  EXPECT_TRUE(empty.metrics().empty());
}

// ------------------------------------------------------------------------------------------------
// Defaults and round trip

TEST(Config, ValidConfigFillsEveryDefault) {
  PipelineConfig c = parse(kBase);
  EXPECT_EQ(c.component("dataset").type, "toy2d");
  EXPECT_EQ(c.component("dataset").kind, Kind::dataset);
  EXPECT_EQ(c.component("dataset").slot, "dataset");
  EXPECT_EQ(c.component("dataset").params.string("shape"), "moons");
  EXPECT_EQ(c.component("model").params.integer("width"), 64);
  EXPECT_EQ(c.component("model").params.integer("depth"), 4);  // the mlp's default
  EXPECT_EQ(c.component("source").type, "gaussian");
  EXPECT_EQ(c.component("source").kind, Kind::dataset);
  EXPECT_EQ(c.component("source").slot, "source");
  EXPECT_EQ(c.component("path").type, "linear");
  EXPECT_EQ(c.component("coupling").type, "independent");
  EXPECT_EQ(c.component("time_sampler").type, "uniform");
  EXPECT_EQ(c.component("parameterization").type, "velocity");
  EXPECT_EQ(c.component("solver").type, "euler");
  EXPECT_EQ(c.component("time_grid").type, "uniform");
  EXPECT_EQ(c.component("time_grid").kind, Kind::time_grid);
  EXPECT_TRUE(c.metrics().empty());
  EXPECT_TRUE(c.notes.empty());
  EXPECT_EQ(c.table("train").integer("steps"), 2000);
  EXPECT_EQ(c.table("train").real_list("betas"), (std::vector<double>{0.9, 0.999}));
  EXPECT_DOUBLE_EQ(c.table("train").real("label_dropout"), 0.1);
  EXPECT_DOUBLE_EQ(c.table("sample").real("guidance_scale"), 1.0);
  EXPECT_TRUE(c.table("sample").int_list("labels").empty());
  EXPECT_EQ(c.table("run").string("device"), "auto");
  EXPECT_FALSE(c.table("run").boolean("deterministic"));
}

TEST(Config, SourceIsAnyDataset) {
  PipelineConfig c = parse(kBase + "[source]\ntype = \"toy2d\"\nshape = \"8gaussians\"\n");
  EXPECT_EQ(c.component("source").type, "toy2d");
  EXPECT_EQ(c.component("source").params.string("shape"), "8gaussians");
  EXPECT_EQ(c.component("dataset").params.string("shape"), "moons");
  PipelineConfig set = parse(kBase, {"source.type=toy2d", "source.shape=circles"});
  EXPECT_EQ(set.component("source").params.string("shape"), "circles");
  EXPECT_EQ(one_problem(kBase + "[source]\ntype = \"gausian\"\n"),
            "pipe.toml:9:8: unknown source type 'gausian'; did you mean 'gaussian'? registered datasets: " +
                names(Kind::dataset));
  EXPECT_EQ(one_problem(kBase + "[source]\ntype = 1\n"),
            "pipe.toml:9:8: source.type: expected a string naming a dataset, found an integer (1)");
}

TEST(Config, ResolvedConfigRoundTripsEveryType) {
  PipelineConfig c = parse(
      "[dataset]\ntype = \"toy2d\"\nshape = \"moons\"\n"
      "[source]\ntype = \"toy2d\"\nshape = \"8gaussians\"\nnoise = 0\n"
      "[model]\ntype = \"unet\"\nchannel_mult = [1, 2, 4]\nblocks = [\"res\", \"attn\"]\n"
      "tags = [\"a \\\"quoted\\\" tag\", \"two\\nlines\"]\ndropouts = [0, 0.25]\n"
      "[train]\nlr = 3e-4\nbetas = [0.8, 0.95]\nlabel_dropout = 0.2\n"
      "[sample]\nguidance_scale = 2.5\nlabels = [3, -1, 0]\n"
      "[run]\nname = \"back\\\\slash \\\"and\\\" tab\\t\"\n"
      "[[metric]]\ntype = \"energy_distance\"\n"
      "[[metric]]\ntype = \"energy_distance\"\nsamples = 2000\n"
      "[[metric]]\ntype = \"sliced_wasserstein\"\nname = \"sw\"\n");
  std::string text = c.to_toml();
  PipelineConfig again = parse_config(text, "resolved.toml", registry());
  EXPECT_EQ(again.to_toml(), text);
  EXPECT_EQ(again.component("source").type, "toy2d");
  EXPECT_EQ(again.component("source").params.string("shape"), "8gaussians");
  EXPECT_DOUBLE_EQ(again.component("source").params.real("noise"), 0.0);
  EXPECT_EQ(again.component("model").params.int_list("channel_mult"), (std::vector<std::int64_t>{1, 2, 4}));
  EXPECT_EQ(again.component("model").params.int_list("kernel"), (std::vector<std::int64_t>{3, 3}));
  EXPECT_EQ(again.component("model").params.string_list("blocks"), (std::vector<std::string>{"res", "attn"}));
  EXPECT_EQ(again.component("model").params.string_list("tags"),
            (std::vector<std::string>{"a \"quoted\" tag", "two\nlines"}));
  EXPECT_EQ(again.component("model").params.real_list("dropouts"), (std::vector<double>{0.0, 0.25}));
  EXPECT_DOUBLE_EQ(again.table("train").real("lr"), 3e-4);
  EXPECT_EQ(again.table("train").real_list("betas"), (std::vector<double>{0.8, 0.95}));
  EXPECT_DOUBLE_EQ(again.table("train").real("label_dropout"), 0.2);
  EXPECT_DOUBLE_EQ(again.table("sample").real("guidance_scale"), 2.5);
  EXPECT_EQ(again.table("sample").int_list("labels"), (std::vector<std::int64_t>{3, -1, 0}));
  EXPECT_EQ(again.table("run").string("name"), "back\\slash \"and\" tab\t");
  EXPECT_EQ(metric_names(again), (std::vector<std::string>{"energy_distance#1", "energy_distance#2", "sw"}));
  EXPECT_EQ(again.metrics()[1].entry.integer("samples"), 2000);
  EXPECT_EQ(again.metrics()[2].params.integer("projections"), 64);
  // Every default is written out, lists included, and a derived name is said but left derived.
  EXPECT_NE(text.find("[solver]\ntype = \"euler\"\nsteps = 100\n"), std::string::npos) << text;
  EXPECT_NE(text.find("[time_grid]\ntype = \"uniform\"\n"), std::string::npos) << text;
  EXPECT_NE(text.find("kernel = [3, 3]\n"), std::string::npos) << text;
  EXPECT_NE(text.find("labels = [3, -1, 0]\n"), std::string::npos) << text;
  EXPECT_NE(text.find("[[metric]]\ntype = \"energy_distance\"\nname = \"\"  # results filed as "
                      "\"energy_distance#2\"\nsamples = 2000\nmax_samples = 2000\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("[[metric]]\ntype = \"sliced_wasserstein\"\nname = \"sw\"\nsamples = 0\n"),
            std::string::npos)
      << text;
}

TEST(Config, EmptyListsRoundTrip) {
  PipelineConfig c = parse(kBase + "[sample]\nlabels = []\n", {"model.type=unet", "model.tags=[]"});
  std::string text = c.to_toml();
  EXPECT_NE(text.find("tags = []\n"), std::string::npos) << text;
  EXPECT_NE(text.find("labels = []\n"), std::string::npos) << text;
  EXPECT_EQ(parse_config(text, "resolved.toml", registry()).to_toml(), text);
}

// ------------------------------------------------------------------------------------------------
// Messages

TEST(Config, TomlSyntaxErrorGivesPosition) {
  std::string p = one_problem("[dataset]\ntype = \"toy2d\"\nshape = moons\n");
  EXPECT_EQ(p.rfind("pipe.toml:3:9: TOML syntax error: ", 0), 0u) << p;
}

TEST(Config, UnknownTableSuggestsClosestAndListsEveryTable) {
  EXPECT_EQ(one_problem(kBase + "[trian]\nsteps = 5\n"),
            "pipe.toml:8:2: unknown table [trian]; did you mean [train]? known tables: dataset, autoencoder, "
            "source, path, "
            "coupling, time_sampler, parameterization, objective, model, solver, time_grid, metric, run, "
            "train, sample, "
            "eval");
}

TEST(Config, TopLevelKeyIsReported) {
  EXPECT_EQ(one_problem("seed = 3\n" + kBase),
            "pipe.toml:1:1: expected a table such as [run], found a top-level key 'seed' (an integer (3))");
}

TEST(Config, UnknownComponentTypeListsRegisteredAndSuggests) {
  EXPECT_EQ(
      one_problem(kBase + "[path]\ntype = \"linaer\"\n"),
      "pipe.toml:9:8: unknown path type 'linaer'; did you mean 'linear'? registered paths: cosine, linear");
  EXPECT_EQ(one_problem(kBase + "[solver]\ntype = \"zzzzzzzz\"\n"),
            "pipe.toml:9:8: unknown solver type 'zzzzzzzz'; registered solvers: " + names(Kind::solver));
}

TEST(Config, UnknownKeySuggestsClosest) {
  std::string text = kBase;
  text.replace(text.find("width"), 5, "widht");
  EXPECT_EQ(one_problem(text),
            "pipe.toml:7:1: unknown key 'widht' in [model] (type 'mlp'); did you mean 'width'?");
  EXPECT_EQ(one_problem(kBase + "[train]\nbogus_key = 1\n")
                .rfind("pipe.toml:9:1: unknown key 'bogus_key' in [train]; valid keys: steps, ", 0),
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
            "pipe.toml:9:15: train.betas[1]: expected a number, found a string (\"x\")");
  EXPECT_EQ(one_problem(kBase + "[train]\nbetas = [0.9]\n"),
            "pipe.toml:9:9: train.betas: expected a list of 2 numbers, found 1");
  EXPECT_EQ(one_problem(kBase + "[path]\ntype = 3\n"),
            "pipe.toml:9:8: path.type: expected a string naming a path, found an integer (3)");
}

TEST(Config, IntegerIsAcceptedWhereAFloatIsExpected) {
  PipelineConfig c = parse(kBase + "[train]\nlr = 1\n");
  EXPECT_DOUBLE_EQ(c.table("train").real("lr"), 1.0);
}

TEST(Config, OutOfRangeNamesTheBound) {
  std::string text = kBase;
  text.replace(text.find("64"), 2, "0");
  EXPECT_EQ(one_problem(text), "pipe.toml:7:9: model.width = 0 is out of range: must be >= 1");
  EXPECT_EQ(one_problem(kBase + "[train]\nlr = -0.5\n"),
            "pipe.toml:9:6: train.lr = -0.5 is out of range: must be > 0");
  EXPECT_EQ(one_problem(kBase + "time_embedding = 3\n"),
            "pipe.toml:8:18: model.time_embedding = 3 is out of range: must be a multiple of 2");
  EXPECT_EQ(one_problem(kBase + "[train]\nbetas = [0.9, 1.0]\n"),
            "pipe.toml:9:15: train.betas[1] = 1.0 is out of range: must be < 1");
  EXPECT_EQ(one_problem(kBase + "[train]\nlabel_dropout = 1.0\n"),
            "pipe.toml:9:17: train.label_dropout = 1.0 is out of range: must be < 1");
  EXPECT_EQ(one_problem(kBase + "[sample]\nguidance_scale = -1\n"),
            "pipe.toml:9:18: sample.guidance_scale = -1 is out of range: must be >= 0");
}

TEST(Config, BadChoiceSuggests) {
  std::string text = kBase;
  text.replace(text.find("\"moons\""), 7, "\"moon\"");
  EXPECT_EQ(
      one_problem(text),
      "pipe.toml:3:9: dataset.shape: expected one of checkerboard, moons, circles, 8gaussians, found 'moon'; "
      "did you mean 'moons'?");
}

TEST(Config, MissingRequiredKeyAndTables) {
  EXPECT_EQ(one_problem("[dataset]\ntype = \"needs_file\"\n[model]\ntype = \"mlp\"\n"),
            "pipe.toml:1:1: [dataset] (type 'needs_file'): missing required key 'file' (string: where the "
            "data is)");
  EXPECT_EQ(one_problem("[model]\ntype = \"mlp\"\n"),
            "pipe.toml:1:1: missing table [dataset]; registered datasets: " + names(Kind::dataset));
  EXPECT_EQ(one_problem(kBase + "[path]\nsigma_min = 0.1\n"),
            "pipe.toml:8:1: [path]: missing key 'type'; registered paths: cosine, linear");
}

TEST(Config, ReportsEveryProblemInOnePassInFileOrder) {
  std::string text =
      "[dataset]\n"
      "type = \"toy2d\"\n"
      "shape = \"moons\"\n"
      "noise = -1.0\n"  // 4: out of range
      "[model]\n"
      "type = \"mlp\"\n"
      "width = \"wide\"\n"  // 7: wrong type
      "[solver]\n"
      "type = \"eulr\"\n"  // 9: unknown type
      "[train]\n"
      "stpes = 10\n"  // 11: unknown key
      "[[metric]]\n"
      "type = \"energy_distance\"\n"
      "samples = -3\n";  // 14: out of range, in a list entry
  auto p = problems(text);
  ASSERT_EQ(p.size(), 5u) << ::testing::PrintToString(p);
  EXPECT_EQ(p[0], "pipe.toml:4:9: dataset.noise = -1.0 is out of range: must be >= 0");
  EXPECT_EQ(p[1], "pipe.toml:7:9: model.width: expected an integer, found a string (\"wide\")");
  EXPECT_EQ(
      p[2],
      "pipe.toml:9:8: unknown solver type 'eulr'; did you mean 'euler'? registered solvers: euler, heun");
  EXPECT_EQ(p[3], "pipe.toml:11:1: unknown key 'stpes' in [train]; did you mean 'steps'?");
  EXPECT_EQ(p[4], "pipe.toml:14:11: metric[0].samples = -3 is out of range: must be >= 0");
}

TEST(Config, CudaWithoutCudaIsAConfigError) {
  if (cuda_visible()) GTEST_SKIP() << "a CUDA GPU is visible (Cuda.CudaWithoutAGpuIsRefused... hides it)";
  const std::string why = "run.device = \"cuda\", but " + cuda_absence() + "; use \"auto\" or \"cpu\"";
  EXPECT_EQ(one_problem(kBase + "[run]\ndevice = \"cuda\"\n"), "pipe.toml:9:10: " + why);
  EXPECT_EQ(one_problem(kBase, {"run.device=cuda"}), "--set run.device=cuda: " + why);
  EXPECT_TRUE(problems(kBase + "[run]\ndevice = \"auto\"\n").empty());
}

TEST(Config, MissingFileIsOneLine) {
  try {
    load_config("/nonexistent/pipe.toml", registry());
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "/nonexistent/pipe.toml: cannot read the config file: no such file");
  }
}

TEST(Config, LoadConfigReadsTheFile) {
  testing::TempDir dir;
  testing::write_text(dir / "pipe.toml", kBase);
  PipelineConfig c = load_config(dir / "pipe.toml", registry(), {{"train.steps=9"}});
  EXPECT_EQ(c.source, dir / "pipe.toml");
  EXPECT_EQ(c.table("train").integer("steps"), 9);
}

TEST(Config, ClosestMatch) {
  EXPECT_EQ(closest_match("moon", {"moons", "circles"}), "moons");
  EXPECT_EQ(closest_match("linaer", {"linear", "cosine"}), "linear");
  EXPECT_EQ(closest_match("xyzzy", {"linear", "cosine"}), "");
}

// ------------------------------------------------------------------------------------------------
// List parameters

const std::string kUnet = "[dataset]\ntype = \"toy2d\"\n[model]\ntype = \"unet\"\n";  // 4 lines

TEST(ConfigLists, IntListsAreValidatedPerElement) {
  PipelineConfig good = parse(kUnet + "channel_mult = [1, 2, 2, 4]\nkernel = [5, 1]\n");
  EXPECT_EQ(good.component("model").params.int_list("channel_mult"), (std::vector<std::int64_t>{1, 2, 2, 4}));
  EXPECT_EQ(good.component("model").params.int_list("kernel"), (std::vector<std::int64_t>{5, 1}));
  EXPECT_EQ(one_problem(kUnet + "channel_mult = [1, 1.5, 2]\n"),
            "pipe.toml:5:20: model.channel_mult[1]: expected an integer, found a float (1.5)");
  EXPECT_EQ(one_problem(kUnet + "channel_mult = [1, 2.0]\n"),
            "pipe.toml:5:20: model.channel_mult[1]: expected an integer, found a float (2.0)");
  EXPECT_EQ(one_problem(kUnet + "channel_mult = [1, 2, 0]\n"),
            "pipe.toml:5:23: model.channel_mult[2] = 0 is out of range: must be >= 1");
  EXPECT_EQ(one_problem(kUnet + "kernel = [3, 3, 3]\n"),
            "pipe.toml:5:10: model.kernel: expected a list of 2 integers, found 3");
  EXPECT_EQ(one_problem(kUnet + "channel_mult = []\n"),
            "pipe.toml:5:16: model.channel_mult: expected a list of at least 1 integer, found 0");
  EXPECT_EQ(one_problem(kUnet + "channel_mult = 2\n"),
            "pipe.toml:5:16: model.channel_mult: expected a list of integers, found an integer (2)");
  EXPECT_EQ(one_problem(kBase + "[sample]\nlabels = [0, -2]\n"),
            "pipe.toml:9:14: sample.labels[1] = -2 is out of range: must be >= -1");
}

TEST(ConfigLists, StringListsAreValidatedPerElement) {
  PipelineConfig good =
      parse(kUnet + "blocks = [\"attn\", \"film\", \"res\"]\ntags = [\"anything\", \"\"]\n");
  EXPECT_EQ(good.component("model").params.string_list("blocks"),
            (std::vector<std::string>{"attn", "film", "res"}));
  EXPECT_EQ(good.component("model").params.string_list("tags"), (std::vector<std::string>{"anything", ""}));
  EXPECT_EQ(
      one_problem(kUnet + "blocks = [\"res\", \"atn\"]\n"),
      "pipe.toml:5:18: model.blocks[1]: expected one of res, attn, film, found 'atn'; did you mean 'attn'?");
  EXPECT_EQ(
      one_problem(kUnet + "blocks = [1]\n"),
      "pipe.toml:5:11: model.blocks[0]: expected a string, one of res, attn, film, found an integer (1)");
  EXPECT_EQ(one_problem(kUnet + "tags = [\"a\", true]\n"),
            "pipe.toml:5:14: model.tags[1]: expected a string, found a boolean (true)");
  EXPECT_EQ(one_problem(kUnet + "tags = \"a\"\n"),
            "pipe.toml:5:8: model.tags: expected a list of strings, found a string (\"a\")");
}

TEST(ConfigLists, RealListsHonourMinimumSize) {
  EXPECT_EQ(one_problem(kUnet + "dropouts = []\n"),
            "pipe.toml:5:12: model.dropouts: expected a list of at least 1 number, found 0");
  EXPECT_EQ(one_problem(kUnet + "dropouts = [0.5, 1.5]\n"),
            "pipe.toml:5:18: model.dropouts[1] = 1.5 is out of range: must be <= 1");
}

TEST(ConfigLists, ListsCanBeSetOnTheCommandLine) {
  PipelineConfig c =
      parse(kUnet, {"model.channel_mult=[1, 2, 3]", "model.blocks=[\"attn\"]", "sample.labels=[2]"});
  EXPECT_EQ(c.component("model").params.int_list("channel_mult"), (std::vector<std::int64_t>{1, 2, 3}));
  EXPECT_EQ(c.component("model").params.string_list("blocks"), (std::vector<std::string>{"attn"}));
  EXPECT_EQ(c.table("sample").int_list("labels"), (std::vector<std::int64_t>{2}));
  EXPECT_EQ(one_problem(kUnet, {"model.channel_mult=[1, 0]"}),
            "--set model.channel_mult=[1, 0]: model.channel_mult[1] = 0 is out of range: must be >= 1");
}

// ------------------------------------------------------------------------------------------------
// Metric entries

TEST(ConfigMetrics, TableOrList) {
  PipelineConfig one = parse(kBase + "[metric]\ntype = \"energy_distance\"\n");
  ASSERT_EQ(one.metrics().size(), 1u);
  EXPECT_EQ(one.metrics()[0].slot, "metric");
  EXPECT_EQ(one.metrics()[0].kind, Kind::metric);
  EXPECT_EQ(one.metrics()[0].name, "energy_distance");
  EXPECT_EQ(one.metrics()[0].entry.string("name"), "");
  EXPECT_EQ(one.metrics()[0].entry.integer("samples"), 0);
  PipelineConfig two = parse(kBase +
                             "[[metric]]\ntype = \"energy_distance\"\n"
                             "[[metric]]\ntype = \"energy_distance\"\nmax_samples = 10\nsamples = 2000\n");
  ASSERT_EQ(two.metrics().size(), 2u);
  EXPECT_EQ(two.metrics()[1].params.integer("max_samples"), 10);
  EXPECT_EQ(two.metrics()[1].entry.integer("samples"), 2000);
  EXPECT_EQ(
      one_problem(kBase + "[[metric]]\ntype = \"energy_distanse\"\n"),
      "pipe.toml:9:8: unknown metric type 'energy_distanse'; did you mean 'energy_distance'? registered "
      "metrics: clashing, energy_distance, sliced_wasserstein");
  EXPECT_EQ(one_problem("metric = 3\n" + kBase),
            "pipe.toml:1:10: expected a table [metric] or a list [[metric]], found an integer (3)");
  EXPECT_EQ(one_problem(kBase + "[[metric]]\ntype = \"energy_distance\"\nmax_sample = 1\n"),
            "pipe.toml:10:1: unknown key 'max_sample' in metric[0] (type 'energy_distance'); did you mean "
            "'max_samples'?");
  EXPECT_EQ(one_problem(kBase + "[[metric]]\ntype = \"sliced_wasserstein\"\nzzzzzzz = 1\n"),
            "pipe.toml:10:1: unknown key 'zzzzzzz' in metric[0] (type 'sliced_wasserstein'); valid keys: "
            "projections, name, samples");
}

TEST(ConfigMetrics, SameTypeTwiceKeepsBothNames) {
  PipelineConfig c = parse(kBase +
                           "[[metric]]\ntype = \"energy_distance\"\nsamples = 2000\n"
                           "[[metric]]\ntype = \"sliced_wasserstein\"\n"
                           "[[metric]]\ntype = \"energy_distance\"\nsamples = 10000\n");
  EXPECT_EQ(metric_names(c),
            (std::vector<std::string>{"energy_distance#1", "sliced_wasserstein", "energy_distance#2"}));
  EXPECT_EQ(c.metrics()[2].entry.integer("samples"), 10000);
}

TEST(ConfigMetrics, ExplicitNamesAreKept) {
  PipelineConfig c = parse(kBase +
                           "[[metric]]\ntype = \"energy_distance\"\nname = \"ed_2k\"\nsamples = 2000\n"
                           "[[metric]]\ntype = \"energy_distance\"\n"
                           "[[metric]]\ntype = \"energy_distance\"\nname = \"ed_10k\"\n");
  EXPECT_EQ(metric_names(c), (std::vector<std::string>{"ed_2k", "energy_distance", "ed_10k"}));
  EXPECT_EQ(c.metrics()[0].entry.string("name"), "ed_2k");
}

TEST(ConfigMetrics, DuplicateNamesAreAnErrorNamingBoth) {
  EXPECT_EQ(
      one_problem(kBase + "[[metric]]\ntype = \"energy_distance\"\nname = \"ed\"\n"       // 8-10
                          "[[metric]]\ntype = \"sliced_wasserstein\"\nname = \"ed\"\n"),  // 11-13
      "pipe.toml:13:8: metric[1].name = \"ed\" is also the name of metric[0] (pipe.toml:10:8); every metric "
      "needs its own name, since its results are filed under it");
  EXPECT_EQ(one_problem(kBase + "[[metric]]\ntype = \"energy_distance\"\nname = \"ed\"\n[[metric]]\ntype = "
                                "\"sliced_wasserstein\"\n",
                        {"metric[1].name=ed"}),
            "--set metric[1].name=ed: metric[1].name = \"ed\" is also the name of metric[0] "
            "(pipe.toml:10:8); every "
            "metric needs its own name, since its results are filed under it");
  // A derived name that an explicit one already took.
  EXPECT_EQ(
      one_problem(kBase + "[[metric]]\ntype = \"sliced_wasserstein\"\nname = \"energy_distance#1\"\n"
                          "[[metric]]\ntype = \"energy_distance\"\n"  // 11-12
                          "[[metric]]\ntype = \"energy_distance\"\n"),
      "pipe.toml:12:8: metric[1] has no name and would be filed as 'energy_distance#1', the name metric[0] "
      "gives explicitly; give metric[1] a name of its own");
}

TEST(ConfigMetrics, AParameterNamedLikeAnEntryKeyIsRejected) {
  EXPECT_EQ(
      one_problem(kBase + "[[metric]]\ntype = \"clashing\"\n"),
      "pipe.toml:9:8: metric 'clashing' (plugin 'config-tests') declares a parameter 'samples', but every "
      "[metric] entry already has that key (how many of the generated samples it judges; 0 judges all of "
      "them); the component must rename its parameter");
}

// ------------------------------------------------------------------------------------------------
// Overrides

TEST(ConfigOverrides, ReplaceAndAddValues) {
  PipelineConfig c =
      parse(kBase, {"model.width=32", "train.steps=7", "solver.type=heun", "dataset.shape=circles",
                    "train.betas=[0.5, 0.6]", "run.name=\"quoted\"", " train.lr = 0.5 "});
  EXPECT_EQ(c.component("model").params.integer("width"), 32);
  EXPECT_EQ(c.table("train").integer("steps"), 7);
  EXPECT_EQ(c.component("solver").type, "heun");
  EXPECT_EQ(c.component("dataset").params.string("shape"), "circles");
  EXPECT_EQ(c.table("train").real_list("betas"), (std::vector<double>{0.5, 0.6}));
  EXPECT_EQ(c.table("run").string("name"), "quoted");
  EXPECT_DOUBLE_EQ(c.table("train").real("lr"), 0.5);
  EXPECT_TRUE(c.notes.empty());  // the solver table was absent: nothing to drop
}

TEST(ConfigOverrides, AreValidatedTheSameWay) {
  auto p = problems(kBase, {"model.width=0", "train.stepz=3", "modle.width=3", "nodot", "path.type=cosinee",
                            "path[0].type=linear", "modle[0].width=3", "a.b.c=1"});
  ASSERT_EQ(p.size(), 8u) << ::testing::PrintToString(p);
  EXPECT_EQ(p[0], "--set model.width=0: model.width = 0 is out of range: must be >= 1");
  EXPECT_EQ(p[1], "--set train.stepz=3: unknown key 'stepz' in [train]; did you mean 'steps'?");
  EXPECT_EQ(p[2].rfind("--set modle.width=3: unknown table [modle]; did you mean [model]? known tables: ", 0),
            0u)
      << p[2];
  EXPECT_EQ(p[3],
            "--set nodot: expected table.key=value, e.g. --set train.steps=500 (or --set "
            "metric[1].samples=2000 for "
            "an entry of a list)");
  EXPECT_EQ(p[4],
            "--set path.type=cosinee: unknown path type 'cosinee'; did you mean 'cosine'? registered paths: "
            "cosine, "
            "linear");
  EXPECT_EQ(
      p[5],
      "--set path[0].type=linear: [path] is a single table, not a list of entries; use --set path.type=...");
  EXPECT_EQ(p[6].rfind("--set modle[0].width=3: unknown table [modle]; did you mean [model]?", 0), 0u)
      << p[6];
  EXPECT_EQ(p[7].rfind("--set a.b.c=1: expected table.key=value", 0), 0u) << p[7];
}

const std::string kLinearWithSigma = kBase + "[path]\ntype = \"linear\"\nsigma_min = 0.01\n";

TEST(ConfigOverrides, ChangingTheTypeDropsKeysTheNewTypeDoesNotDeclare) {
  PipelineConfig c = parse(kLinearWithSigma, {"path.type=cosine"});
  EXPECT_EQ(c.component("path").type, "cosine");
  EXPECT_FALSE(c.component("path").params.contains("sigma_min"));
  EXPECT_EQ(c.notes,
            (std::vector<std::string>{
                "--set path.type=cosine: dropped path.sigma_min = 0.01 (not a parameter of path 'cosine')"}));
  // Without the override the same key is fine; with the same type nothing is dropped.
  EXPECT_TRUE(parse(kLinearWithSigma, {"path.type=linear"}).notes.empty());
  EXPECT_DOUBLE_EQ(parse(kLinearWithSigma, {"path.type=linear"}).component("path").params.real("sigma_min"),
                   0.01);
}

TEST(ConfigOverrides, AKeyOfTheSameTypeIsStillAnErrorWhenTheTypeDoesNotChange) {
  EXPECT_EQ(one_problem(kBase + "[path]\ntype = \"cosine\"\nsigma_min = 0.01\n", {"path.type=cosine"}),
            "pipe.toml:10:1: unknown key 'sigma_min' in [path] (type 'cosine'); valid keys: (none)");
}

TEST(ConfigOverrides, KeysSetOnTheCommandLineAreNeverDropped) {
  EXPECT_EQ(
      one_problem(kLinearWithSigma, {"path.sigma_min=0.2", "path.type=cosine"}),
      "--set path.sigma_min=0.2: unknown key 'sigma_min' in [path] (type 'cosine'); valid keys: (none)");
  EXPECT_EQ(
      one_problem(kLinearWithSigma, {"path.type=cosine", "path.sigma_min=0.2"}),
      "--set path.sigma_min=0.2: unknown key 'sigma_min' in [path] (type 'cosine'); valid keys: (none)");
}

TEST(ConfigOverrides, AResolvedConfigReRunsWithAnotherType) {
  PipelineConfig linear = parse(kLinearWithSigma + "[[metric]]\ntype = \"energy_distance\"\nname = \"ed\"\n");
  std::string resolved = linear.to_toml();
  ASSERT_NE(resolved.find("sigma_min = 0.01\n"), std::string::npos) << resolved;
  PipelineConfig cosine =
      parse_config(resolved, "config.toml", registry(),
                   {{"path.type=cosine", "model.type=unet", "metric[0].type=sliced_wasserstein"}});
  EXPECT_EQ(cosine.component("path").type, "cosine");
  EXPECT_EQ(cosine.component("model").type, "unet");
  EXPECT_EQ(cosine.metrics()[0].type, "sliced_wasserstein");
  EXPECT_EQ(cosine.metrics()[0].name, "ed");  // an entry key, kept across types
  EXPECT_EQ(
      cosine.notes,
      (std::vector<std::string>{
          "--set path.type=cosine: dropped path.sigma_min = 0.01 (not a parameter of path 'cosine')",
          "--set model.type=unet: dropped model.width = 64 (not a parameter of model 'unet')",
          "--set model.type=unet: dropped model.depth = 4 (not a parameter of model 'unet')",
          "--set model.type=unet: dropped model.time_embedding = 32 (not a parameter of model 'unet')",
          "--set metric[0].type=sliced_wasserstein: dropped metric[0].max_samples = 2000 (not a parameter of "
          "metric 'sliced_wasserstein')"}));
}

TEST(ConfigOverrides, ReachAnEntryOfAList) {
  const std::string two = kBase +
                          "[[metric]]\ntype = \"energy_distance\"\n"
                          "[[metric]]\ntype = \"sliced_wasserstein\"\n";
  PipelineConfig c = parse(two, {"metric[0].samples=500", "metric[1].projections=8", "metric[1].name=sw"});
  EXPECT_EQ(c.metrics()[0].entry.integer("samples"), 500);
  EXPECT_EQ(c.metrics()[1].entry.integer("samples"), 0);
  EXPECT_EQ(c.metrics()[1].params.integer("projections"), 8);
  EXPECT_EQ(metric_names(c), (std::vector<std::string>{"energy_distance", "sw"}));
  EXPECT_EQ(one_problem(two, {"metric[1].samples=-1"}),
            "--set metric[1].samples=-1: metric[1].samples = -1 is out of range: must be >= 0");
  EXPECT_EQ(one_problem(two, {"metric.samples=5"}),
            "--set metric.samples=5: the pipeline has 2 [[metric]] entries; say which one with --set "
            "metric[i].samples=... (i from 0 to 1)");
  EXPECT_EQ(
      one_problem(two, {"metric[5].samples=5"}),
      "--set metric[5].samples=5: there is no metric[5]: the pipeline has 2 metric entries (metric[0] to "
      "metric[1]); add one with --set metric[2].type=...");
  EXPECT_EQ(
      one_problem(two, {"metric[2].samples=5"}),
      "--set metric[2].samples=5: there is no metric[2]: the pipeline has 2 metric entries (metric[0] to "
      "metric[1]); add one with --set metric[2].type=...");
  EXPECT_EQ(
      one_problem(kBase, {"metric[0].samples=5"}),
      "--set metric[0].samples=5: there is no metric[0]: the pipeline has no metric entries; add one with "
      "--set metric[0].type=...");
}

TEST(ConfigOverrides, ReachTheEntryOfASingleMetricTable) {
  const std::string one = kBase + "[metric]\ntype = \"energy_distance\"\n";
  EXPECT_EQ(parse(one, {"metric[0].samples=300"}).metrics()[0].entry.integer("samples"), 300);
  EXPECT_EQ(parse(one, {"metric.samples=400"}).metrics()[0].entry.integer("samples"), 400);
  EXPECT_EQ(one_problem(one, {"metric[1].samples=5"}),
            "--set metric[1].samples=5: there is no metric[1]: the pipeline has 1 metric entry (metric[0]); "
            "add one "
            "with --set metric[1].type=...");
  // Problems of a value in the file point at the file, with the entry's address.
  EXPECT_EQ(one_problem(one + "samples = -2\n"),
            "pipe.toml:10:11: metric[0].samples = -2 is out of range: must be >= 0");
}

TEST(ConfigOverrides, AppendOneEntryAtTheEnd) {
  // Onto a single table, which becomes a list of two.
  PipelineConfig c = parse(kBase + "[metric]\ntype = \"energy_distance\"\nsamples = 2000\n",
                           {"metric[1].type=energy_distance", "metric[1].samples=10000"});
  ASSERT_EQ(c.metrics().size(), 2u);
  EXPECT_EQ(metric_names(c), (std::vector<std::string>{"energy_distance#1", "energy_distance#2"}));
  EXPECT_EQ(c.metrics()[0].entry.integer("samples"), 2000);
  EXPECT_EQ(c.metrics()[1].entry.integer("samples"), 10000);
  // Onto a list, and onto nothing.
  EXPECT_EQ(parse(kBase + "[[metric]]\ntype = \"energy_distance\"\n", {"metric[1].type=sliced_wasserstein"})
                .metrics()
                .size(),
            2u);
  PipelineConfig fresh =
      parse(kBase, {"metric[0].type=energy_distance", "metric[1].type=sliced_wasserstein"});
  EXPECT_EQ(metric_names(fresh), (std::vector<std::string>{"energy_distance", "sliced_wasserstein"}));
  // What is wrong with an appended entry points at the --set that made it.
  EXPECT_EQ(one_problem(kBase, {"metric[0].type=energy_distanse"}),
            "--set metric[0].type=energy_distanse: unknown metric type 'energy_distanse'; did you mean "
            "'energy_distance'? registered metrics: clashing, energy_distance, sliced_wasserstein");
  // A file position survives the move of a single table into a list.
  EXPECT_EQ(one_problem(kBase + "[metric]\ntype = \"energy_distance\"\nsamples = -2\n",
                        {"metric[1].type=energy_distance"}),
            "pipe.toml:10:11: metric[0].samples = -2 is out of range: must be >= 0");
}

TEST(ConfigOverrides, TablesCreatedBySetReportAtTheSet) {
  // A slot with a default type gets it: a key set on an absent [solver] is the default solver's.
  EXPECT_TRUE(problems(kBase, {"solver.steps=10"}).empty());
  EXPECT_EQ(parse(kBase, {"solver.steps=10"}).component("solver").type, "euler");
  EXPECT_EQ(parse(kBase, {"solver.steps=10"}).component("solver").params.integer("steps"), 10);
  EXPECT_EQ(one_problem(kBase, {"metric.samples=10"}),
            "--set metric.samples=10: metric[0]: missing key 'type'; registered metrics: clashing, "
            "energy_distance, "
            "sliced_wasserstein");
}

}  // namespace
}  // namespace pathline
