// Checkpoints: the training state in RUN_DIR/checkpoints/step-<step>.ckpt, framed with a checksum,
// written atomically, the newest `keep` kept; and the config keys that decide what training computes.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "pathline/engine/config.hpp"

namespace pathline {

// The resolved config's training-relevant keys, "table.key" -> value as TOML writes it: every
// component slot that training uses (dataset, source, path, coupling, time_sampler, parameterization,
// model), [run] seed and device, and [train] except the keys that only decide how training is
// logged, checkpointed or reacts to bad numbers. Sampling, evaluation and logging keys are free to
// change between a checkpoint and its resume.
PATHLINE_API std::map<std::string, std::string> training_keys(const PipelineConfig& config);
// The same as text, one "key = value" per line, and a 64-bit hash of that text in hex.
PATHLINE_API std::string training_keys_text(const std::map<std::string, std::string>& keys);
PATHLINE_API std::string config_hash(const std::map<std::string, std::string>& keys);
// "train.lr (0.001 -> 0.002)" for every key whose value differs, is new or is gone.
PATHLINE_API std::vector<std::string> changed_keys(const std::map<std::string, std::string>& before,
                                                   const std::map<std::string, std::string>& after);

// A training state as plain data: named tensors and named texts. A checkpoint's payload is one
// safetensors blob of it (the texts in its header's metadata): nothing pickled, nothing executed
// when read, and any name a module gives its parts reads back.
struct PATHLINE_API NamedState {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  std::map<std::string, std::string> texts;

  void add(std::string name, torch::Tensor tensor) {
    tensors.emplace_back(std::move(name), std::move(tensor));
  }
  // The tensor of that name, or nullptr.
  const torch::Tensor* find(const std::string& name) const;
  // The tensor of that name; InputError "<what> lacks '<name>'" without it.
  const torch::Tensor& at(const std::string& name, const std::string& what) const;
  // The tensors whose names start with `prefix`, the prefix removed, in order.
  std::vector<std::pair<std::string, torch::Tensor>> with_prefix(const std::string& prefix) const;
  // The safetensors bytes; decode checks them as read_safetensors checks a file (`file` names them).
  std::string encode(const std::filesystem::path& file) const;
  static NamedState decode(const std::string& bytes, const std::filesystem::path& file);
};

// One verified checkpoint: its file, its step and the payload: format 2, a NamedState's bytes;
// format 1 (written before Pathline 0.2), a LibTorch archive, still read for resuming old runs.
struct Checkpoint {
  std::filesystem::path file;
  std::int64_t step = 0;
  int format = 2;
  std::string payload;
};

// The frame around a payload: a 16-byte magic naming the format, the step, the payload's length
// and its CRC-32, and the CRC-32 of those fields. A truncated, extended or altered file fails
// verification. Writes format 2.
PATHLINE_API std::string frame_checkpoint(std::int64_t step, const std::string& payload);
// Reads and verifies a checkpoint; InputError "FILE: corrupt checkpoint: <what>" otherwise.
PATHLINE_API Checkpoint read_checkpoint(const std::filesystem::path& file);

// The training-relevant keys a checkpoint was written with (InputError naming its file when it
// does not hold them: not a training checkpoint of this version).
PATHLINE_API std::map<std::string, std::string> checkpoint_training_keys(const Checkpoint& checkpoint);

class PATHLINE_API CheckpointStore {
 public:
  CheckpointStore(std::filesystem::path run_dir, std::int64_t keep);
  const std::filesystem::path& folder() const { return folder_; }
  static std::string file_name(std::int64_t step);

  // Writes step-<step>.ckpt atomically (temporary file, fsync, rename, folder fsync), then removes
  // the oldest beyond `keep`. An existing good checkpoint is only ever replaced by a complete one.
  std::filesystem::path save(std::int64_t step, const std::string& payload);
  // Every step-*.ckpt, newest (highest step) first.
  std::vector<std::pair<std::int64_t, std::filesystem::path>> list() const;
  // The newest checkpoint that verifies. Each newer one that does not is renamed to *.corrupt (kept
  // for inspection, out of the way of later writes) and reported through `log`, with the fallback.
  std::optional<Checkpoint> latest_good(const std::function<void(const std::string&)>& log) const;
  // Removes the temporaries of writes that a killed process left behind.
  void remove_temporaries() const;

 private:
  std::filesystem::path folder_;
  std::int64_t keep_;
  int writes_ = 0;
};

}  // namespace pathline
