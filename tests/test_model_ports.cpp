// The forward passes of the built-in models as docs/weights.md specifies them. The PyTorch ports in
// tests/python/pathline_ports.py, written from that page alone, load each model's weights as the
// engine writes them (write_safetensors of named_weights, strict) and reproduce its outputs at
// several settings: labels with the null label, several heads, non-square images and patches,
// attention at more than one resolution. And the conformance check of issue 22: a trained run's
// model.safetensors in the port, integrated by torchdiffeq from the points given to
// `pathline sample --noise`, ends where Pathline's samples do; bad --noise files are refused.
#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "pathline/engine/io.hpp"
#include "support/support.hpp"

namespace pathline {
namespace {

namespace fs = std::filesystem;
using testing::read_text;
using testing::run_cli;
using testing::TempDir;
using testing::write_text;
using Overrides = std::map<std::string, ParamValue>;

const fs::path kPorts = fs::path(PATHLINE_SOURCE_DIR) / "tests" / "python";

ParamValue integer(std::int64_t v) { return ParamValue(v); }
ParamValue ints(std::vector<std::int64_t> v) { return ParamValue(std::move(v)); }
ParamValue real(double v) { return ParamValue(v); }
ParamValue text(std::string v) { return ParamValue(std::move(v)); }

// A parameter value as TOML, the way a run's config.toml spells it.
struct TomlWriter {
  std::string operator()(bool b) const { return b ? "true" : "false"; }
  std::string operator()(std::int64_t i) const { return std::to_string(i); }
  std::string operator()(double d) const {
    std::string s = fmt::format("{}", d);
    return s.find_first_of(".en") == std::string::npos ? s + ".0" : s;  // TOML floats need a dot
  }
  std::string operator()(const std::string& s) const { return "\"" + s + "\""; }
  template <class T>
  std::string operator()(const std::vector<T>& v) const {
    std::string s = "[";
    for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + (*this)(v[i]);
    return s + "]";
  }
};

std::string toml_value(const ParamValue& value) { return std::visit(TomlWriter{}, value); }

std::string shape_json(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// One model at one setting, evaluated by the engine; its folder is what eval_ports.py reads.
struct PortCase {
  std::string name;   // folder name, and what a failure prints
  std::string model;  // mlp, unet, dit
  std::vector<std::int64_t> shape;
  std::int64_t num_classes = 0;
  Overrides params = {};
  std::int64_t batch = 4;
  bool single_time = false;     // t as one [1] time for the whole batch
  bool omit_labels = false;     // a labelled model called without labels: the null row
  torch::Tensor expected = {};  // the engine's output
};

// Builds the case's model through the registry, moves its weights away from their (partly zero)
// initialisation, writes the weights as a run does (plus config.toml's [model] table) and the
// inputs, and keeps the engine's output.
void write_case(PortCase& c, const fs::path& dir) {
  const Registry& registry = testing::builtin_registry();
  BuildContext ctx;
  ctx.data.shape = c.shape;
  ctx.data.num_classes = c.num_classes;
  ctx.slot = "model";
  Params params = testing::default_params(registry, Kind::model, c.model, c.params);
  auto model = registry.create<Model>(c.model, params, ctx);
  model->eval();  // dropout off, as when sampling
  torch::NoGradGuard no_grad;
  for (auto& p : model->parameters()) p.add_(torch::randn_like(p) * 0.05);

  fs::create_directories(dir);
  write_safetensors(dir / "model.safetensors", named_weights(*model),
                    {{"pathline.model", c.model}, {"pathline.weights", "raw"}});
  std::string toml = "[model]\ntype = \"" + c.model + "\"\n";
  for (const auto& [key, value] : params.values()) toml += key + " = " + toml_value(value) + "\n";
  write_text(dir / "config.toml", toml);
  write_text(dir / "shape.json", shape_json(c.shape));

  std::vector<std::int64_t> batch_shape = {c.batch};
  batch_shape.insert(batch_shape.end(), c.shape.begin(), c.shape.end());
  torch::Tensor x = torch::randn(batch_shape);
  // Times across [0, 1], the ends included: the features' frequencies reach 1000 at t = 1.
  torch::Tensor t = c.single_time ? torch::tensor({0.37f}) : torch::linspace(0.0, 1.0, c.batch);
  Condition condition;
  if (c.num_classes > 0 && !c.omit_labels) {
    // The null label, then every class in turn; rows 0 and 1 share x and t, so they differ only in
    // the label (null, class 0).
    condition.labels = torch::arange(c.batch, torch::kInt64) % (c.num_classes + 1) - 1;
    x[1] = x[0];
    t[1] = t[0];
    write_npy(dir / "labels.npy", condition.labels);
  }
  write_npy(dir / "x.npy", x);
  write_npy(dir / "t.npy", t);
  c.expected = model->forward(x, t, condition);
  if (c.num_classes > 0 && !c.omit_labels) {
    ASSERT_FALSE(torch::allclose(c.expected[0], c.expected[1])) << c.name << ": the label has no effect";
  }
}

// Writes every case, runs the ports on them in one Python process, compares: float32 outputs within
// 1e-4 of the output's scale (its largest magnitude), which must itself be far from zero.
void check_ports(std::vector<PortCase> cases) {
  const std::string python = testing::python_with({"torch", "numpy"});
  if (python.empty())
    GTEST_SKIP() << "the project's Python (" << testing::python()
                 << ") cannot import torch and numpy; the ports need both (tools/install-deps.sh)";
  TempDir dir;
  std::string args;
  for (auto& c : cases) {
    write_case(c, dir / c.name);
    if (::testing::Test::HasFatalFailure()) return;
    args += " '" + (dir / c.name).string() + "'";
  }
  const std::string command = "'" + python + "' '" + (kPorts / "eval_ports.py").string() + "'" + args +
                              " 2>'" + (dir / "python.err").string() + "'";
  ASSERT_EQ(std::system(command.c_str()), 0) << read_text(dir / "python.err");
  for (const auto& c : cases) {
    torch::Tensor port = read_npy(dir / c.name / "port.npy");
    ASSERT_EQ(port.sizes(), c.expected.sizes()) << c.name;
    const double scale = c.expected.abs().max().item<double>();
    const double error = (port - c.expected).abs().max().item<double>();
    EXPECT_GT(scale, 1e-3) << c.name << ": the output is too close to zero to compare";
    EXPECT_LE(error, 1e-4 * scale) << c.name << ": max abs error " << error << ", output scale " << scale;
    std::cout << "  " << c.model << " " << c.name << ": max abs error " << error << " of " << scale << "\n";
  }
}

// The suite's fixture: a quickstart-like 2D run, trained for a few hundred steps with EMA (the
// default) by the first test that asks for it and kept for the others, so model.safetensors holds
// EMA weights that differ from the raw ones.
class ModelPorts : public ::testing::Test {
 protected:
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }

  // Trains the run unless done; a failed training fails every test that needs it.
  static void train() {
    if (!dir_) {
      dir_ = new TempDir();
      write_text(*dir_ / "tiny.toml",
                 "[dataset]\ntype = \"toy2d\"\nshape = \"checkerboard\"\n"
                 "[path]\ntype = \"linear\"\n[parameterization]\ntype = \"velocity\"\n"
                 "[model]\ntype = \"mlp\"\nwidth = 64\ndepth = 3\n"
                 "[train]\nsteps = 300\nbatch_size = 256\nlr = 2e-3\nwarmup_steps = 20\n"
                 "[solver]\ntype = \"heun\"\nsteps = 8\n[run]\nthreads = 1\n");
      trained_ = run_cli("train '" + (*dir_ / "tiny.toml").string() + "' --run-dir '" + run().string() + "'");
    }
    ASSERT_EQ(trained_.code, 0) << trained_.err;
  }

  static fs::path run() { return dir_->path() / "run"; }
  static fs::path path(const std::string& name) { return dir_->path() / name; }

  static TempDir* dir_;
  static testing::CliResult trained_;
};
TempDir* ModelPorts::dir_ = nullptr;
testing::CliResult ModelPorts::trained_;

TEST_F(ModelPorts, MlpMatchesThePyTorchPort) {
  check_ports({
      {.name = "defaults", .model = "mlp", .shape = {2}},
      {.name = "labelled-gelu",
       .model = "mlp",
       .shape = {2},
       .num_classes = 3,
       .params = {{"activation", text("gelu")}, {"depth", integer(2)}, {"width", integer(48)}},
       .batch = 9},
      {.name = "labelled-no-labels",
       .model = "mlp",
       .shape = {2},
       .num_classes = 3,
       .params = {{"activation", text("tanh")}, {"class_embedding", integer(5)}},
       .omit_labels = true},
      {.name = "raw-time-image",
       .model = "mlp",
       .shape = {1, 3, 4},
       .params = {{"activation", text("relu")}, {"time_embedding", integer(0)}, {"depth", integer(1)}},
       .single_time = true},
      {.name = "two-features",
       .model = "mlp",
       .shape = {5},
       .params = {{"time_embedding", integer(2)}, {"width", integer(16)}},
       .single_time = true},
  });
}

TEST_F(ModelPorts, UnetMatchesThePyTorchPort) {
  check_ports({
      // Attention at two resolutions (8 and 4) besides the middle (2), labels and the null label.
      {.name = "two-attention-levels",
       .model = "unet",
       .shape = {1, 8, 8},
       .num_classes = 4,
       .params = {{"channels", integer(8)},
                  {"channel_mult", ints({1, 2, 2})},
                  {"attention_resolutions", ints({8, 4})},
                  {"heads", integer(2)}},
       .batch = 6},
      // A non-square image with attention on its 4 x 6 level, three heads, two blocks a level,
      // group counts other than 32 (12: 4, 24: 8, 36: 4, 48: 16), its own embedding width and
      // dropout (off when evaluating).
      {.name = "non-square-three-heads",
       .model = "unet",
       .shape = {3, 8, 12},
       .params = {{"channels", integer(12)},
                  {"channel_mult", ints({1, 2})},
                  {"num_res_blocks", integer(2)},
                  {"attention_resolutions", ints({4})},
                  {"heads", integer(3)},
                  {"embedding", integer(20)},
                  {"time_embedding", integer(8)},
                  {"dropout", real(0.1)}},
       .batch = 3},
      // 32 groups (widths 32 and 64), four heads, attention everywhere, one class.
      {.name = "wide-one-class",
       .model = "unet",
       .shape = {2, 4, 4},
       .num_classes = 1,
       .params = {{"channels", integer(32)},
                  {"channel_mult", ints({1, 2})},
                  {"attention_resolutions", ints({4, 2})},
                  {"heads", integer(4)}}},
  });
}

TEST_F(ModelPorts, DitMatchesThePyTorchPort) {
  check_ports({
      {.name = "labelled",
       .model = "dit",
       .shape = {1, 8, 8},
       .num_classes = 3,
       .params = {{"hidden", integer(32)},
                  {"depth", integer(2)},
                  {"heads", integer(2)},
                  {"time_embedding", integer(16)}},
       .batch = 5},
      // Patch 3 on a 6 x 9 image: 2 x 3 patches, so rows and columns differ in the positions and in
      // unpatchify; three heads; the default 256 time features; an MLP of 2.5 x 24 = 60.
      {.name = "patch3-non-square",
       .model = "dit",
       .shape = {3, 6, 9},
       .params = {{"patch_size", integer(3)},
                  {"hidden", integer(24)},
                  {"depth", integer(1)},
                  {"heads", integer(3)},
                  {"mlp_ratio", real(2.5)}}},
      // Five heads of 4, a 2 x 4 patch grid, and an MLP width of 20 x 1.125 = 22.5, rounded away
      // from zero to 23 (a port that rounds halves to even builds 22 and fails to load).
      {.name = "five-heads-half-width",
       .model = "dit",
       .shape = {2, 4, 8},
       .num_classes = 2,
       .params = {{"hidden", integer(20)},
                  {"depth", integer(2)},
                  {"heads", integer(5)},
                  {"mlp_ratio", real(1.125)},
                  {"time_embedding", integer(6)}}},
  });
}

// ------------------------------------------------------------------------------------------------
// A trained run against torchdiffeq

TEST_F(ModelPorts, TorchdiffeqFromTheSameNoiseEndsWithinOneTenThousandth) {
  ASSERT_NO_FATAL_FAILURE(train());
  const std::string python = testing::python_with({"torch", "numpy", "torchdiffeq"});
  if (python.empty())
    GTEST_SKIP() << "the project's Python (" << testing::python()
                 << ") cannot import torch, numpy and torchdiffeq (tools/install-deps.sh)";
  torch::manual_seed(7);
  write_npy(path("x0.npy"), torch::randn({500, 2}));
  const fs::path out = path("pathline");
  auto sampled = run_cli("sample '" + run().string() + "' --noise '" + path("x0.npy").string() +
                         "' --set solver.type=midpoint --set solver.steps=20 --out '" + out.string() + "'");
  ASSERT_EQ(sampled.code, 0) << sampled.err;
  EXPECT_CONTAINS(sampled.err, "the EMA weights");

  fs::create_directories(path("torchdiffeq"));
  const std::string command = "'" + python + "' '" + (kPorts / "torchdiffeq_run.py").string() + "' '" +
                              run().string() + "' '" + path("x0.npy").string() + "' '" +
                              path("torchdiffeq").string() + "' 2>'" + path("python.err").string() + "'";
  ASSERT_EQ(std::system(command.c_str()), 0) << read_text(path("python.err"));
  EXPECT_EQ(read_text(path("torchdiffeq") / "weights.txt"), "ema\n");

  torch::Tensor pathline = read_npy(out / "samples.npy");
  torch::Tensor midpoint = read_npy(path("torchdiffeq") / "midpoint.npy");
  torch::Tensor euler = read_npy(path("torchdiffeq") / "euler.npy");
  ASSERT_EQ(pathline.sizes(), midpoint.sizes());
  // The samples moved from the noise: the field is not the zero of a fresh model.
  EXPECT_GT((pathline - read_npy(path("x0.npy"))).abs().max().item<double>(), 0.5);
  const double error = (pathline - midpoint).abs().max().item<double>();
  EXPECT_LE(error, 1e-4) << "max |pathline - torchdiffeq midpoint| = " << error;
  std::cout << "  max |pathline - torchdiffeq| = " << error << " (midpoint), "
            << (pathline - euler).abs().max().item<double>() << " (euler)\n";
  // The tolerance tells integrators apart: Euler on the same grid ends far from the midpoint rule.
  EXPECT_GT((pathline - euler).abs().max().item<double>(), 1e-2);
}

TEST_F(ModelPorts, BadNoiseFilesAreBadUsageNamingTheFile) {
  ASSERT_NO_FATAL_FAILURE(train());
  write_npy(path("wide.npy"), torch::randn({10, 3}));
  write_npy(path("flat.npy"), torch::randn({10}));
  write_npy(path("integers.npy"), torch::ones({10, 2}, torch::kInt64));
  torch::Tensor nan = torch::randn({10, 2});
  nan[4][1] = std::nan("");
  write_npy(path("nan.npy"), nan);
  {
    // NumPy's int32 (its default integer on some platforms): not a dtype Pathline reads at all, so
    // the reader's own message, which starts with the file.
    std::string header = "{'descr': '<i4', 'fortran_order': False, 'shape': (10, 2), }";
    const std::size_t padded = (10 + header.size() + 1 + 63) / 64 * 64;  // NumPy aligns to 64
    header.append(padded - 10 - header.size() - 1, ' ');
    header += '\n';
    std::string bytes = std::string("\x93NUMPY\x01\x00", 8) + static_cast<char>(header.size()) + '\0' +
                        header + std::string(10 * 2 * 4, '\0');
    write_text(path("int32.npy"), bytes);
  }
  struct Bad {
    std::string file, why;
  };
  for (const Bad& bad : std::vector<Bad>{{"wide.npy", "shaped [10, 3]; the data needs [n, 2]"},
                                         {"flat.npy", "shaped [10]; the data needs [n, 2]"},
                                         {"integers.npy", "must be floating point"},
                                         {"int32.npy", "unsupported dtype '<i4'"},
                                         {"nan.npy", "NaN or infinite"},
                                         {"missing.npy", "no such file"}}) {
    const fs::path out = path("out-" + bad.file);
    auto r = run_cli("sample '" + run().string() + "' --noise '" + path(bad.file).string() + "' --out '" +
                     out.string() + "'");
    EXPECT_EQ(r.code, 2) << bad.file << ": " << r.err;
    ASSERT_EQ(testing::lines_of(r.err).size(), 1u) << r.err;
    EXPECT_CONTAINS(r.err, "pathline sample: " + path(bad.file).string() + ": ");
    EXPECT_CONTAINS(r.err, bad.why);
    EXPECT_FALSE(fs::exists(out)) << bad.file << ": nothing is written";
  }
}

}  // namespace
}  // namespace pathline
