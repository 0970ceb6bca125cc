// [train]: its keys, declared beside the trainer that reads them (train.cpp), and read once.
#include "pathline/engine/settings.hpp"

#include <fmt/format.h>

#include "pathline/engine/train.hpp"

namespace pathline {

namespace {

std::vector<std::string> keys_of(const std::map<std::string, std::string>& map) {
  std::vector<std::string> keys;
  for (const auto& [key, doc] : map) keys.push_back(key);
  return keys;
}

// "a: what a is; b: what b is"
std::string described(const std::map<std::string, std::string>& map) {
  std::string text;
  for (const auto& [key, doc] : map) text += (text.empty() ? "" : "; ") + key + ": " + doc;
  return text;
}

// "auto" and every weighting train.cpp implements.
std::vector<std::string> weighting_choices() {
  std::vector<std::string> choices = {"auto"};
  for (const auto& [name, weighting] : loss_weightings()) choices.push_back(name);
  return choices;
}

}  // namespace

const std::map<std::string, std::string>& TrainSettings::optimizers() {
  static const std::map<std::string, std::string> names = {
      {"adamw", "Adam with decoupled weight decay (Loshchilov & Hutter 2019)"},
      {"adam", "Adam with weight_decay as an L2 term added to the gradient (Kingma & Ba 2015)"},
  };
  return names;
}

const std::map<std::string, std::string>& TrainSettings::lr_schedules() {
  static const std::map<std::string, std::string> names = {
      {"constant", "the peak rate throughout"},
      {"cosine", "cosine decay to 0 at the last step"},
      {"linear", "linear decay to 0 at the last step"},
  };
  return names;
}

const std::vector<ParamSpec>& TrainSettings::specs() {
  static const std::vector<ParamSpec> specs = {
      ParamSpec::integer("steps", 2000, "optimizer steps (0: no training)").at_least(0),
      ParamSpec::integer("batch_size", 1024, "pairs per step").at_least(1),
      ParamSpec::real(
          "max_seconds", 0.0,
          "a time budget: training ends after the step that reaches this many seconds of training "
          "(earlier sessions of a resumed run count), even before `steps`, and the run goes on "
          "to sample; 0: no budget. The learning-rate schedule still runs over `steps`")
          .at_least(0),
      ParamSpec::choice("optimizer", keys_of(optimizers()), "adamw", described(optimizers())),
      ParamSpec::boolean(
          "fused_optimizer", true,
          "update every parameter, and the EMA, in one fused pass over float32 CPU weights (the same "
          "arithmetic as LibTorch's optimizer, which runs about eight tensor operations per parameter "
          "tensor); `false` or other weights: LibTorch's optimizer. See [performance.md](performance.md)"),
      ParamSpec::real("lr", 1e-3, "peak learning rate (after warm-up)").greater_than(0),
      ParamSpec::real_list("betas", {0.9, 0.999}, "Adam's moment decays").size(2).range(0, 1).less_than(1),
      ParamSpec::real("eps", 1e-8, "Adam's epsilon").greater_than(0),
      ParamSpec::real("weight_decay", 0.0, "weight decay (decoupled for `adamw`, L2 for `adam`)").at_least(0),
      ParamSpec::choice("lr_schedule", keys_of(lr_schedules()), "constant",
                        "learning rate after warm-up: " + described(lr_schedules())),
      ParamSpec::integer("warmup_steps", 0, "linear learning-rate warm-up").at_least(0),
      ParamSpec::real("grad_clip", 0.0, "clip the gradient's global norm to this; 0 disables").at_least(0),
      ParamSpec::integer("accumulate", 1,
                         "micro-batches per step: the step's `batch_size` samples go through the model in "
                         "this many parts whose gradients add up (the same update in less memory)")
          .at_least(1),
      ParamSpec::choice("on_nonfinite", {"stop", "skip"}, "stop",
                        "a NaN or infinite loss or gradient: `\"stop\"` before the update (the last "
                        "checkpoint stays good), or `\"skip\"` the batch and count it"),
      ParamSpec::integer("checkpoint_every", 500,
                         "a checkpoint every this many steps, and always at the end; 0: only at the end")
          .at_least(0),
      ParamSpec::integer("keep_checkpoints", 2,
                         "how many of the newest checkpoints stay in `RUN_DIR/checkpoints`")
          .at_least(1),
      ParamSpec::real("ema_decay", 0.999,
                      "exponential moving average of the weights, kept beside the raw ones "
                      "(`model.safetensors` holds them, `model-raw.safetensors` the raw weights) and used "
                      "for sampling unless `[sample] use_ema = false`; 0 disables")
          .range(0, 1)
          .less_than(1),
      ParamSpec::boolean("ema_warmup", true,
                         "average with decay min(`ema_decay`, (1 + step) / (10 + step)), so that a short "
                         "run's average is not mostly its initial weights"),
      ParamSpec::choice(
          "precision", {"fp32", "bf16"}, "fp32",
          "`\"bf16\"`: the forward pass under bfloat16 autocast (matrix products and convolutions in "
          "bfloat16 on CPUs with AVX-512 BF16; norms, the loss and the optimizer in float32)"),
      ParamSpec::choice(
          "loss_weighting", weighting_choices(), "auto",
          "per-sample loss weight w(t): `\"none\"`, `\"sigma_sqrt\"` (1 / sigma_t^2), `\"sigma_squared\"` "
          "(sigma_t^2, which keeps a score target of finite variance), `\"cosmap\"`; `\"auto\"`: "
          "`\"sigma_squared\"` for score prediction, else `\"none\"`"),
      // Classifier-free guidance (Ho & Salimans 2022) trains one network for both fields by
      // replacing labels with the null label at this rate.
      ParamSpec::real("label_dropout", 0.1,
                      "probability that a training label is replaced by the null label (for guidance); "
                      "labelled data only")
          .range(0, 1)
          .less_than(1),
      ParamSpec::integer("log_every", 100, "a `metrics.csv` row every this many steps").at_least(1),
      ParamSpec::integer("progress_every", 0,
                         "when stderr is not a terminal, a progress line every this many steps (0: 5 x "
                         "`log_every`); on a terminal one live line is rewritten in place instead")
          .at_least(0)};
  return specs;
}

TrainSettings TrainSettings::read(const Params& t) {
  TrainSettings s;
  s.steps = t.integer("steps");
  s.batch_size = t.integer("batch_size");
  s.max_seconds = t.real("max_seconds");
  s.optimizer = t.string("optimizer");
  s.fused_optimizer = t.boolean("fused_optimizer");
  s.lr = t.real("lr");
  const auto& betas = t.real_list("betas");
  s.betas = {betas.at(0), betas.at(1)};
  s.eps = t.real("eps");
  s.weight_decay = t.real("weight_decay");
  s.lr_schedule = t.string("lr_schedule");
  s.warmup_steps = t.integer("warmup_steps");
  s.grad_clip = t.real("grad_clip");
  s.accumulate = t.integer("accumulate");
  s.on_nonfinite = t.string("on_nonfinite");
  s.checkpoint_every = t.integer("checkpoint_every");
  s.keep_checkpoints = t.integer("keep_checkpoints");
  s.ema_decay = t.real("ema_decay");
  s.ema_warmup = t.boolean("ema_warmup");
  s.precision = t.string("precision");
  s.loss_weighting = t.string("loss_weighting");
  s.label_dropout = t.real("label_dropout");
  s.log_every = t.integer("log_every");
  s.progress_every = t.integer("progress_every");
  return s;
}

}  // namespace pathline
