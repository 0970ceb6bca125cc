#include "pathline/engine/checkpoint.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <set>

#include "pathline/engine/io.hpp"

namespace pathline {

namespace fs = std::filesystem;

std::map<std::string, std::string> training_keys(const PipelineConfig& config) {
  // The slots training reads (slots.hpp): their types and parameters decide what it computes.
  static const std::set<std::string> slots = [] {
    std::set<std::string> names;
    for (const SlotSpec& slot : pipeline_slots())
      if (!slot.many && slot.read_by(kTrainPhase)) names.insert(slot.table);
    return names;
  }();
  // [train] keys that change how training is reported, saved or guarded, not what it computes.
  // max_seconds decides where training ends, not what a step computes: a resumed run may get
  // more time.
  static const std::set<std::string> free_train_keys = {
      "log_every", "progress_every", "checkpoint_every", "keep_checkpoints", "on_nonfinite", "max_seconds"};
  std::map<std::string, std::string> keys;
  for (const auto& [table, component] : config.components) {
    if (!slots.count(table)) continue;
    // The identity autoencoder is what a pipeline without [autoencoder] has: runs from before the
    // slot existed keep their keys.
    if (table == "autoencoder" && component.type == "identity") continue;
    // Flow matching, likewise, is what every run before the [objective] slot trained with.
    if (table == "objective" && component.type == "flow_matching" && component.order.empty()) continue;
    keys[table + ".type"] = component.type;
    for (const auto& [key, value] : component.entry.values()) keys[table + "." + key] = format_value(value);
    for (const auto& key : component.order) keys[table + "." + key] = format_value(component.params.at(key));
  }
  const Params& run = config.table("run");
  for (const char* key : {"seed", "device"}) keys[std::string("run.") + key] = format_value(run.at(key));
  const Params& train = config.table("train");
  for (const auto& spec : engine_table_specs("train"))
    if (!free_train_keys.count(spec.name) && train.contains(spec.name))
      keys["train." + spec.name] = format_value(train.at(spec.name));
  return keys;
}

std::string training_keys_text(const std::map<std::string, std::string>& keys) {
  std::string text;
  for (const auto& [key, value] : keys) text += key + " = " + value + "\n";
  return text;
}

std::string config_hash(const std::map<std::string, std::string>& keys) {
  // FNV-1a, 64 bits: a fingerprint of the text, not a defence against tampering.
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char ch : training_keys_text(keys)) h = (h ^ ch) * 0x100000001b3ULL;
  return fmt::format("{:016x}", h);
}

std::vector<std::string> changed_keys(const std::map<std::string, std::string>& before,
                                      const std::map<std::string, std::string>& after) {
  std::vector<std::string> out;
  std::set<std::string> names;
  for (const auto& kv : before) names.insert(kv.first);
  for (const auto& kv : after) names.insert(kv.first);
  for (const auto& name : names) {
    auto b = before.find(name), a = after.find(name);
    const std::string was = b == before.end() ? "(absent)" : b->second;
    const std::string now = a == after.end() ? "(absent)" : a->second;
    if (was != now) out.push_back(fmt::format("{} ({} -> {})", name, was, now));
  }
  return out;
}

// ------------------------------------------------------------------------------------------------
// The frame

namespace {

// Format 2 (a NamedState); format 1 framed a LibTorch archive the same way.
constexpr char kMagic[17] = "PATHLINE-CKPT-2\n";
constexpr char kMagicV1[17] = "PATHLINE-CKPT-1\n";
constexpr std::size_t kMagicLen = 16, kHeaderLen = kMagicLen + 8 + 8 + 4 + 4;

std::uint32_t crc32_of(const void* data, std::size_t n) {
  uLong crc = ::crc32(0L, Z_NULL, 0);
  const auto* p = static_cast<const Bytef*>(data);
  while (n > 0) {  // zlib takes uInt lengths
    const uInt chunk = static_cast<uInt>(std::min<std::size_t>(n, 1u << 30));
    crc = ::crc32(crc, p, chunk);
    p += chunk;
    n -= chunk;
  }
  return static_cast<std::uint32_t>(crc);
}

void put(std::string& out, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

std::uint64_t get(const std::string& in, std::size_t at, int bytes) {
  std::uint64_t v = 0;
  for (int i = 0; i < bytes; ++i)
    v |= static_cast<std::uint64_t>(static_cast<unsigned char>(in[at + i])) << (8 * i);
  return v;
}

[[noreturn]] void corrupt(const fs::path& file, const std::string& what) {
  throw InputError(file.string() + ": corrupt checkpoint: " + what);
}

// PATHLINE_FAULT=kill-in-checkpoint:N (a testing aid): the N-th checkpoint this process writes is
// cut off half-way through its temporary file by SIGKILL, as a power cut or an OOM kill would.
int fault_checkpoint() {
  const char* fault = std::getenv("PATHLINE_FAULT");
  const std::string prefix = "kill-in-checkpoint:";
  if (!fault || std::string(fault).rfind(prefix, 0) != 0) return -1;
  return std::atoi(fault + prefix.size());
}

}  // namespace

std::string frame_checkpoint(std::int64_t step, const std::string& payload) {
  std::string out(kMagic, kMagicLen);
  put(out, static_cast<std::uint64_t>(step), 8);
  put(out, payload.size(), 8);
  put(out, crc32_of(payload.data(), payload.size()), 4);
  put(out, crc32_of(out.data(), out.size()), 4);
  out.reserve(out.size() + payload.size());
  out += payload;
  return out;
}

Checkpoint read_checkpoint(const fs::path& file) {
  std::string bytes = read_file(file);
  if (bytes.size() < kHeaderLen)
    corrupt(file,
            fmt::format("truncated ({} bytes, shorter than its {}-byte header)", bytes.size(), kHeaderLen));
  const bool v2 = bytes.compare(0, kMagicLen, kMagic, kMagicLen) == 0;
  if (!v2 && bytes.compare(0, kMagicLen, kMagicV1, kMagicLen) != 0)
    corrupt(file, "not a Pathline checkpoint (bad magic)");
  if (get(bytes, kHeaderLen - 4, 4) != crc32_of(bytes.data(), kHeaderLen - 4))
    corrupt(file, "header checksum mismatch");
  const std::uint64_t length = get(bytes, kMagicLen + 8, 8);
  if (bytes.size() - kHeaderLen != length)
    corrupt(file, fmt::format("{} ({} payload bytes, the header says {})",
                              bytes.size() - kHeaderLen < length ? "truncated" : "trailing bytes",
                              bytes.size() - kHeaderLen, length));
  if (get(bytes, kMagicLen + 16, 4) != crc32_of(bytes.data() + kHeaderLen, length))
    corrupt(file, "checksum mismatch (the data was altered or partly written)");
  Checkpoint c;
  c.file = file;
  c.step = static_cast<std::int64_t>(get(bytes, kMagicLen, 8));
  c.format = v2 ? 2 : 1;
  c.payload = bytes.substr(kHeaderLen);
  return c;
}

// ------------------------------------------------------------------------------------------------
// NamedState

const torch::Tensor* NamedState::find(const std::string& name) const {
  for (const auto& [key, tensor] : tensors)
    if (key == name) return &tensor;
  return nullptr;
}

const torch::Tensor& NamedState::at(const std::string& name, const std::string& what) const {
  if (const torch::Tensor* t = find(name)) return *t;
  throw InputError(fmt::format("{} lacks '{}'", what, name));
}

std::vector<std::pair<std::string, torch::Tensor>> NamedState::with_prefix(const std::string& prefix) const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& [key, tensor] : tensors)
    if (key.rfind(prefix, 0) == 0) out.emplace_back(key.substr(prefix.size()), tensor);
  return out;
}

std::string NamedState::encode(const fs::path& file) const {
  return encode_safetensors(tensors, texts, file);
}

NamedState NamedState::decode(const std::string& bytes, const fs::path& file) {
  NamedState state;
  state.tensors = decode_safetensors(bytes, file, &state.texts);
  return state;
}

// ------------------------------------------------------------------------------------------------
// The store

CheckpointStore::CheckpointStore(fs::path run_dir, std::int64_t keep)
    : folder_(std::move(run_dir) / "checkpoints"), keep_(std::max<std::int64_t>(1, keep)) {}

std::string CheckpointStore::file_name(std::int64_t step) { return fmt::format("step-{:08d}.ckpt", step); }

fs::path CheckpointStore::save(std::int64_t step, const std::string& payload) {
  std::error_code ec;
  fs::create_directories(folder_, ec);
  if (ec) throw InputError(folder_.string() + ": cannot create the checkpoint folder: " + ec.message());
  const fs::path file = folder_ / file_name(step);
  const std::string bytes = frame_checkpoint(step, payload);
  static const int fault = fault_checkpoint();
  if (++writes_ == fault) {
    const fs::path tmp = folder_ / fmt::format(".{}.tmp.{}.0", file.filename().string(), ::getpid());
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd >= 0) {
      [[maybe_unused]] ssize_t n = ::write(fd, bytes.data(), bytes.size() / 2);
      ::fsync(fd);
    }
    std::raise(SIGKILL);
  }
  write_file_atomic(file, bytes);
  // Only now that the new one is safe: drop the oldest beyond `keep`.
  auto all = list();
  for (std::size_t i = static_cast<std::size_t>(keep_); i < all.size(); ++i) fs::remove(all[i].second, ec);
  return file;
}

std::vector<std::pair<std::int64_t, fs::path>> CheckpointStore::list() const {
  std::vector<std::pair<std::int64_t, fs::path>> out;
  std::error_code ec;
  if (!fs::is_directory(folder_, ec)) return out;
  for (const auto& entry : fs::directory_iterator(folder_, ec)) {
    const std::string name = entry.path().filename().string();
    // step-<digits>.ckpt exactly
    if (name.size() < 11 || name.rfind("step-", 0) != 0 || name.substr(name.size() - 5) != ".ckpt") continue;
    const std::string digits = name.substr(5, name.size() - 10);
    if (digits.empty() || digits.size() > 18 ||
        !std::all_of(digits.begin(), digits.end(), [](char ch) { return ch >= '0' && ch <= '9'; }))
      continue;
    out.emplace_back(std::stoll(digits), entry.path());
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  return out;
}

std::optional<Checkpoint> CheckpointStore::latest_good(
    const std::function<void(const std::string&)>& log) const {
  std::vector<std::string> skipped;
  for (const auto& [step, file] : list()) {
    try {
      Checkpoint c = read_checkpoint(file);
      if (c.step != step) corrupt(file, fmt::format("its header says step {}", c.step));
      if (log && !skipped.empty())
        log(fmt::format("resume: falling back to the previous good checkpoint {}", file.string()));
      return c;
    } catch (const InputError& e) {
      // Out of the way (a later write of the same step must not meet it), but kept for inspection.
      std::error_code ec;
      fs::path aside = file;
      aside += ".corrupt";
      fs::rename(file, aside, ec);
      if (log)
        log(fmt::format("resume: {}; skipped{}", e.what(),
                        ec ? "" : " (renamed to " + aside.filename().string() + ")"));
      skipped.push_back(file.string());
    }
  }
  return std::nullopt;
}

void CheckpointStore::remove_temporaries() const {
  std::error_code ec;
  if (!fs::is_directory(folder_, ec)) return;
  std::vector<fs::path> stale;
  for (const auto& entry : fs::directory_iterator(folder_, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(".step-", 0) == 0 && name.find(".ckpt.tmp.") != std::string::npos)
      stale.push_back(entry.path());
  }
  for (const auto& p : stale) fs::remove(p, ec);
}

}  // namespace pathline
