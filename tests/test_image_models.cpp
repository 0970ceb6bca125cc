// The image models of plugin "models-image", `unet` and `dit`, built through the registry as the
// engine builds them: they keep the image's shape at several sizes, channel counts and patch sizes;
// a fresh one outputs exactly zero; sizes they cannot take are refused with a message that says
// why; labels (and the null label) condition them; they count their multiply-accumulates; a tiny
// one memorises a few flow-matching pairs; and they train under bfloat16 autocast.
#include <ATen/autocast_mode.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "models-image/image_model.hpp"
#include "support/support.hpp"

namespace pathline {
namespace {

using testing::default_params;

using Overrides = std::map<std::string, ParamValue>;

std::shared_ptr<Model> make_model(const std::string& name, std::vector<std::int64_t> shape,
                                  std::int64_t num_classes = 0, const Overrides& changes = {}) {
  BuildContext ctx;
  ctx.data.shape = std::move(shape);
  ctx.data.num_classes = num_classes;
  ctx.slot = "model";
  const Registry& registry = testing::builtin_registry();
  return registry.create<Model>(name, default_params(registry, Kind::model, name, changes), ctx);
}

ParamValue integer(std::int64_t v) { return ParamValue(v); }
ParamValue ints(std::vector<std::int64_t> v) { return ParamValue(std::move(v)); }

// Small but complete versions of each, for the tests that train or run many shapes.
const Overrides kSmallUnet = {{"channels", integer(8)},
                              {"channel_mult", ints({1, 2})},
                              {"attention_resolutions", ints({4})},
                              {"heads", integer(2)}};
const Overrides kSmallDit = {{"hidden", integer(32)}, {"depth", integer(2)}, {"heads", integer(2)}};

Overrides with(Overrides base, const Overrides& changes) {
  for (const auto& [k, v] : changes) base[k] = v;
  return base;
}

// Moves every parameter away from its (partly zero) initialisation, so that every path through the
// network contributes to the output.
void perturb(Model& model, double scale = 0.05) {
  torch::NoGradGuard no_grad;
  for (auto& p : model.parameters()) p.add_(torch::randn_like(p) * scale);
}

// What the engine does for [train] precision = "bf16": CPU autocast to bfloat16 for the guard's life.
class Bf16Autocast {
 public:
  Bf16Autocast() {
    at::autocast::set_autocast_enabled(at::kCPU, true);
    at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
    at::autocast::increment_nesting();
  }
  ~Bf16Autocast() {
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(at::kCPU, false);
  }
};

std::string message_of(const std::function<void()>& build) {
  try {
    build();
  } catch (const InputError& e) {
    return e.what();
  }
  return "(no InputError)";
}

TEST(ImageModels, BothAreRegisteredByOnePlugin) {
  const Registry& registry = testing::builtin_registry();
  for (const char* name : {"unet", "dit"}) {
    const ComponentEntry* entry = registry.find(Kind::model, name);
    ASSERT_NE(entry, nullptr) << name;
    EXPECT_EQ(entry->plugin->name, "models-image") << name;
  }
}

TEST(ImageModels, UnetKeepsTheShapeOfEveryImageSize) {
  struct Case {
    std::vector<std::int64_t> shape;
    Overrides changes;
  };
  const std::vector<Case> cases = {
      {{1, 28, 28}, {{"channels", integer(8)}, {"heads", integer(2)}}},  // 28 -> 14 -> 7, attention at 7
      {{3, 32, 32}, {{"channels", integer(8)}, {"heads", integer(2)}, {"attention_resolutions", ints({16})}}},
      {{3, 16, 16}, kSmallUnet},
      {{2, 8, 12}, with(kSmallUnet, {{"num_res_blocks", integer(2)}, {"channel_mult", ints({1, 2, 1})}})},
      {{1, 5, 7}, {{"channels", integer(4)}, {"channel_mult", ints({2})}, {"heads", integer(1)}}},
  };
  for (const auto& c : cases) {
    auto model = make_model("unet", c.shape, 0, c.changes);
    perturb(*model);
    std::vector<std::int64_t> batch_shape = {3};
    batch_shape.insert(batch_shape.end(), c.shape.begin(), c.shape.end());
    auto x = torch::randn(batch_shape);
    auto y = model->forward(x, torch::rand({3}), {});
    EXPECT_EQ(y.sizes(), x.sizes()) << c10::str(x.sizes());
    EXPECT_EQ(y.scalar_type(), torch::kFloat32);
    EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
  }
}

TEST(ImageModels, DitKeepsTheShapeOfEveryImageSizeAndPatch) {
  struct Case {
    std::vector<std::int64_t> shape;
    std::int64_t patch;
  };
  for (const auto& c : std::vector<Case>{{{1, 28, 28}, 2},
                                         {{1, 28, 28}, 4},
                                         {{3, 32, 32}, 4},
                                         {{3, 16, 16}, 2},
                                         {{2, 8, 12}, 4},
                                         {{1, 6, 6}, 1}}) {
    auto model = make_model("dit", c.shape, 0, with(kSmallDit, {{"patch_size", integer(c.patch)}}));
    perturb(*model);
    std::vector<std::int64_t> batch_shape = {3};
    batch_shape.insert(batch_shape.end(), c.shape.begin(), c.shape.end());
    auto x = torch::randn(batch_shape);
    auto y = model->forward(x, torch::rand({3}), {});
    EXPECT_EQ(y.sizes(), x.sizes()) << c10::str(x.sizes()) << " patch " << c.patch;
    EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
    // Unpatchify gives each channel its own values.
    if (c.shape[0] > 1) {
      EXPECT_FALSE(torch::allclose(y.select(1, 0), y.select(1, 1)));
    }
  }
}

TEST(ImageModels, FreshModelsOutputExactlyZero) {
  // The defaults, on labelled Fashion-MNIST-sized images: the zero-initialised last layers (U-Net)
  // and adaLN-Zero with a zero final projection (DiT) make the initial field exactly zero.
  for (const char* name : {"unet", "dit"}) {
    auto model = make_model(name, {1, 28, 28}, 10);
    auto x = torch::randn({4, 1, 28, 28});
    auto y =
        model->forward(x, torch::rand({4}), {torch::tensor(std::vector<std::int64_t>{0, 3, kNullLabel, 9})});
    EXPECT_TRUE(torch::equal(y, torch::zeros_like(x))) << name;
    // But the output depends on every parameter once they move.
    perturb(*model);
    EXPECT_GT(model->forward(x, torch::rand({4}), {}).abs().max().item<double>(), 0.0) << name;
  }
}

TEST(ImageModels, UnetRefusesSizesItsLevelsDoNotDivide) {
  // 30 -> 15 -> 7.5: three levels need sides divisible by 4.
  const std::string m = message_of([] { make_model("unet", {1, 30, 30}); });
  EXPECT_NE(m.find("unet:"), std::string::npos) << m;
  EXPECT_NE(m.find("30x30"), std::string::npos) << m;
  EXPECT_NE(m.find("divisible by 4"), std::string::npos) << m;
  EXPECT_NE(m.find("channel_mult [1, 2, 2]"), std::string::npos) << m;
  // One side is enough; two levels on 30 are fine.
  EXPECT_NE(message_of([] { make_model("unet", {1, 28, 30}); }).find("28x30"), std::string::npos);
  EXPECT_NO_THROW(
      make_model("unet", {1, 30, 30}, 0, {{"channel_mult", ints({1, 2})}, {"channels", integer(8)}}));
  // Heads must divide the width where there is attention (the middle block always has it).
  const std::string heads = message_of([] { make_model("unet", {1, 28, 28}, 0, {{"heads", integer(3)}}); });
  EXPECT_NE(heads.find("heads = 3"), std::string::npos) << heads;
  // Not an image.
  const std::string vector = message_of([] { make_model("unet", {2}); });
  EXPECT_NE(vector.find("[channels, height, width]"), std::string::npos) << vector;
  EXPECT_NE(message_of([] { make_model("unet", {}); }).find("data shape is unknown"), std::string::npos);
}

TEST(ImageModels, DitRefusesSizesThePatchDoesNotDivide) {
  const std::string m = message_of([] { make_model("dit", {1, 28, 28}, 0, {{"patch_size", integer(3)}}); });
  EXPECT_NE(m.find("dit:"), std::string::npos) << m;
  EXPECT_NE(m.find("28x28"), std::string::npos) << m;
  EXPECT_NE(m.find("patch_size = 3"), std::string::npos) << m;
  EXPECT_NE(message_of([] {
              make_model("dit", {3, 32, 30}, 0, {{"patch_size", integer(4)}});
            }).find("32x30"),
            std::string::npos);
  const std::string heads = message_of([] { make_model("dit", {1, 28, 28}, 0, {{"heads", integer(3)}}); });
  EXPECT_NE(heads.find("heads = 3"), std::string::npos) << heads;
  EXPECT_NE(message_of([] { make_model("dit", {784}); }).find("[channels, height, width]"),
            std::string::npos);
}

TEST(ImageModels, LabelsConditionAndTheNullLabelIsItsOwnRow) {
  for (const auto& [name, changes] : std::vector<std::pair<std::string, Overrides>>{
           {"unet", with(kSmallUnet, {{"attention_resolutions", ints({8})}})}, {"dit", kSmallDit}}) {
    torch::manual_seed(3);
    auto model = make_model(name, {2, 8, 8}, 3, changes);
    // The class table: one row per class and the null label's row, num_classes.
    const auto params = model->named_parameters();
    ASSERT_TRUE(params.contains("classes.weight")) << name;
    EXPECT_EQ(params["classes.weight"].size(0), 4) << name;
    perturb(*model);

    auto x = torch::randn({5, 2, 8, 8});
    auto t = torch::rand({5});
    auto labels = [](std::vector<std::int64_t> v) { return Condition{torch::tensor(v, torch::kLong)}; };
    auto y0 = model->forward(x, t, labels({0, 0, 0, 0, 0}));
    auto y1 = model->forward(x, t, labels({1, 1, 1, 1, 1}));
    auto null = model->forward(x, t, labels({-1, -1, -1, -1, -1}));
    // Every sample's output depends on its label; undefined labels are the null label.
    for (std::int64_t i = 0; i < 5; ++i) {
      EXPECT_GT((y0[i] - y1[i]).abs().max().item<double>(), 1e-6) << name << " sample " << i;
      EXPECT_GT((y0[i] - null[i]).abs().max().item<double>(), 1e-6) << name << " sample " << i;
    }
    EXPECT_TRUE(torch::equal(null, model->forward(x, t, {}))) << name;
    // A mixed batch is the rows of the plain ones.
    auto mixed = model->forward(x, t, labels({0, 1, kNullLabel, 1, 0}));
    EXPECT_TRUE(torch::allclose(mixed[0], y0[0], 1e-5, 1e-6) &&
                torch::allclose(mixed[1], y1[1], 1e-5, 1e-6) &&
                torch::allclose(mixed[2], null[2], 1e-5, 1e-6))
        << name;
    // Labels the data does not have, or as many labels as samples, are errors.
    EXPECT_THROW(model->forward(x, t, labels({0, 1, 2, 3, 0})), Error) << name;
    EXPECT_THROW(model->forward(x, t, labels({0, 1})), Error) << name;
    // A batch of another image shape is refused with the expected one.
    EXPECT_THROW(model->forward(torch::randn({5, 2, 8, 4}), t, {}), Error) << name;

    // Unlabelled data: no class table, and labels change nothing.
    auto plain = make_model(name, {2, 8, 8}, 0, changes);
    EXPECT_FALSE(plain->named_parameters().contains("classes.weight")) << name;
    perturb(*plain);
    EXPECT_TRUE(torch::equal(plain->forward(x, t, labels({0, 1, 0, 1, 0})), plain->forward(x, t, {})))
        << name;
  }
}

TEST(ImageModels, CountMultiplyAccumulatesFromTheArchitecture) {
  // DiT, the defaults on 1x28x28: T = 196 tokens of D = 128, patch 2, MLP 512, 256 time features.
  {
    const double T = 196, D = 128, M = 512, P = 4;
    const double per_block = T * 3 * D * D + 2 * T * T * D + T * D * D + 2 * T * D * M + D * 6 * D;
    const double expected = T * P * D + (256 * D + D * D) + 6 * per_block + D * 2 * D + T * D * P;
    EXPECT_DOUBLE_EQ(make_model("dit", {1, 28, 28}, 10)->macs_per_sample(), expected);
  }
  // U-Net with 4 channels, levels [1, 2], one block each, attention at 4, on 1x8x8: counted by hand.
  {
    auto model = make_model("unet", {1, 8, 8}, 0,
                            {{"channels", integer(4)},
                             {"channel_mult", ints({1, 2})},
                             {"attention_resolutions", ints({4})},
                             {"heads", integer(1)}});
    const double E = 16, F = 32;  // embedding 4 x channels, 32 time features
    auto conv = [](double in, double out, double k, double pixels) { return in * out * k * k * pixels; };
    auto res = [&](double in, double out, double pixels) {
      return conv(in, out, 3, pixels) + conv(out, out, 3, pixels) +
             (in != out ? conv(in, out, 1, pixels) : 0) + E * 2 * out;
    };
    auto attention = [](double c, double tokens) { return 4 * c * c * tokens + 2 * tokens * tokens * c; };
    double expected = F * E + E * E + conv(1, 4, 3, 64);  // time MLP, input conv
    expected += res(4, 4, 64) + conv(4, 4, 3, 16);        // level 0 down, stride-2 conv
    expected += res(4, 8, 16) + attention(8, 16);         // level 1 down
    expected += 2 * res(8, 8, 16) + attention(8, 16);     // middle
    expected +=
        res(8 + 8, 8, 16) + res(8 + 4, 8, 16) + 2 * attention(8, 16) + conv(8, 8, 3, 64);  // level 1 up
    expected += res(8 + 4, 4, 64) + res(4 + 4, 4, 64);                                     // level 0 up
    expected += conv(4, 1, 3, 64);                                                         // output conv
    EXPECT_DOUBLE_EQ(model->macs_per_sample(), expected);
  }
}

// Trains on 8 fixed flow-matching pairs (x0, x1, t): x_t = t x1 + (1 - t) x0, target x1 - x0. A model
// that can learn at all drives the loss far below its starting value (1 + 1: the zero output's error
// on unit-variance x0 and x1): 150 Adam steps bring it down by thousands (the tests ask for 50).
double memorisation_ratio(Model& model, std::int64_t steps, double lr) {
  torch::manual_seed(11);
  auto x1 = torch::randn({8, 1, 8, 8});
  auto x0 = torch::randn({8, 1, 8, 8});
  auto t = torch::rand({8});
  auto labels = torch::arange(8, torch::kLong) % 2;
  auto tt = t.view({-1, 1, 1, 1});
  auto x_t = tt * x1 + (1 - tt) * x0;
  auto target = x1 - x0;
  torch::optim::Adam optimizer(model.parameters(), torch::optim::AdamOptions(lr));
  double first = 0, last = 0;
  for (std::int64_t step = 0; step < steps; ++step) {
    auto loss = torch::mse_loss(model.forward(x_t, t, {labels}), target);
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    if (step == 0) first = loss.item<double>();
    last = loss.item<double>();
  }
  return first / last;
}

TEST(ImageModels, TinyUnetMemorisesAFewImages) {
  torch::manual_seed(1);
  auto model = make_model("unet", {1, 8, 8}, 2, kSmallUnet);
  const double ratio = memorisation_ratio(*model, 150, 3e-3);
  EXPECT_GT(ratio, 50.0) << "the loss fell only " << ratio << "x";
}

TEST(ImageModels, TinyDitMemorisesAFewImages) {
  torch::manual_seed(1);
  auto model = make_model("dit", {1, 8, 8}, 2, with(kSmallDit, {{"patch_size", integer(2)}}));
  const double ratio = memorisation_ratio(*model, 150, 3e-3);
  EXPECT_GT(ratio, 50.0) << "the loss fell only " << ratio << "x";
}

TEST(ImageModels, TrainUnderBfloat16Autocast) {
  for (const auto& [name, changes] :
       std::vector<std::pair<std::string, Overrides>>{{"unet", kSmallUnet}, {"dit", kSmallDit}}) {
    torch::manual_seed(5);
    auto model = make_model(name, {3, 16, 16}, 4, changes);
    perturb(*model);
    auto x = torch::randn({4, 3, 16, 16});
    auto t = torch::rand({4});
    const Condition condition{torch::tensor(std::vector<std::int64_t>{0, 1, kNullLabel, 3})};
    const auto reference = model->forward(x, t, condition);
    reference.square().mean().backward();
    std::vector<torch::Tensor> reference_grads;
    for (auto& p : model->parameters()) {
      reference_grads.push_back(p.grad().flatten().clone());
      p.mutable_grad().reset();
    }
    torch::Tensor y;
    {
      Bf16Autocast autocast;
      y = model->forward(x, t, condition);
    }
    EXPECT_EQ(y.scalar_type(), torch::kFloat32) << name;
    EXPECT_EQ(y.sizes(), x.sizes()) << name;
    ASSERT_TRUE(torch::isfinite(y).all().item<bool>()) << name;
    // bfloat16 keeps 8 bits of mantissa: the outputs agree to a few percent of their scale.
    const double error = (y - reference).abs().max().item<double>();
    const double scale = reference.abs().max().item<double>();
    EXPECT_LT(error, 0.05 * scale) << name << ": max error " << error << " on outputs up to " << scale;
    // The backward pass runs and reaches every parameter, in float32, and each parameter's gradient
    // points where float32's does (the attention softmax and the DiT's GELU have bfloat16 backward
    // passes of their own; a wrong term there turns the gradients below them by tens of degrees).
    // Biases just before a group norm get almost no gradient, and rounding noise: skipped.
    y.square().mean().backward();
    std::size_t i = 0;
    for (const auto& p : model->named_parameters()) {
      const auto& grad = p.value().grad();
      ASSERT_TRUE(grad.defined()) << name << " " << p.key();
      EXPECT_EQ(grad.scalar_type(), torch::kFloat32) << name << " " << p.key();
      EXPECT_TRUE(torch::isfinite(grad).all().item<bool>()) << name << " " << p.key();
      const auto& reference_grad = reference_grads[i++];
      if (reference_grad.norm().item<double>() < 1e-6) continue;
      EXPECT_GT(torch::cosine_similarity(grad.flatten(), reference_grad, 0).item<double>(), 0.995)
          << name << " " << p.key();
    }
  }
}

// Outputs and gradients of one model for one batch, with the intra-op thread count given.
std::pair<torch::Tensor, std::vector<torch::Tensor>> run_with_threads(Model& model, int threads) {
  const int before = at::get_num_threads();
  at::set_num_threads(threads);
  torch::manual_seed(9);
  auto x = torch::randn({6, 3, 16, 16});
  auto t = torch::rand({6});
  model.zero_grad();
  auto y = model.forward(x, t, {});
  y.square().sum().backward();
  std::vector<torch::Tensor> grads;
  for (const auto& p : model.parameters()) grads.push_back(p.grad().clone());
  at::set_num_threads(before);
  return {y.detach(), grads};
}

TEST(ImageModels, AttentionGivesTheSameResultsOnOneThreadOrTwo) {
  // On several threads the fused attention and the products split the work between them; the
  // results must be the same function and gradients as on one.
  for (const auto& [name, changes] : std::vector<std::pair<std::string, Overrides>>{
           {"unet", with(kSmallUnet, {{"attention_resolutions", ints({16, 8})}})}, {"dit", kSmallDit}}) {
    torch::manual_seed(2);
    auto model = make_model(name, {3, 16, 16}, 0, changes);
    perturb(*model);
    const auto [y1, g1] = run_with_threads(*model, 1);
    const auto [y2, g2] = run_with_threads(*model, 2);
    EXPECT_TRUE(torch::allclose(y1, y2, 1e-4, 1e-5)) << name;
    ASSERT_EQ(g1.size(), g2.size());
    for (std::size_t i = 0; i < g1.size(); ++i)
      // Sums in another order: a gradient that cancels to almost nothing (a bias after a norm)
      // differs by rounding, so the tolerance is absolute as well as relative.
      EXPECT_LE((g1[i] - g2[i]).abs().max().item<double>(), 1e-3 * g1[i].abs().max().item<double>() + 1e-4)
          << name << " " << model->named_parameters().keys()[i];
  }
}

TEST(ImageModels, UnetChannelsLastIsTheSameModel) {
  // The same seed draws the same weights; only the memory layout of the activations differs.
  torch::manual_seed(4);
  auto standard = make_model("unet", {3, 16, 16}, 2, kSmallUnet);
  torch::manual_seed(4);
  auto nhwc = make_model("unet", {3, 16, 16}, 2, with(kSmallUnet, {{"channels_last", ParamValue(true)}}));
  torch::manual_seed(5);
  perturb(*standard);
  torch::manual_seed(5);
  perturb(*nhwc);
  auto x = torch::randn({3, 3, 16, 16});
  auto t = torch::rand({3});
  const Condition labels{torch::tensor(std::vector<std::int64_t>{0, 1, kNullLabel})};
  auto y = nhwc->forward(x, t, labels);
  EXPECT_TRUE(y.is_contiguous());
  EXPECT_TRUE(torch::allclose(y, standard->forward(x, t, labels), 1e-4, 1e-5));
}

TEST(ImageModels, FollowTheModuleToDouble) {
  for (const auto& [name, changes] :
       std::vector<std::pair<std::string, Overrides>>{{"unet", kSmallUnet}, {"dit", kSmallDit}}) {
    auto model = make_model(name, {1, 8, 8}, 2, changes);
    perturb(*model);
    auto x = torch::randn({2, 1, 8, 8});
    auto t = torch::rand({2});
    const auto single = model->forward(x, t, {});
    model->to(torch::kDouble);
    const auto twice = model->forward(x.to(torch::kDouble), t.to(torch::kDouble), {});
    EXPECT_EQ(twice.scalar_type(), torch::kDouble) << name;
    EXPECT_TRUE(torch::allclose(twice.to(torch::kFloat), single, 1e-4, 1e-5)) << name;
  }
}

// The attention and GELU of LibTorch 1.13 days, spelled out: softmax(q k^T / sqrt(d)) v with the
// softmax in float32, and 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))). The models now call
// LibTorch's fused scaled_dot_product_attention and gelu(x, "tanh") instead.
torch::Tensor explicit_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  auto weights = torch::matmul(q, k.transpose(-2, -1)).mul(scale).to(torch::kFloat).softmax(-1);
  return torch::matmul(weights.to(v.scalar_type()), v);
}
torch::Tensor explicit_tanh_gelu(const torch::Tensor& x) {
  auto xf = x.to(torch::kFloat);
  auto inner = (xf + 0.044715 * xf.pow(3)) * std::sqrt(2.0 / 3.14159265358979323846);
  return (0.5 * xf * (1 + inner.tanh())).to(x.scalar_type());
}

// Value and gradients of sum(w * f(inputs)) for a fixed random w, in float64.
std::vector<torch::Tensor> value_and_gradients(
    const std::function<torch::Tensor(std::vector<torch::Tensor>&)>& f,
    const std::vector<torch::Tensor>& inputs, torch::ScalarType dtype) {
  std::vector<torch::Tensor> leaves;
  for (const auto& x : inputs) leaves.push_back(x.to(dtype).detach().requires_grad_(true));
  auto y = f(leaves);
  torch::manual_seed(17);
  auto w = torch::randn(y.sizes(), torch::kDouble);
  (y.to(torch::kDouble) * w).sum().backward();
  std::vector<torch::Tensor> out = {y.detach().to(torch::kDouble)};
  for (const auto& leaf : leaves) out.push_back(leaf.grad().to(torch::kDouble));
  return out;
}

TEST(ImageModels, FusedAttentionAndGeluGiveTheExplicitFormulasResults) {
  // Forward and every gradient, float32 and bfloat16, at the DiT's and the U-Net's shapes (T = 49
  // tokens of d = 32 and 16, heads 4), against the formulas in float64 (float32: 1e-5 relative to
  // the largest value; bfloat16, 8 bits of mantissa: 3e-2).
  torch::manual_seed(3);
  for (const auto& shape : std::vector<std::vector<std::int64_t>>{{3, 4, 49, 32}, {2, 4, 196, 16}}) {
    const std::vector<torch::Tensor> qkv = {torch::randn(shape), torch::randn(shape), torch::randn(shape)};
    const auto reference = value_and_gradients(
        [](std::vector<torch::Tensor>& a) { return explicit_attention(a[0], a[1], a[2]); }, qkv,
        torch::kDouble);
    for (const auto& [dtype, tolerance] :
         std::vector<std::pair<torch::ScalarType, double>>{{torch::kFloat, 1e-5}, {torch::kBFloat16, 3e-2}}) {
      const auto fused = value_and_gradients(
          [](std::vector<torch::Tensor>& a) { return models_image::attention(a[0], a[1], a[2]); }, qkv,
          dtype);
      for (std::size_t i = 0; i < reference.size(); ++i) {
        const double scale = reference[i].abs().max().item<double>();
        EXPECT_LE((fused[i] - reference[i]).abs().max().item<double>(), tolerance * scale)
            << "attention " << c10::toString(dtype) << " shape " << c10::str(shape) << " output " << i;
      }
    }
  }
  const std::vector<torch::Tensor> x = {torch::randn({64, 512}) * 3};
  const auto reference = value_and_gradients(
      [](std::vector<torch::Tensor>& a) { return explicit_tanh_gelu(a[0]); }, x, torch::kDouble);
  for (const auto& [dtype, tolerance] :
       std::vector<std::pair<torch::ScalarType, double>>{{torch::kFloat, 1e-5}, {torch::kBFloat16, 3e-2}}) {
    const auto fused = value_and_gradients(
        [](std::vector<torch::Tensor>& a) { return models_image::tanh_gelu(a[0]); }, x, dtype);
    for (std::size_t i = 0; i < reference.size(); ++i)
      EXPECT_LE((fused[i] - reference[i]).abs().max().item<double>(),
                tolerance * reference[i].abs().max().item<double>())
          << "gelu " << c10::toString(dtype) << " output " << i;
  }
}

}  // namespace
}  // namespace pathline
