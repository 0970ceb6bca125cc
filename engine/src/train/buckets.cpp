// Data parallel: the gradient buckets. The backward pass hands each parameter's gradient to
// on_gradient, which copies it into a flat buffer; a bucket whose gradients are all in starts its
// all-reduce while the backward pass goes on; average_over_ranks waits for them all.
#include "buckets.hpp"

#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "../device.hpp"
#include "../precision.hpp"
#include "optimizer.hpp"
#include "pathline/engine/checkpoint.hpp"
#include "pathline/engine/distributed.hpp"
#include "pathline/engine/io.hpp"
#include "pathline/engine/random.hpp"
#include "pathline/engine/train.hpp"

namespace pathline {

void Trainer::on_gradient(std::size_t param, const torch::Tensor& grad) {
  GradientBuckets& g = *grads_;
  // Called by autograd with a parameter's gradient as the backward pass produces it (before it is
  // added into .grad): copied (or, over micro-batches, added) into the parameter's slot of the flat
  // buffer; when the last micro-batch completes a bucket, its all-reduce starts while the backward
  // pass goes on with the layers before.
  if (!g.collecting) return;
  torch::NoGradGuard no_grad;
  GradientBuckets::Slot& slot = g.slots[param];
  torch::Tensor target = g.flat.narrow(0, slot.offset, grad.numel());
  if (!slot.written)
    target.copy_(grad.reshape({-1}));
  else
    target.add_(grad.reshape({-1}));
  slot.written = true;
  if (g.last_micro && !slot.counted) {
    slot.counted = true;
    GradientBuckets::Bucket& bucket = g.buckets[slot.bucket];
    if (--bucket.pending == 0) {
      bucket.launched = true;
      dp_->start_sum(g.flat.narrow(0, bucket.begin, bucket.size));
    }
  }
}

torch::Tensor Trainer::average_over_ranks(const torch::Tensor& loss) {
  GradientBuckets& g = *grads_;
  // The buckets the backward pass did not complete (parameters without a gradient this step: zeros),
  // the loss and the stop flag; then the mean of everything, unpacked into the gradients.
  torch::NoGradGuard no_grad;
  g.collecting = false;
  for (std::size_t i = 0; i < g.slots.size(); ++i)
    if (!g.slots[i].written) g.flat.narrow(0, g.slots[i].offset, params_[i].numel()).zero_();
  for (GradientBuckets::Bucket& bucket : g.buckets)
    if (!bucket.launched) dp_->start_sum(g.flat.narrow(0, bucket.begin, bucket.size));
  g.scalars[0] = loss.to(torch::kFloat32);
  g.scalars[1] = stop_requested_ ? 1.0f : 0.0f;
  dp_->start_sum(g.scalars);
  dp_->finish_sums();
  const double world = static_cast<double>(dp_->world().world_size);
  g.flat.div_(world);
  for (std::size_t i = 0; i < params_.size(); ++i) {
    auto& p = params_[i];
    torch::Tensor slot = g.flat.narrow(0, g.slots[i].offset, p.numel()).view(p.sizes());
    if (p.grad().defined())
      p.mutable_grad().copy_(slot);
    else
      p.mutable_grad() = slot.clone();
  }
  stop_agreed_ = g.scalars[1].item<float>() > 0.0f;
  return (g.scalars[0] / world).to(loss.scalar_type());
}

void Trainer::start_collecting() {
  GradientBuckets& g = *grads_;
  g.collecting = true;
  for (GradientBuckets::Slot& slot : g.slots) slot.written = slot.counted = false;
  for (GradientBuckets::Bucket& bucket : g.buckets) bucket.pending = bucket.params, bucket.launched = false;
}

void Trainer::attach(DataParallel& group) {
  GradientBuckets& g = *grads_;
  dp_ = &group;
  const std::int64_t world = group.world().world_size, rank = group.world().rank;
  local_batch_ = batch_ / world + (rank < batch_ % world ? 1 : 0);
  if (local_batch_ < 1)
    throw InputError(fmt::format("train.batch_size = {} is fewer samples than the {} ranks", batch_, world));
  if (accumulate_ > local_batch_)
    throw InputError(
        fmt::format("train.accumulate = {} is more micro-batches than this rank's {} of "
                    "train.batch_size = {} samples",
                    accumulate_, local_batch_, batch_));
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> values;
  for (const auto& p : params_) values.push_back(p.detach());
  group.broadcast(values);  // every rank starts from rank 0's initial weights
  for (std::size_t i = 0; i < ema_.size(); ++i) ema_[i].copy_(params_[i]);

  // The flat buffer in the reverse order of the parameters (the order in which the backward pass
  // produces their gradients), cut into buckets of at most kBucket values.
  constexpr std::int64_t kBucket = 1 << 20;  // 4 MB of float32
  g.slots.assign(params_.size(), GradientBuckets::Slot{});
  std::int64_t offset = 0;
  for (std::size_t k = params_.size(); k-- > 0;) {
    const std::int64_t n = params_[k].numel();
    if (g.buckets.empty() || (g.buckets.back().size > 0 && g.buckets.back().size + n > kBucket))
      g.buckets.push_back(GradientBuckets::Bucket{offset, 0, 0, 0, false});
    g.slots[k].offset = offset;
    g.slots[k].bucket = g.buckets.size() - 1;
    g.buckets.back().size += n;
    ++g.buckets.back().params;
    offset += n;
  }
  g.flat = torch::zeros({offset}, torch::TensorOptions().device(c_.context.device));
  g.scalars = torch::zeros({2}, torch::TensorOptions().device(c_.context.device));
  for (std::size_t i = 0; i < params_.size(); ++i)
    g.hooks.push_back(
        params_[i].register_hook([this, i](const torch::Tensor& grad) { on_gradient(i, grad); }));
}

}  // namespace pathline
