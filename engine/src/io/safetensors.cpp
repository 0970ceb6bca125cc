// safetensors: the format of model weights and checkpoints, read strictly (io.hpp).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "file_access.hpp"
#include "pathline/engine/io.hpp"
#include "pathline/errors.hpp"

namespace pathline {
namespace fs = std::filesystem;
using namespace io_detail;

namespace {

// ------------------------------------------------------------------------------------------------
// safetensors

using ordered_json = nlohmann::ordered_json;

constexpr char kMetadataKey[] = "__metadata__";
// The reference implementation refuses headers above 100 MB; so do we, before allocating one.
constexpr std::uint64_t kMaxSafetensorsHeader = 100'000'000;
constexpr std::size_t kMaxDims = 64;

struct SafetensorsDtype {
  const char* name;
  torch::ScalarType type;
};

constexpr SafetensorsDtype kSafetensorsDtypes[] = {
    {"F64", torch::kFloat64},   {"F32", torch::kFloat32},      {"F16", torch::kFloat16},
    {"BF16", torch::kBFloat16}, {"C64", torch::kComplexFloat}, {"I64", torch::kInt64},
    {"I32", torch::kInt32},     {"I16", torch::kInt16},        {"I8", torch::kInt8},
    {"U8", torch::kUInt8},      {"BOOL", torch::kBool},
};
// Dtypes of the format that this LibTorch has no tensor type for.
constexpr const char* kUnsupportedSafetensorsDtypes[] = {"U16", "U32", "U64", "F8_E4M3", "F8_E5M2"};

const char* safetensors_dtype_name(torch::ScalarType type) {
  for (const auto& d : kSafetensorsDtypes)
    if (d.type == type) return d.name;
  return nullptr;
}

std::string safetensors_dtype_list() {
  std::string out;
  for (const auto& d : kSafetensorsDtypes) out += std::string(out.empty() ? "" : ", ") + d.name;
  return out;
}

// One tensor's entry in a header, checked.
struct SafetensorsEntry {
  std::string name;
  torch::ScalarType type;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0, end = 0;
};

// A non-negative JSON integer that fits in int64 (or nothing).
std::optional<std::uint64_t> json_size(const ordered_json& value) {
  if (!value.is_number_unsigned()) return std::nullopt;
  const auto v = value.get<std::uint64_t>();
  if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) return std::nullopt;
  return v;
}

SafetensorsEntry parse_safetensors_entry(const fs::path& file, const std::string& name,
                                         const ordered_json& info, std::uint64_t data_size) {
  const std::string tensor = "tensor " + shown(name);
  if (name.empty()) fail(file, "a tensor has an empty name");
  if (!info.is_object()) fail(file, tensor + ": its entry is not a JSON object");
  SafetensorsEntry entry;
  entry.name = name;

  const auto dtype = info.find("dtype");
  if (dtype == info.end()) fail(file, tensor + ": no \"dtype\"");
  if (!dtype->is_string()) fail(file, tensor + ": \"dtype\" is not a string");
  const auto& dtype_name = dtype->get_ref<const std::string&>();
  bool known = false;
  for (const auto& d : kSafetensorsDtypes) {
    if (dtype_name == d.name) {
      entry.type = d.type;
      known = true;
    }
  }
  if (!known) {
    for (const char* d : kUnsupportedSafetensorsDtypes)
      if (dtype_name == d)
        fail(file, tensor + ": dtype " + shown(dtype_name) + " is not supported by LibTorch");
    fail(file,
         tensor + ": unknown dtype " + shown(dtype_name) + " (known: " + safetensors_dtype_list() + ")");
  }

  const auto shape = info.find("shape");
  if (shape == info.end()) fail(file, tensor + ": no \"shape\"");
  if (!shape->is_array()) fail(file, tensor + ": \"shape\" is not a list");
  if (shape->size() > kMaxDims)
    fail(file, tensor + ": more than " + std::to_string(kMaxDims) + " dimensions");
  for (const auto& dim : *shape) {
    if (dim.is_number_integer() && !dim.is_number_unsigned())
      fail(file,
           tensor + ": negative dimension " + std::to_string(dim.get<std::int64_t>()) + " in its shape");
    const auto size = json_size(dim);
    if (!size) fail(file, tensor + ": \"shape\" holds " + shown(dim.dump()) + ", not a dimension");
    entry.shape.push_back(static_cast<std::int64_t>(*size));
  }
  // The element count; the product of the nonzero dimensions must fit as well, as LibTorch
  // multiplies them all.
  std::uint64_t numel = 1, nonzero = 1;
  for (std::int64_t d : entry.shape) {
    if (d != 0 && (__builtin_mul_overflow(nonzero, static_cast<std::uint64_t>(d), &nonzero) ||
                   nonzero > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())))
      fail(file, tensor + ": shape " + shape_text(entry.shape) + " is too large");
    numel *= static_cast<std::uint64_t>(d);
  }
  const std::uint64_t nbytes = numel * c10::elementSize(entry.type);
  if (nbytes / c10::elementSize(entry.type) != numel)
    fail(file, tensor + ": shape " + shape_text(entry.shape) + " is too large");

  const auto offsets = info.find("data_offsets");
  if (offsets == info.end()) fail(file, tensor + ": no \"data_offsets\"");
  if (!offsets->is_array() || offsets->size() != 2)
    fail(file, tensor + ": \"data_offsets\" is not a list of two offsets");
  for (const auto& o : *offsets) {
    if (o.is_number_integer() && !o.is_number_unsigned())
      fail(file,
           tensor + ": negative offset " + std::to_string(o.get<std::int64_t>()) + " in \"data_offsets\"");
    if (!json_size(o)) fail(file, tensor + ": \"data_offsets\" holds " + shown(o.dump()) + ", not an offset");
  }
  entry.begin = *json_size((*offsets)[0]);
  entry.end = *json_size((*offsets)[1]);
  const std::string range = "[" + std::to_string(entry.begin) + ", " + std::to_string(entry.end) + "]";
  if (entry.end < entry.begin) fail(file, tensor + ": data_offsets " + range + " end before they begin");
  if (entry.end > data_size)
    fail(file, tensor + ": data_offsets " + range + " lie outside the data section (" +
                   std::to_string(data_size) + " bytes)");
  if (entry.end - entry.begin != nbytes)
    fail(file, tensor + ": data_offsets " + range + " span " + std::to_string(entry.end - entry.begin) +
                   " bytes, but shape " + shape_text(entry.shape) + " of " + dtype_name + " needs " +
                   std::to_string(nbytes));
  return entry;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// safetensors

std::string encode_safetensors(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                               const std::map<std::string, std::string>& metadata, const fs::path& file) {
  ordered_json header = ordered_json::object();
  if (!metadata.empty()) {
    ordered_json meta = ordered_json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    header[kMetadataKey] = std::move(meta);
  }
  std::vector<torch::Tensor> contiguous;
  contiguous.reserve(tensors.size());
  std::unordered_set<std::string> names;
  std::uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    const std::string what = "cannot write tensor " + shown(name) + ": ";
    if (name.empty()) fail(file, "cannot write a tensor with an empty name");
    if (name == kMetadataKey) fail(file, what + "the name is reserved for the metadata");
    if (!names.insert(name).second) fail(file, what + "the name is given twice");
    if (!tensor.defined()) fail(file, what + "it is undefined");
    if (tensor.layout() != torch::kStrided) fail(file, what + "it is not a dense tensor");
    const char* dtype = safetensors_dtype_name(tensor.scalar_type());
    if (!dtype)
      fail(file, what + "dtype " + c10::toString(tensor.scalar_type()) + " is not one of " +
                     safetensors_dtype_list());
    torch::Tensor t = tensor.detach().to(torch::kCPU).contiguous();
    const std::uint64_t nbytes = static_cast<std::uint64_t>(t.numel()) * t.element_size();
    ordered_json info = ordered_json::object();
    info["dtype"] = dtype;
    info["shape"] = t.sizes().vec();
    info["data_offsets"] = {offset, offset + nbytes};
    header[name] = std::move(info);
    offset += nbytes;
    contiguous.push_back(std::move(t));
  }
  std::string text;
  try {
    text = header.dump(-1, ' ', false, nlohmann::json::error_handler_t::strict);
  } catch (const nlohmann::json::exception&) {
    fail(file, "cannot write: a tensor name or metadata text is not valid UTF-8");
  }
  // The data section starts at a multiple of 8 bytes, as in the reference implementation.
  text.append((8 - text.size() % 8) % 8, ' ');

  std::string bytes;
  bytes.reserve(8 + text.size() + offset);
  for (int i = 0; i < 8; ++i)
    bytes += static_cast<char>((static_cast<std::uint64_t>(text.size()) >> (8 * i)) & 0xff);
  bytes += text;
  for (const auto& t : contiguous)
    bytes.append(static_cast<const char*>(t.data_ptr()),
                 static_cast<std::size_t>(t.numel()) * t.element_size());
  return bytes;
}

void write_safetensors(const fs::path& file,
                       const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  write_file_atomic(file, encode_safetensors(tensors, metadata, file));
}

namespace {

// The one reader behind read_safetensors (a file) and decode_safetensors (bytes in memory): `in`
// gives size() and read(into, n); `file` names the source in errors.
template <class Source>
std::vector<std::pair<std::string, torch::Tensor>> read_safetensors_from(
    Source& in, const fs::path& file, std::map<std::string, std::string>* metadata) {
  if (metadata) metadata->clear();
  const std::uint64_t size = in.size();
  if (size < 8)
    fail(file,
         "not a safetensors file: " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  std::uint8_t prefix[8];
  in.read(prefix, 8);
  std::uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= std::uint64_t{prefix[i]} << (8 * i);
  if (header_len > size - 8)
    fail(file, "header length " + std::to_string(header_len) + " runs beyond the end of the file (" +
                   std::to_string(size) + " bytes)");
  if (header_len > kMaxSafetensorsHeader)
    fail(file, "header length " + std::to_string(header_len) + " is over the limit of " +
                   std::to_string(kMaxSafetensorsHeader) + " bytes");
  std::string text(static_cast<std::size_t>(header_len), '\0');
  in.read(text.data(), text.size());
  const std::uint64_t data_size = size - 8 - header_len;

  // Parse, noting any key given twice in one object (the parser would keep the last silently).
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  ordered_json header;
  try {
    header = ordered_json::parse(text, [&](int, ordered_json::parse_event_t event, ordered_json& parsed) {
      if (event == ordered_json::parse_event_t::object_start) {
        open_objects.emplace_back();
      } else if (event == ordered_json::parse_event_t::object_end) {
        if (!open_objects.empty()) open_objects.pop_back();
      } else if (event == ordered_json::parse_event_t::key && !open_objects.empty() && parsed.is_string()) {
        if (!open_objects.back().insert(parsed.template get<std::string>()).second && duplicate.empty())
          duplicate = parsed.template get<std::string>();
      }
      return true;
    });
  } catch (const nlohmann::json::exception& e) {
    std::string why = e.what();
    if (const auto close = why.find("] "); why.rfind("[json.exception", 0) == 0 && close != std::string::npos)
      why.erase(0, close + 2);
    for (char& c : why)
      if (c == '\n' || c == '\r') c = ' ';
    fail(file, "header is not valid JSON: " + why);
  }
  if (!header.is_object()) fail(file, "header is not a JSON object");
  if (!duplicate.empty()) fail(file, "header gives the key " + shown(duplicate) + " twice");

  std::vector<SafetensorsEntry> entries;
  for (const auto& [name, info] : header.items()) {
    if (name == kMetadataKey) {
      if (!info.is_object()) fail(file, "\"__metadata__\" is not a JSON object");
      for (const auto& [key, value] : info.items()) {
        if (!value.is_string()) fail(file, "\"__metadata__\" value of " + shown(key) + " is not a string");
        if (metadata) (*metadata)[key] = value.template get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_safetensors_entry(file, name, info, data_size));
  }

  // The tensors must tile the data section: sorted by offset, each begins where the last ended.
  std::stable_sort(entries.begin(), entries.end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t covered = 0;
  const SafetensorsEntry* previous = nullptr;
  for (const auto& e : entries) {
    const std::string at =
        "tensor " + shown(e.name) + " begins at byte " + std::to_string(e.begin) + " of the data section";
    if (e.begin < covered)
      fail(file, at + ", inside tensor " + shown(previous->name) + " (which ends at " +
                     std::to_string(covered) + "): overlapping tensors");
    if (e.begin > covered)
      fail(file, at + ", leaving bytes " + std::to_string(covered) + " to " + std::to_string(e.begin) +
                     " unused: tensors must cover the data section contiguously");
    covered = e.end;
    if (e.end > e.begin) previous = &e;
  }
  if (covered != data_size)
    fail(file, "the tensors cover " + std::to_string(covered) + " of the data section's " +
                   std::to_string(data_size) + " bytes: tensors must cover the data section exactly");

  std::vector<std::pair<std::string, torch::Tensor>> out;
  out.reserve(entries.size());
  for (const auto& e : entries) {
    torch::Tensor t = torch::empty(e.shape, torch::TensorOptions().dtype(e.type));
    in.read(t.data_ptr(), static_cast<std::size_t>(e.end - e.begin));
    if (e.type == torch::kBool) {
      const auto* p = static_cast<const std::uint8_t*>(t.data_ptr());
      for (std::uint64_t i = 0; i < e.end - e.begin; ++i)
        if (p[i] > 1)
          fail(file, "tensor " + shown(e.name) + ": BOOL byte " + std::to_string(i) + " is " +
                         std::to_string(p[i]) + ", not 0 or 1");
    }
    out.emplace_back(e.name, std::move(t));
  }
  return out;
}

}  // namespace

std::vector<std::pair<std::string, torch::Tensor>> read_safetensors(
    const fs::path& file, std::map<std::string, std::string>* metadata) {
  InFile in(file);
  return read_safetensors_from(in, file, metadata);
}

std::vector<std::pair<std::string, torch::Tensor>> decode_safetensors(
    const std::string& bytes, const fs::path& what, std::map<std::string, std::string>* metadata) {
  InBytes in(bytes, what);
  return read_safetensors_from(in, what, metadata);
}

}  // namespace pathline
