// Tests of the safetensors reader and writer in engine/src/io/files.cpp, and of named_weights /
// load_named_weights, which move a module's parameters and buffers in and out of such files.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "pathline/engine/io.hpp"
#include "pathline/errors.hpp"
#include "support/support.hpp"

namespace fs = std::filesystem;
using pathline::InputError;
using Named = std::vector<std::pair<std::string, torch::Tensor>>;

namespace {

// A fresh, empty folder per test, removed afterwards.
class SafetensorsTest : public pathline::testing::FolderTest {};

// Whole files as bytes (the support helpers read and write in binary mode).
using pathline::testing::read_text;
using pathline::testing::write_text;

using pathline::testing::input_error_of;

// The 8-byte little-endian length, then the header text as given (no padding), then the data.
std::string make_safetensors(const std::string& header, const std::string& data) {
  std::string out;
  for (int i = 0; i < 8; ++i)
    out += static_cast<char>((static_cast<std::uint64_t>(header.size()) >> (8 * i)) & 0xff);
  return out + header + data;
}

// A tensor's bytes, C order, as lowercase hex.
std::string hex_of(const torch::Tensor& tensor) {
  const torch::Tensor t = tensor.contiguous();
  const auto* p = static_cast<const unsigned char*>(t.data_ptr());
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (std::int64_t i = 0; i < t.numel() * static_cast<std::int64_t>(t.element_size()); ++i) {
    out += digits[p[i] >> 4];
    out += digits[p[i] & 15];
  }
  return out;
}

bool same_bytes(const torch::Tensor& a, const torch::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() && hex_of(a) == hex_of(b);
}

// One tensor of every dtype the format names, in assorted shapes: a 0-dim scalar, empty tensors, a
// non-contiguous view, and special float values.
Named assorted_tensors() {
  torch::manual_seed(7);
  const float inf = std::numeric_limits<float>::infinity();
  Named t;
  t.emplace_back("f32.matrix", torch::randn({3, 4}) * 100);
  t.emplace_back("f32.special", torch::tensor({0.f, -0.f, inf, -inf, std::numeric_limits<float>::quiet_NaN(),
                                               1e-40f, 3.4e38f}));
  t.emplace_back("f32.transposed", torch::arange(6, torch::kFloat32).reshape({2, 3}).t());
  t.emplace_back("f64.scalar", torch::tensor(-2.75e-300, torch::kFloat64));
  t.emplace_back("f16.vector", (torch::randn({5}) * 10).to(torch::kFloat16));
  t.emplace_back("bf16.matrix", torch::randn({2, 3}).to(torch::kBFloat16));
  t.emplace_back("c64.vector", torch::complex(torch::randn({3}), torch::randn({3})));
  t.emplace_back("i64.empty", torch::zeros({0}, torch::kInt64));
  t.emplace_back("i64.big",
                 torch::tensor({std::int64_t{1} << 40, -(std::int64_t{1} << 50), std::int64_t{3}}));
  t.emplace_back("i32.empty3d", torch::zeros({2, 0, 3}, torch::kInt32));
  t.emplace_back("i32.values", torch::tensor({-7, 0, 2147483647}, torch::kInt32));
  t.emplace_back("i16.values", torch::tensor({-32768, 1, 32767}, torch::kInt16));
  t.emplace_back("i8.values", torch::tensor({-128, -1, 127}, torch::kInt8));
  t.emplace_back("u8.image", torch::randint(0, 256, {2, 2, 3}, torch::kUInt8));
  t.emplace_back("bool.mask", torch::tensor({true, false, false, true}).reshape({2, 2}));
  t.emplace_back("u8.scalar", torch::tensor(200, torch::kUInt8));
  return t;
}

// ------------------------------------------------------------------------------------------------
// Writing and reading

TEST_F(SafetensorsTest, RoundTripIsBitExactForEveryDtypeAndShape) {
  const Named tensors = assorted_tensors();
  const std::map<std::string, std::string> metadata = {{"pathline.model", "mlp"},
                                                       {"pathline.weights", "ema"}};
  const fs::path file = path("model.safetensors");
  pathline::write_safetensors(file, tensors, metadata);

  std::map<std::string, std::string> meta_back = {{"stale", "entry"}};
  const Named back = pathline::read_safetensors(file, &meta_back);
  EXPECT_EQ(meta_back, metadata);
  ASSERT_EQ(back.size(), tensors.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    SCOPED_TRACE(tensors[i].first);
    EXPECT_EQ(back[i].first, tensors[i].first);  // written in the order given, read in offset order
    EXPECT_EQ(back[i].second.scalar_type(), tensors[i].second.scalar_type());
    EXPECT_EQ(back[i].second.sizes(), tensors[i].second.sizes());
    EXPECT_EQ(back[i].second.dim(), tensors[i].second.dim());
    EXPECT_EQ(hex_of(back[i].second), hex_of(tensors[i].second));
  }
  EXPECT_EQ(back[3].second.dim(), 0);  // the scalar stays 0-dim

  // No tensors and no metadata is a valid file too.
  pathline::write_safetensors(path("none.safetensors"), {});
  EXPECT_TRUE(pathline::read_safetensors(path("none.safetensors"), &meta_back).empty());
  EXPECT_TRUE(meta_back.empty());
  EXPECT_EQ(read_text(path("none.safetensors")), make_safetensors("{}      ", ""));
}

TEST_F(SafetensorsTest, LayoutIsTheReferenceOne) {
  const fs::path file = path("layout.safetensors");
  pathline::write_safetensors(
      file, {{"b", torch::tensor({1.5f, -2.f})}, {"a", torch::tensor({{1, 2}, {3, 258}}, torch::kInt16)}},
      {{"k", "v"}});
  const std::string bytes = read_text(file);
  const std::string json =
      "{\"__metadata__\":{\"k\":\"v\"},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
      "\"a\":{\"dtype\":\"I16\",\"shape\":[2,2],\"data_offsets\":[8,16]}}";
  const std::size_t n = (json.size() + 7) / 8 * 8;
  ASSERT_EQ(bytes.size(), 8 + n + 16);
  std::uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= std::uint64_t{static_cast<unsigned char>(bytes[i])} << (8 * i);
  EXPECT_EQ(header_len, n);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes.substr(8, n), json + std::string(n - json.size(), ' '));
  // The data: 1.5f and -2.f little-endian, then the int16 values in C order.
  const std::string data = bytes.substr(8 + n);
  float floats[2];
  std::memcpy(floats, data.data(), 8);
  EXPECT_EQ(floats[0], 1.5f);
  EXPECT_EQ(floats[1], -2.f);
  EXPECT_EQ(data.substr(8), std::string("\x01\x00\x02\x00\x03\x00\x02\x01", 8));
}

TEST_F(SafetensorsTest, ReadsTensorsInOrderOfTheirDataOffsets) {
  // The header lists "b" first, but "a" holds the first bytes; an empty tensor may sit anywhere.
  const std::string header =
      "{\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[1,3]},"
      "\"e\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[3,3]},"
      "\"a\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,1]}}  ";
  write_text(path("o.safetensors"), make_safetensors(header, "\x07\x08\x09"));
  std::map<std::string, std::string> meta = {{"x", "y"}};
  const Named back = pathline::read_safetensors(path("o.safetensors"), &meta);
  EXPECT_TRUE(meta.empty());
  ASSERT_EQ(back.size(), 3u);
  EXPECT_EQ(back[0].first, "a");
  EXPECT_EQ(back[0].second.dim(), 0);
  EXPECT_EQ(back[0].second.item<std::uint8_t>(), 7);
  EXPECT_EQ(back[1].first, "b");
  EXPECT_TRUE(torch::equal(back[1].second, torch::tensor({8, 9}, torch::kUInt8)));
  EXPECT_EQ(back[2].first, "e");
  EXPECT_EQ(back[2].second.sizes(), (std::vector<std::int64_t>{0, 5}));
}

TEST_F(SafetensorsTest, WriterRejectsBadNamesAndTensorsAndWritesNothing) {
  const fs::path file = path("w.safetensors");
  const std::string at = file.string() + ": ";
  const torch::Tensor one = torch::ones({2});
  EXPECT_EQ(input_error_of([&] {
              pathline::write_safetensors(file, {{"a", one}, {"", one}});
            }),
            at + "cannot write a tensor with an empty name");
  EXPECT_EQ(input_error_of([&] {
              pathline::write_safetensors(file, {{"a", one}, {"b", one}, {"a", one}});
            }),
            at + "cannot write tensor 'a': the name is given twice");
  EXPECT_EQ(input_error_of([&] {
              pathline::write_safetensors(file, {{"__metadata__", one}});
            }),
            at + "cannot write tensor '__metadata__': the name is reserved for the metadata");
  EXPECT_EQ(input_error_of([&] {
              pathline::write_safetensors(file, {{"u", torch::Tensor()}});
            }),
            at + "cannot write tensor 'u': it is undefined");
  EXPECT_CONTAINS(input_error_of([&] {
                    pathline::write_safetensors(file, {{"c", torch::zeros({2}, torch::kComplexDouble)}});
                  }),
                  at + "cannot write tensor 'c': dtype ComplexDouble is not one of F64, F32");
  EXPECT_EQ(input_error_of([&] {
              pathline::write_safetensors(file, {{"bad\xff", one}});
            }),
            at + "cannot write: a tensor name or metadata text is not valid UTF-8");
  EXPECT_EQ(input_error_of([&] {
              pathline::write_safetensors(file, {{"a", one}}, {{"k", "\xc3"}});
            }),
            at + "cannot write: a tensor name or metadata text is not valid UTF-8");
  EXPECT_TRUE(fs::is_empty(dir_));
  EXPECT_CONTAINS(input_error_of([&] { pathline::write_safetensors(path("no/folder/x.safetensors"), {}); }),
                  path("no/folder/x.safetensors").string() + ": cannot write");

  // Names may hold any UTF-8 text, escaped as JSON needs.
  const Named odd = {{"quote\"back\\slash\ttab", one},
                     {"gr\xc3\xbc\xc3\x9f"
                      "e",
                      one * 2}};
  pathline::write_safetensors(file, odd);
  const Named back = pathline::read_safetensors(file);
  ASSERT_EQ(back.size(), 2u);
  EXPECT_EQ(back[0].first, odd[0].first);
  EXPECT_EQ(back[1].first, odd[1].first);
}

// ------------------------------------------------------------------------------------------------
// Damaged files

TEST_F(SafetensorsTest, CorruptFilesThrowSpecificInputErrors) {
  const std::string f32_2 = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
  write_text(path("good.safetensors"), make_safetensors(f32_2, std::string(8, '\0')));
  ASSERT_EQ(pathline::read_safetensors(path("good.safetensors")).size(), 1u);

  // The entry of tensor "a" with the given fields, alone in a header.
  auto one = [](const std::string& fields) { return "{\"a\":{" + fields + "}}"; };
  const std::string huge_len(8, '\xff');
  struct Case {
    std::string name, bytes, reason;
  };
  const std::vector<Case> cases = {
      {"empty", "", "not a safetensors file: 0 bytes, shorter than the 8-byte header length"},
      {"short", std::string("\x02\x00\x00", 3),
       "not a safetensors file: 3 bytes, shorter than the 8-byte header length"},
      {"beyond", std::string("\x64\0\0\0\0\0\0\0", 8) + "{}",
       "header length 100 runs beyond the end of the file (10 bytes)"},
      {"beyond_huge", huge_len + "{}",
       "header length 18446744073709551615 runs beyond the end of the file (10 bytes)"},
      {"not_json", make_safetensors("{\"a\": nope}", ""), "header is not valid JSON: parse error"},
      {"binary", make_safetensors(std::string("\x00\x01\x02\xff", 4), ""), "header is not valid JSON"},
      {"bad_utf8", make_safetensors("{\"\xff\":1}", ""), "header is not valid JSON"},
      {"array", make_safetensors("[1, 2]", ""), "header is not a JSON object"},
      {"number", make_safetensors("8", ""), "header is not a JSON object"},
      {"duplicate", make_safetensors("{\"a\":1,\"a\":2}", ""), "header gives the key 'a' twice"},
      {"entry_not_object", make_safetensors("{\"a\":[1]}", ""), "tensor 'a': its entry is not a JSON object"},
      {"empty_name", make_safetensors("{\"\":{}}", ""), "a tensor has an empty name"},
      {"no_dtype", make_safetensors(one("\"shape\":[],\"data_offsets\":[0,4]"), std::string(4, 'x')),
       "tensor 'a': no \"dtype\""},
      {"unknown_dtype",
       make_safetensors(one("\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]"), std::string(8, 'x')),
       "tensor 'a': unknown dtype 'F33' (known: F64, F32, F16, BF16, C64, I64, I32, I16, I8, U8, BOOL)"},
      {"dtype_number",
       make_safetensors(one("\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]"), std::string(8, 'x')),
       "tensor 'a': \"dtype\" is not a string"},
      {"unsupported_dtype",
       make_safetensors(one("\"dtype\":\"U16\",\"shape\":[2],\"data_offsets\":[0,4]"), std::string(4, 'x')),
       "tensor 'a': dtype 'U16' is not supported by LibTorch"},
      {"no_shape", make_safetensors(one("\"dtype\":\"F32\",\"data_offsets\":[0,8]"), std::string(8, 'x')),
       "tensor 'a': no \"shape\""},
      {"shape_not_list",
       make_safetensors(one("\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]"), std::string(8, 'x')),
       "tensor 'a': \"shape\" is not a list"},
      {"shape_float",
       make_safetensors(one("\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]"), std::string(8, 'x')),
       "tensor 'a': \"shape\" holds '2.5', not a dimension"},
      {"negative_dim",
       make_safetensors(one("\"dtype\":\"F32\",\"shape\":[2,-1],\"data_offsets\":[0,8]"),
                        std::string(8, 'x')),
       "tensor 'a': negative dimension -1 in its shape"},
      {"huge_shape",
       make_safetensors(
           one("\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776],\"data_offsets\":[0,8]"),
           std::string(8, 'x')),
       "tensor 'a': shape [1099511627776, 1099511627776] is too large"},
      {"dim_beyond_int64",
       make_safetensors(one("\"dtype\":\"F32\",\"shape\":[18446744073709551615],\"data_offsets\":[0,8]"),
                        std::string(8, 'x')),
       "tensor 'a': \"shape\" holds '18446744073709551615', not a dimension"},
      {"no_offsets", make_safetensors(one("\"dtype\":\"F32\",\"shape\":[2]"), std::string(8, 'x')),
       "tensor 'a': no \"data_offsets\""},
      {"three_offsets",
       make_safetensors(one("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]"), std::string(8, 'x')),
       "tensor 'a': \"data_offsets\" is not a list of two offsets"},
      {"negative_offset",
       make_safetensors(one("\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]"), std::string(4, 'x')),
       "tensor 'a': negative offset -4 in \"data_offsets\""},
      {"backwards",
       make_safetensors(one("\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]"), std::string(8, 'x')),
       "tensor 'a': data_offsets [8, 4] end before they begin"},
      {"mismatch",
       make_safetensors(one("\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]"), std::string(8, 'x')),
       "tensor 'a': data_offsets [0, 8] span 8 bytes, but shape [3] of F32 needs 12"},
      {"outside",
       make_safetensors(one("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]"), std::string(4, 'x')),
       "tensor 'a': data_offsets [0, 8] lie outside the data section (4 bytes)"},
      {"overlap",
       make_safetensors("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                        "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                        std::string(12, 'x')),
       "tensor 'b' begins at byte 4 of the data section, inside tensor 'a' (which ends at 8): overlapping "
       "tensors"},
      {"same_bytes",
       make_safetensors("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                        "\"b\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}",
                        std::string(8, 'x')),
       "tensor 'b' begins at byte 0 of the data section, inside tensor 'a' (which ends at 8): overlapping "
       "tensors"},
      {"gap",
       make_safetensors("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                        "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                        std::string(12, 'x')),
       "tensor 'b' begins at byte 8 of the data section, leaving bytes 4 to 8 unused: tensors must cover the "
       "data section contiguously"},
      {"leading_gap",
       make_safetensors(one("\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]"), std::string(8, 'x')),
       "tensor 'a' begins at byte 4 of the data section, leaving bytes 0 to 4 unused"},
      {"trailing", make_safetensors(f32_2, std::string(10, 'x')),
       "the tensors cover 8 of the data section's 10 bytes: tensors must cover the data section exactly"},
      {"truncated", make_safetensors(f32_2, std::string(6, 'x')),
       "tensor 'a': data_offsets [0, 8] lie outside the data section (6 bytes)"},
      {"metadata_not_object", make_safetensors("{\"__metadata__\":[\"k\"]}", ""),
       "\"__metadata__\" is not a JSON object"},
      {"metadata_not_string", make_safetensors("{\"__metadata__\":{\"k\":1}}", ""),
       "\"__metadata__\" value of 'k' is not a string"},
      {"bool_byte",
       make_safetensors(one("\"dtype\":\"BOOL\",\"shape\":[2],\"data_offsets\":[0,2]"),
                        std::string("\x01\x02", 2)),
       "tensor 'a': BOOL byte 1 is 2, not 0 or 1"},
      {"newline_name", make_safetensors("{\"a\\nb\":3}", ""),
       "tensor 'a\\x0ab': its entry is not a JSON object"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const fs::path file = path(c.name + ".safetensors");
    write_text(file, c.bytes);
    const std::string message = input_error_of([&] { pathline::read_safetensors(file); });
    EXPECT_EQ(message.find(file.string() + ": "), 0u) << message;
    EXPECT_CONTAINS(message, c.reason);
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }

  EXPECT_EQ(input_error_of([&] { pathline::read_safetensors(path("missing.safetensors")); }),
            path("missing.safetensors").string() + ": no such file");
  EXPECT_CONTAINS(input_error_of([&] { pathline::read_safetensors(dir_); }), "is a directory");
}

TEST_F(SafetensorsTest, NeverCrashesOnTruncationsOrDamagedBytes) {
  pathline::write_safetensors(path("f.safetensors"),
                              {{"w", torch::randn({3, 2})},
                               {"m", torch::tensor({true, false})},
                               {"s", torch::tensor(5, torch::kInt64)},
                               {"h", torch::ones({2}, torch::kFloat16)}},
                              {{"k", "v"}});
  const std::string good = read_text(path("f.safetensors"));
  const fs::path file = path("x.safetensors");
  for (std::size_t n = 0; n < good.size(); ++n) {
    write_text(file, good.substr(0, n));
    EXPECT_THROW(pathline::read_safetensors(file), InputError) << "cut to " << n << " bytes";
  }
  // Random damage anywhere: the file reads, or it is rejected with one line naming it; nothing else.
  std::mt19937 rng(11);
  int rejected = 0, read_back = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::string bytes = good;
    const int changes = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < changes; ++k) {
      const std::size_t i =
          trial % 2 ? rng() % bytes.size() : rng() % std::min<std::size_t>(bytes.size(), 16);
      const unsigned r = rng() % 4;
      bytes[i] = r == 0   ? static_cast<char>(rng())
                 : r == 1 ? static_cast<char>(bytes[i] ^ (1 << (rng() % 8)))
                 : r == 2 ? static_cast<char>("0123456789[]{},:\"-. "[rng() % 20])
                          : '\0';
    }
    write_text(file, bytes);
    try {
      const Named back = pathline::read_safetensors(file);
      ++read_back;
      std::uint64_t total = 0;
      for (const auto& [name, t] : back) total += static_cast<std::uint64_t>(t.numel()) * t.element_size();
      ASSERT_LE(total, bytes.size()) << "trial " << trial;
    } catch (const InputError& e) {
      ++rejected;
      const std::string message = e.what();
      ASSERT_EQ(message.find(file.string() + ": "), 0u) << message;
      ASSERT_EQ(message.find('\n'), std::string::npos) << message;
    }
  }
  EXPECT_GT(rejected, 100);
  EXPECT_GT(read_back, 100);  // damage to the data bytes goes unnoticed: there is no checksum

  // Plain garbage with a plausible header length.
  for (int trial = 0; trial < 500; ++trial) {
    std::string bytes = make_safetensors(std::string(40, ' '), "").substr(0, 8);
    for (int i = 0; i < 60; ++i) bytes += static_cast<char>(rng());
    write_text(file, bytes);
    EXPECT_THROW(pathline::read_safetensors(file), InputError);
  }
}

// ------------------------------------------------------------------------------------------------
// Modules

struct AttnImpl : torch::nn::Module {
  explicit AttnImpl(std::int64_t d)
      : qkv(register_module("qkv", torch::nn::Linear(d, 3 * d))),
        proj(register_module("proj", torch::nn::Linear(torch::nn::LinearOptions(3 * d, d).bias(false)))) {}
  torch::Tensor forward(const torch::Tensor& x) { return proj(torch::tanh(qkv(x))); }
  torch::nn::Linear qkv, proj;
};
TORCH_MODULE(Attn);

struct BlockImpl : torch::nn::Module {
  explicit BlockImpl(std::int64_t d)
      : norm(register_module("norm", torch::nn::BatchNorm1d(d))), attn(register_module("attn", Attn(d))) {}
  torch::Tensor forward(const torch::Tensor& x) { return x + attn(norm(x)); }
  torch::nn::BatchNorm1d norm;
  Attn attn;
};
TORCH_MODULE(Block);

struct NetImpl : torch::nn::Module {
  explicit NetImpl(std::int64_t d = 4) {
    blocks = register_module("blocks", torch::nn::ModuleList());
    for (int i = 0; i < 2; ++i) blocks->push_back(Block(d));
    head = register_module("head", torch::nn::Sequential(torch::nn::Linear(d, 2), torch::nn::Tanh()));
    scale = register_buffer("scale", torch::full({1}, 0.5));
  }
  torch::Tensor forward(torch::Tensor x) {
    for (const auto& block : *blocks) x = block->as<BlockImpl>()->forward(x);
    return head->forward(x) * scale;
  }
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::Sequential head{nullptr};
  torch::Tensor scale;
};
TORCH_MODULE(Net);

std::vector<std::string> names_of(const Named& tensors) {
  std::vector<std::string> names;
  for (const auto& [name, t] : tensors) names.push_back(name);
  return names;
}

TEST_F(SafetensorsTest, NamedWeightsAreParametersThenBuffersUnderDottedNames) {
  Net net;
  const Named weights = pathline::named_weights(*net);
  std::vector<std::string> expected;
  for (const std::string b : {"blocks.0.", "blocks.1."})
    for (const std::string p :
         {"norm.weight", "norm.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight"})
      expected.push_back(b + p);
  expected.insert(expected.end(), {"head.0.weight", "head.0.bias", "scale"});
  for (const std::string b : {"blocks.0.", "blocks.1."})
    for (const std::string p : {"norm.running_mean", "norm.running_var", "norm.num_batches_tracked"})
      expected.push_back(b + p);
  EXPECT_EQ(names_of(weights), expected);
  for (std::size_t i = 0; i < weights.size(); ++i) {
    SCOPED_TRACE(weights[i].first);
    EXPECT_EQ(net->named_parameters().contains(weights[i].first), i < 12);  // 12 parameters, then buffers
    EXPECT_FALSE(weights[i].second.requires_grad());
  }
  // Detached, but the same memory as the module's.
  EXPECT_EQ(weights[0].second.data_ptr(), net->blocks[0]->as<BlockImpl>()->norm->weight.data_ptr());
}

TEST_F(SafetensorsTest, NestedModuleRoundTripsThroughAFile) {
  torch::manual_seed(3);
  Net trained;
  trained->train();
  for (int i = 0; i < 3; ++i) trained->forward(torch::randn({8, 4}));  // moves the BatchNorm statistics
  trained->eval();
  const fs::path file = path("model.safetensors");
  pathline::write_safetensors(file, pathline::named_weights(*trained), {{"pathline.model", "net"}});

  torch::manual_seed(4);
  Net fresh;
  fresh->eval();
  const torch::Tensor x = torch::randn({5, 4});
  ASSERT_FALSE(torch::allclose(fresh->forward(x), trained->forward(x)));
  const void* storage = fresh->head->at<torch::nn::LinearImpl>(0).weight.data_ptr();

  std::map<std::string, std::string> meta;
  pathline::load_named_weights(*fresh, pathline::read_safetensors(file, &meta), file);
  EXPECT_EQ(meta.at("pathline.model"), "net");
  const Named a = pathline::named_weights(*trained), b = pathline::named_weights(*fresh);
  ASSERT_EQ(names_of(a), names_of(b));
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(same_bytes(a[i].second, b[i].second)) << a[i].first;
  EXPECT_TRUE(torch::equal(fresh->forward(x), trained->forward(x)));
  // Copied in place: the parameters are the same tensors, still trainable.
  EXPECT_EQ(fresh->head->at<torch::nn::LinearImpl>(0).weight.data_ptr(), storage);
  for (const auto& p : fresh->parameters()) EXPECT_TRUE(p.requires_grad());
  EXPECT_EQ(fresh->blocks[0]->as<BlockImpl>()->norm->num_batches_tracked.item<std::int64_t>(), 3);
}

TEST_F(SafetensorsTest, SequentialRoundTripsAndDtypesAreConverted) {
  torch::manual_seed(5);
  torch::nn::Sequential source(torch::nn::Linear(3, 4), torch::nn::ReLU(), torch::nn::Linear(4, 2));
  EXPECT_EQ(names_of(pathline::named_weights(*source)),
            (std::vector<std::string>{"0.weight", "0.bias", "2.weight", "2.bias"}));
  // Stored as float64 (as another tool might), loaded into a float32 module.
  Named as_double;
  for (const auto& [name, t] : pathline::named_weights(*source))
    as_double.emplace_back(name, t.to(torch::kFloat64));
  const fs::path file = path("seq.safetensors");
  pathline::write_safetensors(file, as_double);
  torch::nn::Sequential target(torch::nn::Linear(3, 4), torch::nn::ReLU(), torch::nn::Linear(4, 2));
  pathline::load_named_weights(*target, pathline::read_safetensors(file), file);
  for (const auto& p : target->parameters()) EXPECT_EQ(p.scalar_type(), torch::kFloat32);
  const torch::Tensor x = torch::randn({6, 3});
  EXPECT_TRUE(torch::equal(target->forward(x), source->forward(x)));
}

TEST_F(SafetensorsTest, LoadNamedWeightsNamesTheFileAndTheFirstProblem) {
  torch::manual_seed(6);
  Net source;
  const fs::path file = path("w.safetensors");
  const Named good = pathline::named_weights(*source);
  Net target;
  const Named before = pathline::named_weights(*target);
  std::vector<std::string> before_hex;
  for (const auto& [name, t] : before) before_hex.push_back(hex_of(t));
  auto unchanged = [&] {
    const Named now = pathline::named_weights(*target);
    for (std::size_t i = 0; i < now.size(); ++i)
      if (hex_of(now[i].second) != before_hex[i]) return false;
    return true;
  };
  const std::string at = file.string() + ": ";

  Named missing;  // lacks two tensors: the module's first one is named
  for (const auto& [name, t] : good)
    if (name != "blocks.1.attn.qkv.bias" && name != "blocks.0.norm.running_var")
      missing.emplace_back(name, t);
  EXPECT_EQ(input_error_of([&] { pathline::load_named_weights(*target, missing, file); }),
            at + "no tensor 'blocks.1.attn.qkv.bias', which the model has");

  Named extra = good;
  extra.emplace_back("extra.weight", torch::zeros({2}));
  extra.emplace_back("extra.bias", torch::zeros({2}));
  EXPECT_EQ(input_error_of([&] { pathline::load_named_weights(*target, extra, file); }),
            at + "unexpected tensor 'extra.weight': the model has no such parameter or buffer");

  Named reshaped = good;  // the last parameter's shape is wrong: nothing is copied, not even the first ones
  for (auto& [name, t] : reshaped)
    if (name == "head.0.weight") t = torch::zeros({3, 4});
  EXPECT_EQ(input_error_of([&] { pathline::load_named_weights(*target, reshaped, file); }),
            at + "tensor 'head.0.weight' is shaped [3, 4], the model's is [2, 4]");

  Named twice = good;
  twice.push_back(good[0]);
  EXPECT_EQ(input_error_of([&] { pathline::load_named_weights(*target, twice, file); }),
            at + "tensor 'blocks.0.norm.weight' is given twice");
  EXPECT_TRUE(unchanged());

  pathline::load_named_weights(*target, good, file);
  EXPECT_FALSE(unchanged());
}

// ------------------------------------------------------------------------------------------------
// NumPy reads what we write

// Parses a safetensors file by hand with struct, json and NumPy (torch is made unimportable) and
// prints, per tensor in offset order: name, dtype, shape, the raw bytes and the values as float64
// (complex128 for C64) in hex; then, for tensors with a .npy file beside it, whether NumPy's own
// reader sees the same array.
constexpr const char* kNumpyReader = R"PY(
import sys
sys.modules['torch'] = None  # this check must not lean on PyTorch
import json, os, struct
import numpy as np

path, npy_dir = sys.argv[1], sys.argv[2]
raw = open(path, 'rb').read()
(n,) = struct.unpack('<Q', raw[:8])
assert n % 8 == 0, 'header length %d is not a multiple of 8' % n
text = raw[8:8 + n].decode('utf-8')
header = json.loads(text)
data = raw[8 + n:]
meta = header.pop('__metadata__', {})
for key in sorted(meta):
    print('meta', key, meta[key])
kinds = {'F64': '<f8', 'F32': '<f4', 'F16': '<f2', 'BF16': '<u2', 'C64': '<c8', 'I64': '<i8',
         'I32': '<i4', 'I16': '<i2', 'I8': 'i1', 'U8': 'u1', 'BOOL': '?'}
end = 0
for name, info in sorted(header.items(), key=lambda item: tuple(item[1]['data_offsets'])):
    begin, stop = info['data_offsets']
    assert begin == end, 'gap or overlap before ' + name
    end = stop
    shape = tuple(info['shape'])
    array = np.frombuffer(data[begin:stop], dtype=kinds[info['dtype']]).reshape(shape)
    if info['dtype'] == 'BF16':
        values = (array.astype('<u4') << 16).view('<f4').astype('<f8')
    elif info['dtype'] == 'C64':
        values = array.astype('<c16')
    else:
        values = array.astype('<f8')
    print(name, info['dtype'], list(shape), array.tobytes().hex(), values.tobytes().hex())
    npy = os.path.join(npy_dir, name + '.npy')
    if os.path.exists(npy):
        ref = np.load(npy, allow_pickle=False)
        print('npy', name, ref.dtype.str, ref.shape == array.shape and ref.dtype == array.dtype
              and ref.tobytes() == array.tobytes())
assert end == len(data), 'data section not covered'
print('ok')
)PY";

TEST_F(SafetensorsTest, NumpyReadsWhatCppWritesBitExactly) {
  const std::string python = pathline::testing::python_with({"numpy"});
  if (python.empty()) GTEST_SKIP() << pathline::testing::python() << " has no numpy";

  const Named tensors = assorted_tensors();
  const std::map<std::string, std::string> metadata = {{"pathline.model", "dit"},
                                                       {"pathline.weights", "raw"}};
  const fs::path file = path("model.safetensors");
  pathline::write_safetensors(file, tensors, metadata);
  const fs::path npy_dir = path("npy");
  fs::create_directories(npy_dir);

  const std::map<torch::ScalarType, std::string> names = {
      {torch::kFloat64, "F64"},   {torch::kFloat32, "F32"}, {torch::kFloat16, "F16"},
      {torch::kBFloat16, "BF16"}, {torch::kInt64, "I64"},   {torch::kComplexFloat, "C64"},
      {torch::kInt32, "I32"},     {torch::kInt16, "I16"},   {torch::kInt8, "I8"},
      {torch::kUInt8, "U8"},      {torch::kBool, "BOOL"}};
  std::vector<std::string> expected;
  for (const auto& [key, value] : metadata) expected.push_back("meta " + key + " " + value);
  for (const auto& [name, t] : tensors) {
    std::string shape = "[";
    for (std::int64_t i = 0; i < t.dim(); ++i) shape += (i ? ", " : "") + std::to_string(t.size(i));
    shape += "]";
    const torch::Tensor values =
        t.scalar_type() == torch::kComplexFloat ? t.to(torch::kComplexDouble) : t.to(torch::kFloat64);
    expected.push_back(name + " " + names.at(t.scalar_type()) + " " + shape + " " + hex_of(t) + " " +
                       hex_of(values));
    const auto type = t.scalar_type();
    if (type == torch::kFloat32 || type == torch::kFloat64 || type == torch::kInt64) {
      pathline::write_npy(npy_dir / (name + ".npy"), t);
      expected.push_back("npy " + name + " " +
                         (type == torch::kFloat32   ? "<f4"
                          : type == torch::kFloat64 ? "<f8"
                                                    : "<i8") +
                         " True");
    }
  }
  expected.push_back("ok");

  write_text(path("reader.py"), kNumpyReader);
  const fs::path out = path("out.txt"), err = path("err.txt");
  const std::string command = python + " '" + path("reader.py").string() + "' '" + file.string() + "' '" +
                              npy_dir.string() + "' > '" + out.string() + "' 2> '" + err.string() + "'";
  ASSERT_EQ(std::system(command.c_str()), 0) << read_text(err);
  EXPECT_EQ(pathline::testing::lines_of(read_text(out)), expected);
}

}  // namespace
