// Kind `autoencoder`: maps the data to the latent space the flow runs in, and back. The [autoencoder]
// slot is optional (its default, `identity`, leaves the flow on the data). A trainable autoencoder
// is trained by a pipeline of its own (no [model]); a flow pipeline then names that run.
#pragma once

#include "pathline/component.hpp"
#include "pathline/errors.hpp"

namespace pathline {

// The encoder's output for a batch: a diagonal Gaussian posterior q(z | x). A deterministic encoder
// leaves log_variance undefined.
struct Posterior {
  torch::Tensor mean;          // [B, *latent shape]
  torch::Tensor log_variance;  // [B, *latent shape], or undefined
};

// What one training batch costs: the loss to minimise and its parts, by name, for the log.
struct AutoencoderLoss {
  torch::Tensor loss;                               // a scalar
  std::map<std::string, torch::Tensor> parts = {};  // {"reconstruction", ...}: scalars, detached
};

class PATHLINE_API Autoencoder : public torch::nn::Module {
 public:
  // The latent space's description, from the data's: its shape ({4, 8, 8} for 1 x 28 x 28 images),
  // the data's labels and class names, an unbounded range. The engine hands it to every component
  // built after the autoencoder as BuildContext::flow.
  virtual DataInfo latent(const DataInfo& data) const = 0;
  // x: [B, *data shape] (values in the data's range), condition.labels: [B] or undefined.
  virtual Posterior encode(const torch::Tensor& x, const Condition& condition) = 0;
  // z: [B, *latent shape]; returns [B, *data shape].
  virtual torch::Tensor decode(const torch::Tensor& z, const Condition& condition) = 0;
  // The training loss of a batch of data (reconstruction plus the posterior's regulariser, say).
  // `generator` is the training stream's, for the reparameterised draw z = mean + sigma * eps. Only
  // called when trainable().
  virtual AutoencoderLoss loss(const torch::Tensor& x, const Condition& condition, at::Generator& generator) {
    (void)x, (void)condition, (void)generator;
    throw InputError("this autoencoder has nothing to train");
  }
  // False for an autoencoder with nothing to learn (identity, a fixed transform): flow pipelines use
  // it without a trained run, and it cannot be trained.
  virtual bool trainable() const { return true; }
};

}  // namespace pathline
