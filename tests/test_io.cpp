// Tests of engine/src/io.cpp: .npy and PNG files, and the plots.
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "pathline/engine/io.hpp"
#include "pathline/errors.hpp"

namespace fs = std::filesystem;
using pathline::Image;
using pathline::InputError;

namespace {

// A fresh, empty folder per test, removed afterwards.
class IoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static int counter = 0;
    dir_ = fs::temp_directory_path() /
           ("pathline-test-io-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  fs::path path(const std::string& name) const { return dir_ / name; }

  fs::path dir_;
};

std::string read_bytes(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const fs::path& file, const std::string& bytes) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// The message of the InputError that f throws ("" and a test failure if it throws nothing or
// something else).
template <typename F>
std::string input_error_of(F&& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected InputError, got another exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected InputError, nothing was thrown";
  return "";
}

#define EXPECT_CONTAINS(haystack, needle) \
  EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << "'" << (haystack) << "' lacks '" << (needle) << "'"

// A .npy v1.0 file with the given header dictionary text and data bytes, padded as NumPy pads.
std::string make_npy(const std::string& dict, const std::string& data, char major = 1) {
  std::string header = dict;
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string out = "\x93NUMPY";
  out += major;
  out += '\0';
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>(header.size() >> 8);
  return out + header + data;
}

std::vector<std::vector<std::int64_t>> test_shapes() { return {{}, {0}, {5}, {3, 4}, {2, 3, 4}}; }

// ------------------------------------------------------------------------------------------------
// .npy

TEST_F(IoTest, NpyRoundTripIsExactForEveryDtypeAndShape) {
  torch::manual_seed(1);
  for (auto dtype : {torch::kFloat32, torch::kFloat64, torch::kInt64}) {
    for (const auto& shape : test_shapes()) {
      torch::Tensor t = dtype == torch::kInt64
                            ? torch::randint(-(std::int64_t{1} << 62), std::int64_t{1} << 62, shape, torch::kInt64)
                            : torch::randn(shape, torch::TensorOptions().dtype(dtype)) * 1e3;
      const fs::path file = path("a.npy");
      pathline::write_npy(file, t);
      torch::Tensor back = pathline::read_npy(file);
      SCOPED_TRACE(std::string(c10::toString(dtype)) + " " + c10::str(t.sizes()));
      EXPECT_EQ(back.scalar_type(), dtype);
      EXPECT_EQ(back.sizes(), t.sizes());
      EXPECT_TRUE(torch::equal(back, t));
    }
  }
}

TEST_F(IoTest, NpyKeepsSpecialFloatValues) {
  torch::Tensor t = torch::tensor({0.0, -0.0, 1e-310, std::numeric_limits<double>::infinity(),
                                   -std::numeric_limits<double>::infinity(), 1.5e308},
                                  torch::kFloat64);
  pathline::write_npy(path("s.npy"), t);
  torch::Tensor back = pathline::read_npy(path("s.npy"));
  EXPECT_EQ(std::memcmp(back.data_ptr(), t.data_ptr(), 6 * sizeof(double)), 0);
  t = torch::tensor({std::nanf("")}, torch::kFloat32);
  pathline::write_npy(path("n.npy"), t);
  EXPECT_TRUE(std::isnan(pathline::read_npy(path("n.npy")).item<float>()));
}

TEST_F(IoTest, NpyWritesNonContiguousTensorsAsTheirValues) {
  torch::Tensor base = torch::arange(12, torch::kFloat32).reshape({3, 4});
  torch::Tensor t = base.t();  // [4, 3], not contiguous
  ASSERT_FALSE(t.is_contiguous());
  pathline::write_npy(path("t.npy"), t);
  torch::Tensor back = pathline::read_npy(path("t.npy"));
  EXPECT_EQ(back.sizes(), (std::vector<std::int64_t>{4, 3}));
  EXPECT_TRUE(torch::equal(back, t));
  EXPECT_EQ(back[0][1].item<float>(), 4.f);

  torch::Tensor strided = torch::arange(10, torch::kInt64).slice(0, 0, 10, 3);  // 0 3 6 9
  pathline::write_npy(path("s.npy"), strided);
  EXPECT_TRUE(torch::equal(pathline::read_npy(path("s.npy")), torch::tensor({0, 3, 6, 9}, torch::kInt64)));
}

TEST_F(IoTest, NpyHeaderIsWhatNumpyWrites) {
  struct Case {
    torch::Tensor tensor;
    std::string descr, shape;
  };
  const std::vector<Case> cases = {
      {torch::zeros({3, 4}, torch::kFloat32), "'<f4'", "(3, 4)"},
      {torch::zeros({5}, torch::kFloat64), "'<f8'", "(5,)"},
      {torch::zeros({}, torch::kInt64), "'<i8'", "()"},
      {torch::zeros({2, 3, 4}, torch::kInt64), "'<i8'", "(2, 3, 4)"},
      {torch::zeros({0}, torch::kFloat32), "'<f4'", "(0,)"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.shape);
    const fs::path file = path("h.npy");
    pathline::write_npy(file, c.tensor);
    const std::string bytes = read_bytes(file);
    ASSERT_GE(bytes.size(), 10u);
    EXPECT_EQ(bytes.substr(0, 6), std::string("\x93NUMPY"));
    EXPECT_EQ(bytes[6], '\x01');  // version 1.0
    EXPECT_EQ(bytes[7], '\x00');
    const std::size_t header_len =
        static_cast<unsigned char>(bytes[8]) | (static_cast<std::size_t>(static_cast<unsigned char>(bytes[9])) << 8);
    const std::size_t data_offset = 10 + header_len;
    EXPECT_EQ(data_offset % 64, 0u);
    ASSERT_LE(data_offset, bytes.size());
    EXPECT_EQ(bytes.size() - data_offset, static_cast<std::size_t>(c.tensor.numel() * c.tensor.element_size()));
    const std::string header = bytes.substr(10, header_len);
    EXPECT_EQ(header.back(), '\n');
    EXPECT_EQ(header.substr(0, 1), "{");
    // The dictionary exactly as NumPy formats it, then spaces.
    const std::string dict = "{'descr': " + c.descr + ", 'fortran_order': False, 'shape': " + c.shape + ", }";
    EXPECT_EQ(header.substr(0, dict.size()), dict);
    EXPECT_EQ(header.find_first_not_of(' ', dict.size()), header_len - 1);
  }
}

TEST_F(IoTest, NpyDataIsLittleEndianCOrder) {
  pathline::write_npy(path("d.npy"), torch::tensor({{1, 2}, {3, 258}}, torch::kInt64));
  const std::string bytes = read_bytes(path("d.npy"));
  ASSERT_EQ(bytes.size(), 128u + 32u);  // the dictionary needs 70 bytes, so the data starts at 128
  EXPECT_EQ(bytes[128], 1);
  EXPECT_EQ(bytes[136], 2);
  EXPECT_EQ(bytes[144], 3);
  EXPECT_EQ(bytes[152], 2);  // 258 = 0x0102, little-endian
  EXPECT_EQ(bytes[153], 1);
}

TEST_F(IoTest, NpyReadsFilesFromOtherWriters) {
  // Version 2.0 (4-byte header length), double quotes, no trailing comma, extra whitespace.
  std::string data(2 * sizeof(double), '\0');
  const double values[2] = {1.25, -2.5};
  std::memcpy(data.data(), values, sizeof(values));
  std::string header = "{\"descr\":\"<f8\",  \"shape\": (2,),'fortran_order':False}";
  while ((12 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string file = std::string("\x93NUMPY\x02", 7) + '\0';
  for (int i = 0; i < 4; ++i) file += static_cast<char>((header.size() >> (8 * i)) & 0xff);
  write_bytes(path("v2.npy"), file + header + data);
  torch::Tensor t = pathline::read_npy(path("v2.npy"));
  EXPECT_TRUE(torch::equal(t, torch::tensor({1.25, -2.5}, torch::kFloat64)));

  // No padding at all (data right after the header) is legal too.
  std::string unpadded = "{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }\n";
  std::string bytes = std::string("\x93NUMPY\x01\x00", 8);
  bytes += static_cast<char>(unpadded.size());
  bytes += '\0';
  std::string one(8, '\0');
  one[0] = 7;
  write_bytes(path("u.npy"), bytes + unpadded + one);
  EXPECT_EQ(pathline::read_npy(path("u.npy")).item<std::int64_t>(), 7);
}

TEST_F(IoTest, NpyCorruptFilesThrowSpecificInputErrors) {
  const std::string good_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  const std::string data(24, '\0');
  write_bytes(path("good.npy"), make_npy(good_dict, data));
  ASSERT_EQ(pathline::read_npy(path("good.npy")).sizes(), (std::vector<std::int64_t>{2, 3}));

  struct Case {
    std::string name, bytes, reason;
  };
  const std::string good = make_npy(good_dict, data);
  std::string bad_magic = good;
  bad_magic[1] = 'X';
  std::string bad_version = good;
  bad_version[6] = 9;
  const std::vector<Case> cases = {
      {"truncated.npy", good.substr(0, good.size() - 4), "truncated data (expected 24 bytes, found 20)"},
      {"header_cut.npy", good.substr(0, 40), "truncated header"},
      {"tiny.npy", good.substr(0, 7), "truncated header"},
      {"empty.npy", "", "not a .npy file (bad magic)"},
      {"bad_magic.npy", bad_magic, "not a .npy file (bad magic)"},
      {"text.npy", "hello, world, this is no array at all\n", "not a .npy file (bad magic)"},
      {"bad_version.npy", bad_version, "unsupported .npy version 9.0"},
      {"complex.npy", make_npy("{'descr': '<c8', 'fortran_order': False, 'shape': (3,), }", std::string(24, '\0')),
       "unsupported dtype '<c8'"},
      {"big_endian.npy", make_npy("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", data),
       "unsupported dtype '>f4'"},
      {"fortran.npy", make_npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", data),
       "fortran_order True is not supported"},
      {"extra.npy", good + "xx", "unexpected 2 bytes after the data"},
      {"no_shape.npy", make_npy("{'descr': '<f4', 'fortran_order': False, }", data),
       "malformed .npy header: missing key 'shape'"},
      {"not_tuple.npy", make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (6), }", data),
       "malformed .npy header: shape is not a tuple"},
      {"negative.npy", make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-6,), }", data),
       "malformed .npy header: expected a dimension"},
      {"unclosed.npy", make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), ", data),
       "malformed .npy header"},
      {"huge.npy", make_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", data),
       "malformed .npy header: shape too large"},
      {"large.npy", make_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000,), }", data),
       "truncated data (expected 8000000000 bytes, found 24)"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    write_bytes(path(c.name), c.bytes);
    const std::string message = input_error_of([&] { pathline::read_npy(path(c.name)); });
    EXPECT_CONTAINS(message, path(c.name).string() + ": ");
    EXPECT_CONTAINS(message, c.reason);
    EXPECT_EQ(message.find('\n'), std::string::npos);
  }

  const std::string missing = input_error_of([&] { pathline::read_npy(path("missing.npy")); });
  EXPECT_EQ(missing, path("missing.npy").string() + ": no such file");
  const std::string folder = input_error_of([&] { pathline::read_npy(dir_); });
  EXPECT_CONTAINS(folder, "is a directory");
}

TEST_F(IoTest, NpyNeverCrashesOnTruncationsOrFlippedBytes) {
  torch::manual_seed(2);
  pathline::write_npy(path("f.npy"), torch::randn({4, 3}));
  const std::string good = read_bytes(path("f.npy"));
  for (std::size_t n = 0; n < good.size(); ++n) {
    write_bytes(path("cut.npy"), good.substr(0, n));
    EXPECT_THROW(pathline::read_npy(path("cut.npy")), InputError) << "cut to " << n << " bytes";
  }
  // Flipping any header byte either keeps a readable file or gives an InputError.
  std::mt19937 rng(3);
  for (std::size_t i = 0; i < 64; ++i) {
    for (int trial = 0; trial < 4; ++trial) {
      std::string bytes = good;
      bytes[i] = static_cast<char>(rng() & 0xff);
      write_bytes(path("flip.npy"), bytes);
      try {
        pathline::read_npy(path("flip.npy"));
      } catch (const InputError&) {
      }
    }
  }
}

TEST_F(IoTest, NpyWriteRejectsOtherDtypesAndLeavesNoFile) {
  for (auto t : {torch::zeros({2}, torch::kInt32), torch::zeros({2}, torch::kBool),
                 torch::zeros({2}, torch::kFloat16), torch::zeros({2}, torch::kUInt8)}) {
    const std::string message = input_error_of([&] { pathline::write_npy(path("x.npy"), t); });
    EXPECT_CONTAINS(message, path("x.npy").string() + ": cannot write a tensor of dtype");
    EXPECT_CONTAINS(message, "only float32, float64 and int64");
  }
  EXPECT_TRUE(fs::is_empty(dir_));
}

TEST_F(IoTest, WritesReplaceFilesWholeAndLeaveNoTemporaries) {
  const fs::path file = path("r.npy");
  pathline::write_npy(file, torch::ones({1000}, torch::kFloat64));
  pathline::write_npy(file, torch::full({3}, 2.0, torch::kFloat32));
  EXPECT_TRUE(torch::equal(pathline::read_npy(file), torch::full({3}, 2.0, torch::kFloat32)));
  Image image;
  image.width = 2;
  image.height = 1;
  image.rgb = {1, 2, 3, 4, 5, 6};
  pathline::write_png(path("p.png"), image);
  pathline::write_png(path("p.png"), image);
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir_)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"p.png", "r.npy"}));

  // A folder that does not exist: an InputError naming the file, and nothing written.
  const fs::path nowhere = path("no/such/folder/x.npy");
  const std::string message = input_error_of([&] { pathline::write_npy(nowhere, torch::zeros({1})); });
  EXPECT_CONTAINS(message, nowhere.string() + ": cannot write");
  EXPECT_CONTAINS(input_error_of([&] { pathline::write_png(path("no/such/x.png"), image); }), "cannot write");
}

// The first Python with NumPy (the one on PATH, else the system's), or "".
std::string python_with_numpy() {
  for (const std::string candidate : {"python3", "/usr/bin/python3"})
    if (std::system((candidate + " -c 'import numpy' >/dev/null 2>&1").c_str()) == 0) return candidate;
  return "";
}

TEST_F(IoTest, NpyFilesLoadInNumpy) {
  const std::string python = python_with_numpy();
  if (python.empty()) GTEST_SKIP() << "no python3 with numpy";
  struct Case {
    torch::Tensor tensor;
    std::string expected;  // "dtype|shape|sum"
  };
  // Values whose sums are exact in any order.
  const std::vector<Case> cases = {
      {torch::arange(24, torch::kFloat32).reshape({2, 3, 4}) * 0.5, "<f4|2,3,4|138.0"},
      {torch::arange(-5, 7, torch::kFloat64).reshape({3, 4}) * 0.25, "<f8|3,4|1.5"},
      {torch::arange(5, torch::kInt64) * static_cast<std::int64_t>(1000000000000), "<i8|5|10000000000000"},
      {torch::full({}, 42, torch::kInt64), "<i8||42"},
      {torch::zeros({0}, torch::kFloat32), "<f4|0|0.0"},
  };
  int i = 0;
  for (const auto& c : cases) {
    const fs::path file = path("np" + std::to_string(i++) + ".npy");
    pathline::write_npy(file, c.tensor);
    const fs::path out = path("out.txt");
    const std::string command =
        python + " -c \"import numpy as np, sys; a = np.load(sys.argv[1], allow_pickle=False); "
        "print(a.dtype.str + '|' + ','.join(map(str, a.shape)) + '|' + repr(a.sum().item()))\" '" +
        file.string() + "' > '" + out.string() + "' 2>&1";
    ASSERT_EQ(std::system(command.c_str()), 0) << read_bytes(out);
    std::string got = read_bytes(out);
    while (!got.empty() && (got.back() == '\n' || got.back() == '\r')) got.pop_back();
    EXPECT_EQ(got, c.expected);
  }
}

TEST_F(IoTest, NpyReadsWhatNumpyWrites) {
  const std::string python = python_with_numpy();
  if (python.empty()) GTEST_SKIP() << "no python3 with numpy";
  const std::string script =
      "import numpy as np, sys\n"
      "d = sys.argv[1]\n"
      "np.save(d + '/f4.npy', np.arange(12, dtype='<f4').reshape(3, 4) * 0.5)\n"
      "np.save(d + '/f8.npy', np.array(2.5))\n"
      "np.save(d + '/i8.npy', np.arange(5, dtype='<i8') * -3)\n"
      "np.save(d + '/empty.npy', np.zeros((2, 0, 3)))\n"
      "np.save(d + '/sliced.npy', np.arange(24.0).reshape(4, 6)[::2, 1::2])\n"
      "np.save(d + '/fortran.npy', np.asfortranarray(np.ones((2, 3))))\n"
      "np.save(d + '/big.npy', np.arange(3, dtype='>f4'))\n"
      "np.save(d + '/i4.npy', np.arange(3, dtype='<i4'))\n";
  write_bytes(path("make.py"), script);
  ASSERT_EQ(std::system((python + " '" + path("make.py").string() + "' '" + dir_.string() + "'").c_str()), 0);

  EXPECT_TRUE(torch::equal(pathline::read_npy(path("f4.npy")),
                           torch::arange(12, torch::kFloat32).reshape({3, 4}) * 0.5));
  const torch::Tensor scalar = pathline::read_npy(path("f8.npy"));
  EXPECT_EQ(scalar.dim(), 0);
  EXPECT_EQ(scalar.scalar_type(), torch::kFloat64);
  EXPECT_EQ(scalar.item<double>(), 2.5);
  EXPECT_TRUE(torch::equal(pathline::read_npy(path("i8.npy")), torch::arange(5, torch::kInt64) * -3));
  const torch::Tensor empty = pathline::read_npy(path("empty.npy"));
  EXPECT_EQ(empty.sizes(), (std::vector<std::int64_t>{2, 0, 3}));
  EXPECT_EQ(empty.scalar_type(), torch::kFloat64);
  EXPECT_TRUE(torch::equal(pathline::read_npy(path("sliced.npy")),
                           torch::tensor({{1.0, 3.0, 5.0}, {13.0, 15.0, 17.0}}, torch::kFloat64)));
  EXPECT_CONTAINS(input_error_of([&] { pathline::read_npy(path("fortran.npy")); }),
                  "fortran_order True is not supported");
  EXPECT_CONTAINS(input_error_of([&] { pathline::read_npy(path("big.npy")); }), "unsupported dtype '>f4'");
  EXPECT_CONTAINS(input_error_of([&] { pathline::read_npy(path("i4.npy")); }), "unsupported dtype '<i4'");
}

// ------------------------------------------------------------------------------------------------
// PNG

Image random_image(int width, int height, unsigned seed) {
  std::mt19937 rng(seed);
  Image image;
  image.width = width;
  image.height = height;
  image.rgb.resize(static_cast<std::size_t>(width) * height * 3);
  for (auto& v : image.rgb) v = static_cast<std::uint8_t>(rng() & 0xff);
  return image;
}

void append_be32(std::string& out, std::uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out += static_cast<char>((v >> shift) & 0xff);
}

std::string png_chunk(const std::string& type, const std::string& data) {
  std::string out;
  append_be32(out, static_cast<std::uint32_t>(data.size()));
  const std::string body = type + data;
  out += body;
  append_be32(out, static_cast<std::uint32_t>(
                       crc32(0L, reinterpret_cast<const Bytef*>(body.data()), static_cast<uInt>(body.size()))));
  return out;
}

std::string ihdr(std::uint32_t width, std::uint32_t height, int depth = 8, int colour = 2, int interlace = 0) {
  std::string data;
  append_be32(data, width);
  append_be32(data, height);
  data += static_cast<char>(depth);
  data += static_cast<char>(colour);
  data += '\0';
  data += '\0';
  data += static_cast<char>(interlace);
  return png_chunk("IHDR", data);
}

const std::string kSignature("\x89PNG\r\n\x1a\n", 8);

std::string zlib_compress(const std::string& raw) {
  uLongf size = compressBound(static_cast<uLong>(raw.size()));
  std::string out(size, '\0');
  EXPECT_EQ(compress2(reinterpret_cast<Bytef*>(out.data()), &size, reinterpret_cast<const Bytef*>(raw.data()),
                      static_cast<uLong>(raw.size()), 9),
            Z_OK);
  out.resize(size);
  return out;
}

int paeth_predictor(int a, int b, int c) {
  const int p = a + b - c;
  const int pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
  if (pa <= pb && pa <= pc) return a;
  return pb <= pc ? b : c;
}

// A PNG built by hand, row r filtered with filter type types[r % types.size()], its data split
// over several IDAT chunks, with ancillary chunks in between.
std::string hand_built_png(const Image& image, const std::vector<int>& types) {
  const int stride = image.width * 3;
  std::string raw;
  for (int y = 0; y < image.height; ++y) {
    const int type = types[y % types.size()];
    raw += static_cast<char>(type);
    for (int i = 0; i < stride; ++i) {
      const int x = image.rgb[y * stride + i];
      const int a = i >= 3 ? image.rgb[y * stride + i - 3] : 0;
      const int b = y > 0 ? image.rgb[(y - 1) * stride + i] : 0;
      const int c = (i >= 3 && y > 0) ? image.rgb[(y - 1) * stride + i - 3] : 0;
      int pred = 0;
      if (type == 1) pred = a;
      if (type == 2) pred = b;
      if (type == 3) pred = (a + b) / 2;
      if (type == 4) pred = paeth_predictor(a, b, c);
      raw += static_cast<char>((x - pred) & 0xff);
    }
  }
  const std::string z = zlib_compress(raw);
  const std::size_t third = z.size() / 3;
  return kSignature + ihdr(image.width, image.height) + png_chunk("tEXt", std::string("Comment\0hand made", 17)) +
         png_chunk("IDAT", z.substr(0, third)) + png_chunk("IDAT", z.substr(third, third)) +
         png_chunk("IDAT", z.substr(2 * third)) + png_chunk("tIME", std::string(7, '\1')) + png_chunk("IEND", "");
}

TEST_F(IoTest, PngRoundTripIsExact) {
  for (auto [w, h] : {std::pair{1, 1}, std::pair{37, 23}, std::pair{300, 2}}) {
    const Image image = random_image(w, h, static_cast<unsigned>(w * 131 + h));
    pathline::write_png(path("r.png"), image);
    const Image back = pathline::read_png(path("r.png"));
    EXPECT_EQ(back.width, w);
    EXPECT_EQ(back.height, h);
    EXPECT_EQ(back.rgb, image.rgb);
  }
  // A smooth image, where the writer picks predicting filters.
  Image smooth;
  smooth.width = 64;
  smooth.height = 48;
  for (int y = 0; y < smooth.height; ++y)
    for (int x = 0; x < smooth.width; ++x)
      for (int c = 0; c < 3; ++c) smooth.rgb.push_back(static_cast<std::uint8_t>(x * 3 + y * 2 + c * 40));
  pathline::write_png(path("s.png"), smooth);
  EXPECT_EQ(pathline::read_png(path("s.png")).rgb, smooth.rgb);
  EXPECT_LT(fs::file_size(path("s.png")), 64u * 48u);  // the filters pay off
}

TEST_F(IoTest, PngFileHasTheStandardLayout) {
  const Image image = random_image(5, 4, 7);
  pathline::write_png(path("l.png"), image);
  const std::string bytes = read_bytes(path("l.png"));
  ASSERT_GT(bytes.size(), 8u + 25u + 12u);
  EXPECT_EQ(bytes.substr(0, 8), kSignature);
  EXPECT_EQ(bytes.substr(8, 25), ihdr(5, 4));  // IHDR: 5x4, depth 8, RGB, no interlace, with its CRC
  EXPECT_EQ(bytes.substr(bytes.size() - 12), png_chunk("IEND", ""));
  EXPECT_EQ(bytes.substr(37, 4), "IDAT");
}

TEST_F(IoTest, PngDecodesEveryFilterType) {
  const Image image = random_image(9, 11, 11);
  for (const auto& types : std::vector<std::vector<int>>{{0}, {1}, {2}, {3}, {4}, {4, 3, 2, 1, 0}, {2, 4, 1, 3}}) {
    write_bytes(path("f.png"), hand_built_png(image, types));
    const Image back = pathline::read_png(path("f.png"));
    EXPECT_EQ(back.width, 9);
    EXPECT_EQ(back.height, 11);
    EXPECT_EQ(back.rgb, image.rgb) << "filters " << types[0] << "...";
  }
  // Smooth content, where Average and Paeth sums overflow 255 and wrap.
  Image bright;
  bright.width = 6;
  bright.height = 5;
  for (int i = 0; i < 90; ++i) bright.rgb.push_back(static_cast<std::uint8_t>(200 + (i * 7) % 56));
  write_bytes(path("b.png"), hand_built_png(bright, {3, 4}));
  EXPECT_EQ(pathline::read_png(path("b.png")).rgb, bright.rgb);
}

TEST_F(IoTest, PngCorruptFilesThrowSpecificInputErrors) {
  const Image image = random_image(6, 5, 5);
  pathline::write_png(path("good.png"), image);
  const std::string good = read_bytes(path("good.png"));

  struct Case {
    std::string name, bytes, reason;
  };
  std::string bad_crc = good;
  bad_crc[45] = static_cast<char>(bad_crc[45] ^ 0x40);  // inside the IDAT data
  std::string bad_ihdr_crc = good;
  bad_ihdr_crc[29] = static_cast<char>(bad_ihdr_crc[29] ^ 1);
  std::string bad_sig = good;
  bad_sig[1] = 'Q';
  const std::string pixels = zlib_compress(std::string(5 * (1 + 18), '\0'));
  const std::string tail = png_chunk("IDAT", pixels) + png_chunk("IEND", "");
  std::string bad_filter_raw(5 * 19, '\0');
  bad_filter_raw[19] = 7;
  const std::vector<Case> cases = {
      {"crc.png", bad_crc, "CRC mismatch in chunk 'IDAT'"},
      {"ihdr_crc.png", bad_ihdr_crc, "CRC mismatch in chunk 'IHDR'"},
      {"truncated.png", good.substr(0, good.size() - 20), "truncated"},
      {"no_iend.png", good.substr(0, good.size() - 12), "truncated file (no 'IEND' chunk)"},
      {"sig_only.png", kSignature, "truncated file (no 'IEND' chunk)"},
      {"bad_sig.png", bad_sig, "not a PNG file (bad signature)"},
      {"empty.png", "", "not a PNG file (bad signature)"},
      {"depth16.png", kSignature + ihdr(6, 5, 16) + tail, "unsupported bit depth 16 (only 8)"},
      {"rgba.png", kSignature + ihdr(6, 5, 8, 6) + tail, "unsupported colour type 6 (only 2, RGB)"},
      {"grey.png", kSignature + ihdr(6, 5, 8, 0) + tail, "unsupported colour type 0"},
      {"interlaced.png", kSignature + ihdr(6, 5, 8, 2, 1) + tail, "interlaced PNGs are not supported"},
      {"no_ihdr.png", kSignature + tail, "first chunk is 'IDAT', not 'IHDR'"},
      {"no_idat.png", kSignature + ihdr(6, 5) + png_chunk("IEND", ""), "no image data"},
      {"zero.png", kSignature + ihdr(0, 5) + tail, "bad image size 0x5"},
      {"short.png", kSignature + ihdr(6, 6) + tail, "image data too short"},
      {"long.png", kSignature + ihdr(6, 4) + tail, "more image data than a 6x4 image holds"},
      {"huge.png", kSignature + ihdr(100000, 100000) + tail, "image data too short for a 100000x100000 image"},
      {"garbage.png", kSignature + ihdr(6, 5) + png_chunk("IDAT", "not zlib at all") + png_chunk("IEND", ""),
       "corrupt compressed data"},
      {"filter.png", kSignature + ihdr(6, 5) + png_chunk("IDAT", zlib_compress(bad_filter_raw)) + png_chunk("IEND", ""),
       "bad filter type 7 in row 1"},
      {"critical.png", kSignature + ihdr(6, 5) + png_chunk("ABCD", "x") + tail, "unsupported critical chunk 'ABCD'"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    write_bytes(path(c.name), c.bytes);
    const std::string message = input_error_of([&] { pathline::read_png(path(c.name)); });
    EXPECT_CONTAINS(message, path(c.name).string() + ": ");
    EXPECT_CONTAINS(message, c.reason);
  }
  EXPECT_EQ(input_error_of([&] { pathline::read_png(path("missing.png")); }),
            path("missing.png").string() + ": no such file");

  // Every truncation is an InputError, never a crash.
  for (std::size_t n = 0; n < good.size(); ++n) {
    write_bytes(path("cut.png"), good.substr(0, n));
    EXPECT_THROW(pathline::read_png(path("cut.png")), InputError) << "cut to " << n << " bytes";
  }
  // Damaged compressed data behind a valid CRC: decoded or an InputError, never a crash.
  std::mt19937 rng(9);
  const Image big = random_image(40, 30, 9);
  const std::string raw_rows = [&] {
    std::string raw;
    for (int y = 0; y < 30; ++y) {
      raw += static_cast<char>(y % 5);
      raw.append(reinterpret_cast<const char*>(big.rgb.data()) + y * 120, 120);
    }
    return raw;
  }();
  const std::string z = zlib_compress(raw_rows);
  for (int trial = 0; trial < 300; ++trial) {
    std::string damaged = z;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int f = 0; f < flips; ++f) damaged[rng() % damaged.size()] = static_cast<char>(rng() & 0xff);
    if (trial % 10 == 0) damaged.resize(rng() % damaged.size());
    write_bytes(path("z.png"), kSignature + ihdr(40, 30) + png_chunk("IDAT", damaged) + png_chunk("IEND", ""));
    try {
      const Image decoded = pathline::read_png(path("z.png"));
      EXPECT_EQ(decoded.rgb.size(), 40u * 30u * 3u);
    } catch (const InputError&) {
    }
  }
}

TEST_F(IoTest, PngWriteRejectsInconsistentImages) {
  Image image;
  image.width = 4;
  image.height = 2;
  image.rgb.resize(23);
  EXPECT_CONTAINS(input_error_of([&] { pathline::write_png(path("i.png"), image); }),
                  path("i.png").string() + ": cannot write: a 4x2 image needs 24 bytes, it has 23");
  image.width = 0;
  image.rgb.clear();
  EXPECT_CONTAINS(input_error_of([&] { pathline::write_png(path("i.png"), image); }), "empty image");
  EXPECT_FALSE(fs::exists(path("i.png")));
}

// ------------------------------------------------------------------------------------------------
// Plots

std::uint8_t channel(const Image& im, int x, int y, int c) {
  return im.rgb[(static_cast<std::size_t>(y) * im.width + x) * 3 + c];
}
bool is_white(const Image& im, int x, int y) {
  return channel(im, x, y, 0) == 255 && channel(im, x, y, 1) == 255 && channel(im, x, y, 2) == 255;
}
bool is_blue(const Image& im, int x, int y) {
  const int r = channel(im, x, y, 0), g = channel(im, x, y, 1), b = channel(im, x, y, 2);
  return b > r + 50 && b > g + 30;
}
// A grey clearly darker than the grid lines.
bool is_grey(const Image& im, int x, int y) {
  const int r = channel(im, x, y, 0), g = channel(im, x, y, 1), b = channel(im, x, y, 2);
  return std::abs(r - g) <= 3 && std::abs(g - b) <= 3 && r < 215 && r > 100;
}
// A strongly coloured (not grey) pixel.
bool is_saturated(const Image& im, int x, int y) {
  const int r = channel(im, x, y, 0), g = channel(im, x, y, 1), b = channel(im, x, y, 2);
  return std::max({r, g, b}) - std::min({r, g, b}) > 60;
}

struct Counts {
  std::int64_t non_white = 0, blue = 0, grey = 0, saturated = 0, dark = 0;
};
Counts count(const Image& im, int x0, int y0, int x1, int y1) {
  Counts c;
  for (int y = y0; y < y1; ++y)
    for (int x = x0; x < x1; ++x) {
      c.non_white += !is_white(im, x, y);
      c.blue += is_blue(im, x, y);
      c.grey += is_grey(im, x, y);
      c.saturated += is_saturated(im, x, y);
      c.dark += channel(im, x, y, 0) < 90 && channel(im, x, y, 1) < 90 && channel(im, x, y, 2) < 90;
    }
  return c;
}

// n points around (cx, cy) with standard deviation s.
torch::Tensor blob(std::int64_t n, double cx, double cy, double s, std::int64_t dims = 2) {
  torch::Tensor t = torch::randn({n, dims}) * s;
  t.select(1, 0).add_(cx);
  t.select(1, 1).add_(cy);
  return t;
}

TEST_F(IoTest, PlotSamplesShowsDataGreyAndSamplesBlueWhereTheyAre) {
  torch::manual_seed(4);
  const int size = 400;
  // Data on the left, samples on the right.
  const Image im = pathline::plot_samples(blob(3000, -2, 0, 0.4), blob(3000, 2, 0, 0.4), size);
  ASSERT_EQ(im.width, size);
  ASSERT_EQ(im.height, size);
  ASSERT_EQ(im.rgb.size(), static_cast<std::size_t>(size) * size * 3);
  const Counts all = count(im, 0, 0, size, size);
  EXPECT_GT(all.non_white, size * size / 50);
  EXPECT_LT(all.non_white, size * size * 6 / 10);
  const Counts left = count(im, 0, 0, size / 2, size), right = count(im, size / 2, 0, size, size);
  EXPECT_GT(right.blue, 1000);
  EXPECT_LT(left.blue, 60);  // at most the legend's 7x7 swatch
  EXPECT_GT(left.grey, 1000);
  EXPECT_GT(left.grey, 3 * right.grey);  // the other side has grey axis lines and the legend's border
  // The corners of the canvas (outside the frame) stay white.
  EXPECT_TRUE(is_white(im, 0, 0));
  EXPECT_TRUE(is_white(im, size - 1, size - 1));

  // y grows upwards: samples at the top.
  const Image up = pathline::plot_samples(blob(2000, 0, -2, 0.3), blob(2000, 0, 2, 0.3), size);
  const Counts top = count(up, 0, 0, size, size / 2), bottom = count(up, 0, size / 2, size, size);
  EXPECT_GT(top.blue, 1000);
  EXPECT_LT(bottom.blue, 60);
  EXPECT_GT(bottom.grey, 1000);
  EXPECT_GT(bottom.grey, 3 * top.grey);
}

TEST_F(IoTest, PlotSamplesDrawsAFrameAndIntegerGridLines) {
  torch::manual_seed(5);
  const int size = 300;
  const Image im = pathline::plot_samples(blob(50, 0, 0, 1), blob(50, 0, 0, 1), size);
  // Along the middle row, a frame pixel on each side (dark grey) and light grid lines between.
  int frame = 0, grid = 0;
  for (int x = 0; x < size; ++x) {
    const int v = channel(im, x, 3 * size / 4, 0);
    if (v < 130 && channel(im, x, 3 * size / 4, 2) < 130) ++frame;
    if (v >= 195 && v <= 235 && channel(im, x, 3 * size / 4, 2) == v) ++grid;
  }
  EXPECT_GE(frame, 2);
  EXPECT_GE(grid, 2);
}

TEST_F(IoTest, PlotSamplesKeepsItsViewDespiteOutliersAndBadValues) {
  torch::manual_seed(6);
  const int size = 400;
  torch::Tensor data = blob(4000, 0, 0, 1, 3).to(torch::kFloat64);  // float64 and a third column
  torch::Tensor generated = blob(4000, 0, 0, 1);
  generated[0][0] = 1e6;  // a wild outlier
  generated[1][1] = std::numeric_limits<float>::quiet_NaN();
  generated[2][0] = std::numeric_limits<float>::infinity();
  const Image im = pathline::plot_samples(data, generated, size);
  const Counts all = count(im, 0, 0, size, size);
  EXPECT_GT(all.blue, 3000);  // the bulk is still spread over the canvas, not squashed into a dot
  EXPECT_GT(all.non_white, size * size / 20);

  // Empty sets are fine too.
  const Image empty = pathline::plot_samples(torch::zeros({0, 2}), torch::zeros({0, 2}), 64);
  EXPECT_EQ(empty.rgb.size(), 64u * 64u * 3u);
  const Image one = pathline::plot_samples(torch::zeros({0, 2}), torch::ones({1, 2}), 64);
  EXPECT_GT(count(one, 0, 0, 64, 64).blue, 0);
}

TEST_F(IoTest, PlotsRejectBadInputs) {
  EXPECT_CONTAINS(input_error_of([] { pathline::plot_samples(torch::zeros({5}), torch::zeros({5, 2})); }),
                  "plot_samples: data must be a real [N, D] tensor with D >= 2, got [5]");
  EXPECT_CONTAINS(input_error_of([] { pathline::plot_samples(torch::zeros({5, 2}), torch::zeros({5, 1})); }),
                  "generated must be");
  EXPECT_CONTAINS(input_error_of([] { pathline::plot_samples(torch::zeros({5, 2}), torch::zeros({5, 2}), 0); }),
                  "size must be");
  EXPECT_CONTAINS(input_error_of([] { pathline::plot_trajectories(torch::zeros({5, 2}), torch::zeros({5, 2})); }),
                  "plot_trajectories: states must be a real [steps + 1, K, 2] tensor, got [5, 2]");
}

TEST_F(IoTest, PlotTrajectoriesDrawsColouredPathlinesWithMarkedEnds) {
  torch::manual_seed(7);
  const int size = 400;
  const std::int64_t steps = 20, k = 12;
  const torch::Tensor start = torch::randn({k, 2});
  const torch::Tensor end = blob(k, 3, 3, 0.2);
  const torch::Tensor t = torch::linspace(0, 1, steps + 1).view({-1, 1, 1});
  const torch::Tensor states = (1 - t) * start.unsqueeze(0) + t * end.unsqueeze(0);  // [21, 12, 2]
  const Image im = pathline::plot_trajectories(states, blob(2000, 3, 3, 0.3), size);
  ASSERT_EQ(im.width, size);
  ASSERT_EQ(im.height, size);
  const Counts all = count(im, 0, 0, size, size);
  EXPECT_GT(all.non_white, size * size / 100);
  EXPECT_LT(all.non_white, size * size / 2);
  EXPECT_GT(all.saturated, 300);  // coloured lines and end dots
  EXPECT_GT(all.dark, 12);        // start dots

  // Without data, a single particle: still drawn; a diverging one does not break anything.
  torch::Tensor lone = torch::zeros({3, 2, 2});
  lone[1][0][0] = 1;
  lone[2][0][0] = 2;
  lone[2][1][1] = std::numeric_limits<float>::quiet_NaN();
  const Image small = pathline::plot_trajectories(lone, torch::zeros({0, 2}), 64);
  EXPECT_GT(count(small, 0, 0, 64, 64).saturated, 2);
}

TEST_F(IoTest, PlotsSaveAsPngs) {
  torch::manual_seed(8);
  const Image im = pathline::plot_samples(blob(500, 0, 0, 1), blob(500, 1, 1, 1), 200);
  pathline::write_png(path("plot.png"), im);
  const Image back = pathline::read_png(path("plot.png"));
  EXPECT_EQ(back.rgb, im.rgb);
}

}  // namespace
