// What the image data sets of plugin "datasets-image" share: the images decoded once and kept in
// memory as bytes, drawn in epoch order, with the epoch's order and position as checkpoint state.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "pathline/plugin.hpp"

namespace pathline_plugins::image_data {

// A data set of images held in memory as uint8 [N, C, H, W] (0 ... 255), with int64 [N] labels or
// none. Batches go through the images in epoch order, as training loops over an image data set
// usually do: at the start of each epoch a permutation of all N is drawn from the generator, then
// batches are consecutive slices of it, a batch that runs past the end finishing with the first
// images of the next epoch. Every image is seen once per epoch (a uniform draw with replacement
// would miss about a third of them each epoch), and the order, the position and the epoch count are
// the state that state() hands a checkpoint. Pixels come out scaled to [-1, 1] as float32.
class EpochImages : public pathline::Dataset {
 public:
  // `who` names the component in messages; `flip` mirrors each image left-right with probability
  // 1/2, decided per drawn image from the generator.
  EpochImages(std::string who, torch::Tensor images, torch::Tensor labels, pathline::DataInfo info, bool flip)
      : who_(std::move(who)),
        images_(std::move(images)),
        labels_(std::move(labels)),
        info_(std::move(info)),
        flip_(flip) {
    info_.min_value = -1.0;
    info_.max_value = 1.0;
  }

  pathline::DataInfo info() const override { return info_; }

  std::int64_t size() const { return images_.size(0); }

  pathline::Batch sample(std::int64_t n, at::Generator& gen) override {
    if (n < 0) throw pathline::InputError(who_ + ": cannot draw " + std::to_string(n) + " images");
    const torch::Tensor index = next_indices(n, gen);
    torch::Tensor x = images_.index_select(0, index).to(torch::kFloat32).div_(127.5).sub_(1.0);
    if (flip_ && n > 0) {
      const torch::Tensor mirrored =
          torch::rand({n}, gen, torch::TensorOptions().dtype(torch::kFloat32)).lt(0.5).view({n, 1, 1, 1});
      x = torch::where(mirrored, x.flip({3}), x);
    }
    torch::Tensor labels = labels_.defined() ? labels_.index_select(0, index) : torch::Tensor();
    return {x, labels};
  }

  // "order": the current epoch's permutation (int64 [N]; empty before the first draw), "position":
  // how many of it were drawn, "epoch": how many epochs were started.
  State state() const override {
    return {{"order", order_.defined() ? order_.clone() : torch::empty({0}, torch::kInt64)},
            {"position", torch::tensor(position_, torch::kInt64)},
            {"epoch", torch::tensor(epoch_, torch::kInt64)}};
  }

  void set_state(const State& state) override {
    const torch::Tensor order = entry(state, "order");
    const std::int64_t position = scalar(state, "position"), epoch = scalar(state, "epoch");
    const std::int64_t n = size();
    if (order.dim() != 1 || (order.numel() != 0 && order.numel() != n))
      mismatch("an epoch order of " + std::to_string(order.numel()) + " images, this data set has " +
               std::to_string(n));
    const torch::Tensor order64 = order.to(torch::kInt64).contiguous();
    // A permutation of 0 ... N-1, or the sampler would index past the images.
    if (order64.numel() != 0 && !torch::equal(std::get<0>(order64.sort()), torch::arange(n, torch::kInt64)))
      mismatch("its epoch order is not a permutation of the " + std::to_string(n) + " images");
    if (position < 0 || position > order64.numel() || epoch < 0 || (order64.numel() == 0) != (epoch == 0))
      mismatch("position " + std::to_string(position) + " in epoch " + std::to_string(epoch) +
               " does not fit an order of " + std::to_string(order64.numel()));
    order_ = order64.numel() == 0 ? torch::Tensor() : order64;
    position_ = position;
    epoch_ = epoch;
  }

 private:
  // The next n positions of the epoch order, starting new epochs as needed.
  torch::Tensor next_indices(std::int64_t n, at::Generator& gen) {
    const std::int64_t total = size();
    if (total == 0) throw pathline::InputError(who_ + ": no images to draw from");
    std::vector<torch::Tensor> parts;
    for (std::int64_t taken = 0; taken < n;) {
      if (!order_.defined() || position_ == total) {
        order_ = torch::randperm(total, gen, torch::TensorOptions().dtype(torch::kInt64));
        position_ = 0;
        ++epoch_;
      }
      const std::int64_t take = std::min(n - taken, total - position_);
      parts.push_back(order_.narrow(0, position_, take));
      position_ += take;
      taken += take;
    }
    return parts.empty() ? torch::empty({0}, torch::kInt64) : torch::cat(parts);
  }

  [[noreturn]] void mismatch(const std::string& why) const {
    throw pathline::InputError(who_ + ": the saved data-set state does not fit this data set (" + why +
                               "); was it saved with other images, split or limit?");
  }
  torch::Tensor entry(const State& state, const std::string& key) const {
    auto it = state.find(key);
    if (it == state.end() || !it->second.defined())
      mismatch("it has no '" + key + "'; expected order, position and epoch");
    return it->second;
  }
  std::int64_t scalar(const State& state, const std::string& key) const {
    const torch::Tensor t = entry(state, key);
    if (t.numel() != 1) mismatch("'" + key + "' is not one number");
    return t.item<std::int64_t>();
  }

  std::string who_;
  torch::Tensor images_;  // uint8 [N, C, H, W]
  torch::Tensor labels_;  // int64 [N], or undefined
  pathline::DataInfo info_;
  bool flip_;
  torch::Tensor order_;  // undefined until the first draw
  std::int64_t position_ = 0;
  std::int64_t epoch_ = 0;
};

// Registration of each component, one per source file; the plugin's descriptor calls both.
void register_fashion_mnist(pathline::Registrar& registrar);
void register_image_folder(pathline::Registrar& registrar);

}  // namespace pathline_plugins::image_data
