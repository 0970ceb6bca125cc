// Large sampling batches of a model with independent rows are evaluated as row blocks
// (ModelField, Model::rows_independent): the same numbers as one call, every row once, labels kept
// with their rows, and nothing split for a model that did not ask for it, with gradients, or for
// small batches.
#include <gtest/gtest.h>

#include "pathline/engine/config.hpp"
#include "pathline/engine/sample.hpp"
#include "support/support.hpp"

namespace pathline {
namespace {

// out = x (1 + t) + label: row i depends on row i alone. Counts its calls and their rows; throws on a row
// whose first coordinate is 1e9, to show an error in one block reaching the caller.
class RowModel : public Model {
 public:
  explicit RowModel(bool independent) : independent_(independent) {}
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t, const Condition& condition) override {
    ++calls_;
    rows_.push_back(x.size(0));
    if ((x.select(1, 0) == 1e9).any().item<bool>()) throw InputError("row model: a poisoned row");
    torch::Tensor out = x * (1 + t.reshape({-1, 1}));
    if (condition.labels.defined()) out = out + condition.labels.to(x.dtype()).reshape({-1, 1});
    return out;
  }
  bool rows_independent() const override { return independent_; }

  bool independent_;
  int calls_ = 0;
  std::vector<std::int64_t> rows_;
};

struct Pieces {
  std::shared_ptr<Path> path;
  std::shared_ptr<Parameterization> parameterization;
};

Pieces linear_velocity() {
  const Registry& r = testing::builtin_registry();
  return {r.create<Path>("linear", testing::default_params(r, Kind::path, "linear"), {}),
          r.create<Parameterization>("velocity",
                                     testing::default_params(r, Kind::parameterization, "velocity"), {})};
}

TEST(SamplingBlocks, BlockCountDependsOnTheRowsAlone) {
  EXPECT_EQ(sampling_blocks(1), 1);
  EXPECT_EQ(sampling_blocks(2 * kSamplingBlockRows - 1), 1);
  EXPECT_EQ(sampling_blocks(2 * kSamplingBlockRows), 2);
  EXPECT_EQ(sampling_blocks(10000), 8);
  EXPECT_EQ(sampling_blocks(4 * kSamplingBlockRows + 1), 5);
}

TEST(SamplingBlocks, IndependentRowsAreSplitAcrossThreadsWithTheSameNumbers) {
  Pieces p = linear_velocity();
  RowModel model(true);
  c10::InferenceMode inference;
  const std::int64_t n = 3 * kSamplingBlockRows - 7;  // blocks of unequal size
  torch::Tensor x = torch::randn({n, 2});
  torch::Tensor labels = torch::arange(n, torch::kInt64) % 5;
  ModelField field(model, *p.path, *p.parameterization, 2);
  field.set_labels(labels);
  torch::Tensor v = field.velocity(x, 0.25);
  EXPECT_TRUE(torch::equal(v, x * 1.25 + labels.to(torch::kFloat).reshape({-1, 1})));
  EXPECT_EQ(model.calls_, 3);
  std::int64_t total = 0;
  for (auto rows : model.rows_) total += rows;
  EXPECT_EQ(total, n);
  for (std::size_t b = 1; b < model.rows_.size(); ++b)
    EXPECT_LE(std::abs(model.rows_[b] - model.rows_[0]), 1);
  EXPECT_EQ(field.evaluations(), 1);  // one evaluation, whatever the blocks

  // Guidance doubles the rows (conditional and null halves) and keeps labels and rows together.
  RowModel guided_model(true);
  ModelField guided(guided_model, *p.path, *p.parameterization, 2, 3.0);
  guided.set_labels(labels);
  torch::Tensor g = guided.velocity(x, 0.5);
  torch::Tensor conditional = x * 1.5 + labels.to(torch::kFloat).reshape({-1, 1});
  torch::Tensor unconditional = x * 1.5 + static_cast<float>(kNullLabel);
  EXPECT_TRUE(torch::allclose(g, unconditional + 3.0 * (conditional - unconditional), 1e-5, 1e-5));
  EXPECT_EQ(guided_model.calls_, sampling_blocks(2 * n));
}

TEST(SamplingBlocks, NothingIsSplitUnlessTheModelSaysSoInInferenceForLargeBatches) {
  Pieces p = linear_velocity();
  const std::int64_t large = 3 * kSamplingBlockRows;
  {  // the default: whole calls
    RowModel model(false);
    c10::InferenceMode inference;
    ModelField field(model, *p.path, *p.parameterization, 2);
    field.velocity(torch::randn({large, 2}), 0.5);
    EXPECT_EQ(model.calls_, 1);
    EXPECT_EQ(model.rows_.front(), large);
  }
  {  // a small batch
    RowModel model(true);
    c10::InferenceMode inference;
    ModelField field(model, *p.path, *p.parameterization, 2);
    field.velocity(torch::randn({2 * kSamplingBlockRows - 1, 2}), 0.5);
    EXPECT_EQ(model.calls_, 1);
  }
  {  // with gradients (the likelihood's divergence, training): one graph, one call
    RowModel model(true);
    ModelField field(model, *p.path, *p.parameterization, 2);
    torch::Tensor x = torch::randn({large, 2}, torch::requires_grad());
    field.velocity(x, 0.5).sum().backward();
    EXPECT_EQ(model.calls_, 1);
    EXPECT_TRUE(torch::allclose(x.grad(), torch::full_like(x, 1.5)));
  }
}

TEST(SamplingBlocks, AnErrorInOneBlockReachesTheCallerWithItsMessage) {
  Pieces p = linear_velocity();
  RowModel model(true);
  c10::InferenceMode inference;
  torch::Tensor x = torch::randn({3 * kSamplingBlockRows, 2});
  x[2 * kSamplingBlockRows + 5][0] = 1e9;  // in the last block
  ModelField field(model, *p.path, *p.parameterization, 2);
  try {
    field.velocity(x, 0.5);
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(), "row model: a poisoned row");
  }
}

TEST(SamplingBlocks, TheBuiltInMlpSamplesTheSameInBlocks) {
  // The quickstart's MLP (rows_independent) on 10,000 points: eight blocks against one whole call
  // (its forward called directly), to float rounding.
  const Registry& registry = testing::builtin_registry();
  ConfigOptions options;
  options.overrides = {"train.steps=0"};
  PipelineConfig config = load_config(
      std::filesystem::path(PATHLINE_SOURCE_DIR) / "configs" / "quickstart.toml", registry, options);
  Components c = build_components(config, registry);
  ASSERT_TRUE(c.model->rows_independent());
  c.model->eval();
  c10::InferenceMode inference;
  torch::Tensor x = torch::randn({10000, 2});
  ModelField field(*c.model, *c.path, *c.parameterization, 2);
  torch::Tensor blocks = field.velocity(x, 0.3);
  torch::Tensor whole = c.model->forward(x, torch::full({10000}, 0.3), Condition{});
  EXPECT_TRUE(torch::allclose(blocks, whole, 1e-5, 1e-6)) << (blocks - whole).abs().max().item<double>();
  EXPECT_FALSE(torch::equal(whole, torch::zeros_like(whole)));
}

}  // namespace
}  // namespace pathline
