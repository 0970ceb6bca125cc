// Tests of engine/src/io/: the atomic write, .npy files, PNG and JPEG pictures through stb, and
// image grids.
#include <gtest/gtest.h>
#include <stb/stb_image_write.h>
#include <sys/fsuid.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "pathline/engine/io.hpp"
#include "pathline/errors.hpp"
#include "support/support.hpp"

namespace fs = std::filesystem;
using pathline::Image;
using pathline::InputError;

namespace {

// A fresh, empty folder per test, removed afterwards.
class IoTest : public pathline::testing::FolderTest {};

// Whole files as bytes (the support helpers read and write in binary mode).
using pathline::testing::read_text;
using pathline::testing::write_text;

using pathline::testing::input_error_of;

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
      torch::Tensor t =
          dtype == torch::kInt64
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
    const std::string bytes = read_text(file);
    ASSERT_GE(bytes.size(), 10u);
    EXPECT_EQ(bytes.substr(0, 6), std::string("\x93NUMPY"));
    EXPECT_EQ(bytes[6], '\x01');  // version 1.0
    EXPECT_EQ(bytes[7], '\x00');
    const std::size_t header_len = static_cast<unsigned char>(bytes[8]) |
                                   (static_cast<std::size_t>(static_cast<unsigned char>(bytes[9])) << 8);
    const std::size_t data_offset = 10 + header_len;
    EXPECT_EQ(data_offset % 64, 0u);
    ASSERT_LE(data_offset, bytes.size());
    EXPECT_EQ(bytes.size() - data_offset,
              static_cast<std::size_t>(c.tensor.numel() * c.tensor.element_size()));
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
  const std::string bytes = read_text(path("d.npy"));
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
  write_text(path("v2.npy"), file + header + data);
  torch::Tensor t = pathline::read_npy(path("v2.npy"));
  EXPECT_TRUE(torch::equal(t, torch::tensor({1.25, -2.5}, torch::kFloat64)));

  // No padding at all (data right after the header) is legal too.
  std::string unpadded = "{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }\n";
  std::string bytes = std::string("\x93NUMPY\x01\x00", 8);
  bytes += static_cast<char>(unpadded.size());
  bytes += '\0';
  std::string one(8, '\0');
  one[0] = 7;
  write_text(path("u.npy"), bytes + unpadded + one);
  EXPECT_EQ(pathline::read_npy(path("u.npy")).item<std::int64_t>(), 7);
}

TEST_F(IoTest, NpyCorruptFilesThrowSpecificInputErrors) {
  const std::string good_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  const std::string data(24, '\0');
  write_text(path("good.npy"), make_npy(good_dict, data));
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
      {"complex.npy",
       make_npy("{'descr': '<c8', 'fortran_order': False, 'shape': (3,), }", std::string(24, '\0')),
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
      {"huge.npy",
       make_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", data),
       "malformed .npy header: shape too large"},
      {"large.npy", make_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000,), }", data),
       "truncated data (expected 8000000000 bytes, found 24)"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    write_text(path(c.name), c.bytes);
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
  const std::string good = read_text(path("f.npy"));
  for (std::size_t n = 0; n < good.size(); ++n) {
    write_text(path("cut.npy"), good.substr(0, n));
    EXPECT_THROW(pathline::read_npy(path("cut.npy")), InputError) << "cut to " << n << " bytes";
  }
  // Each header byte changed in five ways (two bit flips, the top bit, a space, a NUL): the file is
  // either rejected with one line naming it, or it reads back as a tensor that holds exactly the 48
  // data bytes, which are the original ones (a space for a space of padding changes nothing).
  const torch::Tensor original = pathline::read_npy(path("f.npy"));
  const std::size_t data_offset = good.size() - 48;
  int rejected = 0, read_back = 0, tried = 0;
  for (std::size_t i = 0; i < data_offset; ++i) {
    const auto byte = static_cast<unsigned char>(good[i]);
    for (int value : {byte ^ 0x01, byte ^ 0x20, byte ^ 0x80, int{' '}, 0}) {
      if (value == byte) continue;
      std::string bytes = good;
      bytes[i] = static_cast<char>(value);
      write_text(path("flip.npy"), bytes);
      ++tried;
      try {
        const torch::Tensor t = pathline::read_npy(path("flip.npy"));
        ++read_back;
        ASSERT_EQ(static_cast<std::size_t>(t.numel()) * t.element_size(), 48u)
            << "byte " << i << " = " << value;
        ASSERT_EQ(std::memcmp(t.data_ptr(), original.data_ptr(), 48), 0) << "byte " << i << " = " << value;
      } catch (const InputError& e) {
        ++rejected;
        const std::string message = e.what();
        ASSERT_EQ(message.find(path("flip.npy").string() + ": "), 0u) << message;
        ASSERT_EQ(message.find('\n'), std::string::npos) << message;
      }
    }
  }
  EXPECT_EQ(rejected + read_back, tried);
  // Magic, version, header length, keys, dtype and shape cannot change unnoticed; of the padding, a
  // tab or a space in place of a space is harmless (' ' ^ 0x20 is NUL, which is rejected too).
  EXPECT_GT(rejected, tried * 9 / 10);
  EXPECT_GT(read_back, 0);
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
  image.channels = 3;
  image.pixels = {1, 2, 3, 4, 5, 6};
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

std::string python_with_numpy() { return pathline::testing::python_with({"numpy"}); }

TEST_F(IoTest, NpyFilesLoadInNumpy) {
  const std::string python = python_with_numpy();
  if (python.empty()) GTEST_SKIP() << pathline::testing::python() << " has no numpy";
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
        python +
        " -c \"import numpy as np, sys; a = np.load(sys.argv[1], allow_pickle=False); "
        "print(a.dtype.str + '|' + ','.join(map(str, a.shape)) + '|' + repr(a.sum().item()))\" '" +
        file.string() + "' > '" + out.string() + "' 2>&1";
    ASSERT_EQ(std::system(command.c_str()), 0) << read_text(out);
    std::string got = read_text(out);
    while (!got.empty() && (got.back() == '\n' || got.back() == '\r')) got.pop_back();
    EXPECT_EQ(got, c.expected);
  }
}

TEST_F(IoTest, NpyReadsWhatNumpyWrites) {
  const std::string python = python_with_numpy();
  if (python.empty()) GTEST_SKIP() << pathline::testing::python() << " has no numpy";
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
  write_text(path("make.py"), script);
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
// The atomic write and whole-file reads

// Every file in the folder, sorted (temporaries start with '.', so they show up here too).
std::vector<std::string> names_in(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

TEST_F(IoTest, WriteFileAtomicWritesReadFileReadsBack) {
  std::string bytes(300000, '\0');
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 7 % 251);
  pathline::write_file_atomic(path("a.bin"), bytes);
  EXPECT_EQ(pathline::read_file(path("a.bin")), bytes);
  pathline::write_file_atomic(path("a.bin"), "short");
  EXPECT_EQ(pathline::read_file(path("a.bin")), "short");
  pathline::write_file_atomic(path("empty"), "");
  EXPECT_EQ(pathline::read_file(path("empty")), "");
  EXPECT_EQ(names_in(dir_), (std::vector<std::string>{"a.bin", "empty"}));

  EXPECT_EQ(input_error_of([&] { pathline::read_file(path("missing")); }),
            path("missing").string() + ": no such file");
  EXPECT_EQ(input_error_of([&] { pathline::read_file(dir_); }),
            dir_.string() + ": is a directory, not a file");
}

TEST_F(IoTest, WriteFileAtomicOntoADirectoryFailsAndLeavesItAlone) {
  fs::create_directories(path("target"));
  write_text(path("target/inside"), "kept");
  const std::string message = input_error_of([&] { pathline::write_file_atomic(path("target"), "new"); });
  EXPECT_EQ(message, path("target").string() + ": cannot write: is a directory, not a file");
  EXPECT_TRUE(fs::is_directory(path("target")));
  EXPECT_EQ(read_text(path("target/inside")), "kept");
  EXPECT_EQ(names_in(dir_), (std::vector<std::string>{"target"}));
}

TEST_F(IoTest, WriteFileAtomicInAReadOnlyFolderKeepsTheOldContent) {
  const fs::path folder = path("locked");
  fs::create_directories(folder);
  pathline::write_file_atomic(folder / "f.txt", "old content");
  fs::permissions(folder, fs::perms::owner_read | fs::perms::owner_exec | fs::perms::group_read |
                              fs::perms::group_exec | fs::perms::others_read | fs::perms::others_exec);
  // Root ignores folder permissions; this thread drops to "nobody" for file access (setfsuid is
  // per thread on Linux and gives up CAP_DAC_OVERRIDE with the id), and takes root back after.
  const bool was_root = ::geteuid() == 0;
  if (was_root) {
    ::setfsuid(65534);
    if (::setfsuid(-1) != 65534) {
      fs::permissions(folder, fs::perms::owner_all);
      GTEST_SKIP() << "cannot drop file access rights for this test (setfsuid refused)";
    }
  }
  const std::string message =
      input_error_of([&] { pathline::write_file_atomic(folder / "f.txt", "new content"); });
  if (was_root) ::setfsuid(0);
  fs::permissions(folder, fs::perms::owner_all);
  EXPECT_EQ(message, (folder / "f.txt").string() + ": cannot write: Permission denied");
  EXPECT_EQ(read_text(folder / "f.txt"), "old content");
  EXPECT_EQ(names_in(folder), (std::vector<std::string>{"f.txt"}));
}

TEST_F(IoTest, WriteFileAtomicRejectsNamesThatAreNotFiles) {
  EXPECT_CONTAINS(input_error_of([&] { pathline::write_file_atomic(dir_ / "", "x"); }),
                  ": cannot write: not a file name");
  EXPECT_CONTAINS(input_error_of([&] { pathline::write_file_atomic(dir_ / "..", "x"); }),
                  ": cannot write: not a file name");
  write_text(path("plain"), "file");
  const std::string under_file = input_error_of([&] { pathline::write_file_atomic(path("plain/x"), "x"); });
  EXPECT_EQ(under_file, path("plain/x").string() + ": cannot write: Not a directory");
  EXPECT_EQ(read_text(path("plain")), "file");
}

// ------------------------------------------------------------------------------------------------
// Pictures

Image random_image(int width, int height, int channels, unsigned seed) {
  std::mt19937 rng(seed);
  Image image;
  image.width = width;
  image.height = height;
  image.channels = channels;
  image.pixels.resize(static_cast<std::size_t>(width) * height * channels);
  for (auto& v : image.pixels) v = static_cast<std::uint8_t>(rng() & 0xff);
  return image;
}

TEST_F(IoTest, PngRoundTripIsExactForGreyRgbAndRgba) {
  for (int channels : {1, 2, 3, 4}) {
    SCOPED_TRACE(channels);
    const Image image = random_image(37, 23, channels, 10 + channels);
    pathline::write_png(path("r.png"), image);
    EXPECT_EQ(read_text(path("r.png")).substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
    const Image back = pathline::read_image(path("r.png"));
    EXPECT_EQ(back.width, 37);
    EXPECT_EQ(back.height, 23);
    EXPECT_EQ(back.channels, channels);
    EXPECT_EQ(back.pixels, image.pixels);
  }
  // Asking for the channels the file has changes nothing.
  const Image grey = random_image(8, 5, 1, 20);
  pathline::write_png(path("g.png"), grey);
  EXPECT_EQ(pathline::read_image(path("g.png"), 1).pixels, grey.pixels);
  const Image rgb = random_image(8, 5, 3, 21);
  pathline::write_png(path("c.png"), rgb);
  EXPECT_EQ(pathline::read_image(path("c.png"), 3).pixels, rgb.pixels);
}

TEST_F(IoTest, ReadImageConvertsChannels) {
  Image colours;
  colours.width = 3;
  colours.height = 1;
  colours.channels = 3;
  colours.pixels = {255, 0, 0, 0, 255, 0, 10, 20, 30};
  pathline::write_png(path("c.png"), colours);
  // Luminance with the BT.601 weights stb_image uses: (77 R + 150 G + 29 B) >> 8.
  const Image grey = pathline::read_image(path("c.png"), 1);
  EXPECT_EQ(grey.channels, 1);
  EXPECT_EQ(grey.pixels, (std::vector<std::uint8_t>{76, 149, (77 * 10 + 150 * 20 + 29 * 30) >> 8}));

  Image level;
  level.width = 2;
  level.height = 2;
  level.channels = 1;
  level.pixels = {0, 100, 200, 255};
  pathline::write_png(path("g.png"), level);
  const Image rgb = pathline::read_image(path("g.png"), 3);
  EXPECT_EQ(rgb.channels, 3);
  EXPECT_EQ(rgb.pixels, (std::vector<std::uint8_t>{0, 0, 0, 100, 100, 100, 200, 200, 200, 255, 255, 255}));

  // RGBA to RGB drops the alpha.
  Image rgba = random_image(4, 3, 4, 22);
  pathline::write_png(path("a.png"), rgba);
  const Image dropped = pathline::read_image(path("a.png"), 3);
  ASSERT_EQ(dropped.pixels.size(), 4u * 3u * 3u);
  for (std::size_t i = 0; i < 12; ++i)
    for (int c = 0; c < 3; ++c) EXPECT_EQ(dropped.pixels[i * 3 + c], rgba.pixels[i * 4 + c]);

  EXPECT_EQ(
      input_error_of([&] { pathline::read_image(path("a.png"), 2); }),
      path("a.png").string() + ": cannot read as 2 channels: ask for 0 (as stored), 1 (grey) or 3 (RGB)");
}

// A smooth picture (JPEG's home ground) of the given channels, encoded by stb_image_write.
std::string jpeg_of(const Image& image, int quality) {
  std::string out;
  auto append = [](void* context, void* data, int size) {
    static_cast<std::string*>(context)->append(static_cast<const char*>(data),
                                               static_cast<std::size_t>(size));
  };
  EXPECT_NE(stbi_write_jpg_to_func(append, &out, image.width, image.height, image.channels,
                                   image.pixels.data(), quality),
            0);
  return out;
}

Image gradient(int width, int height, int channels) {
  Image image;
  image.width = width;
  image.height = height;
  image.channels = channels;
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x)
      for (int c = 0; c < channels; ++c)
        image.pixels.push_back(static_cast<std::uint8_t>(std::lround(
            127.5 + 100 * std::sin(0.11 * x + 0.05 * y + 2.0 * c) * std::cos(0.07 * y - 0.3 * c))));
  return image;
}

double mean_abs_error(const std::vector<std::uint8_t>& a, const std::vector<std::uint8_t>& b) {
  EXPECT_EQ(a.size(), b.size());
  double sum = 0;
  for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i) sum += std::abs(int{a[i]} - int{b[i]});
  return sum / static_cast<double>(std::max<std::size_t>(a.size(), 1));
}

TEST_F(IoTest, JpegReadsBackCloseToWhatWasEncoded) {
  const Image colour = gradient(64, 48, 3);
  write_text(path("c.jpg"), jpeg_of(colour, 95));
  const Image back = pathline::read_image(path("c.jpg"));
  EXPECT_EQ(back.width, 64);
  EXPECT_EQ(back.height, 48);
  EXPECT_EQ(back.channels, 3);
  const double error = mean_abs_error(back.pixels, colour.pixels);
  EXPECT_LT(error, 3.0);
  EXPECT_GT(error, 0.0);  // lossy: had it been exact, this would not be the JPEG path

  const Image grey = gradient(40, 30, 1);
  write_text(path("g.jpeg"), jpeg_of(grey, 95));
  // stb_image_write stores every JPEG as YCbCr, so grey comes back through the luminance.
  const Image grey_back = pathline::read_image(path("g.jpeg"), 1);
  EXPECT_EQ(grey_back.channels, 1);
  EXPECT_LT(mean_abs_error(grey_back.pixels, grey.pixels), 3.0);
  // By content, not by name: a JPEG called .png is still read as the JPEG it is.
  write_text(path("really_a_jpeg.png"), jpeg_of(grey, 95));
  EXPECT_EQ(pathline::read_image(path("really_a_jpeg.png"), 3).channels, 3);
}

TEST_F(IoTest, BrokenPicturesThrowInputErrorsNamingTheFile) {
  pathline::write_png(path("good.png"), random_image(16, 12, 3, 30));
  const std::string png = read_text(path("good.png"));
  const std::string jpeg = jpeg_of(gradient(32, 24, 3), 90);
  std::string bad_zlib = png;
  const std::size_t idat = bad_zlib.find("IDAT");
  ASSERT_NE(idat, std::string::npos);
  bad_zlib[idat + 4] = '\0';  // the zlib header's first byte: compression method 0 does not exist
  std::string bad_colour_type = png;
  bad_colour_type[25] = 7;  // IHDR colour type (PNG 11.2.2): 0, 2, 3, 4 or 6
  std::string bad_jpeg_marker = jpeg;
  bad_jpeg_marker[3] = '\x01';  // right after SOI: not a marker stb knows

  struct Case {
    std::string name, bytes, reason;
  };
  const std::vector<Case> cases = {
      {"empty.png", "", "empty file, not a PNG or JPEG image"},
      {"text.png", "hello, this is text", "not a PNG or JPEG image (it starts with 68 65 6c 6c 6f 2c 20 74)"},
      {"bmp.png", std::string("BM\x36\x00\x00\x00", 6),
       "not a PNG or JPEG image (it starts with 42 4d 36 00 00 00)"},
      {"signature_only.png", png.substr(0, 8), "truncated PNG"},
      {"cut.png", png.substr(0, png.size() / 2), "truncated PNG"},
      {"no_iend.png", png.substr(0, png.size() - 12), "truncated PNG"},
      {"cut.jpg", jpeg.substr(0, jpeg.size() / 2), "truncated JPEG"},
      {"soi_only.jpg", jpeg.substr(0, 3), "truncated JPEG"},
      {"zlib.png", bad_zlib, "corrupt or truncated PNG image (stb_image: "},
      {"colour_type.png", bad_colour_type, "corrupt PNG header (stb_image: "},
      {"marker.jpg", bad_jpeg_marker, "corrupt JPEG header (stb_image: "},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    write_text(path(c.name), c.bytes);
    const std::string message = input_error_of([&] { pathline::read_image(path(c.name)); });
    EXPECT_EQ(message.find(path(c.name).string() + ": "), 0u) << message;
    EXPECT_CONTAINS(message, c.reason);
    EXPECT_EQ(message.find('\n'), std::string::npos);
  }
  EXPECT_EQ(input_error_of([&] { pathline::read_image(path("missing.png")); }),
            path("missing.png").string() + ": no such file");
  EXPECT_CONTAINS(input_error_of([&] { pathline::read_image(dir_); }), "is a directory");
}

TEST_F(IoTest, DamagedPicturesNeverCrash) {
  pathline::write_png(path("good.png"), random_image(24, 16, 3, 40));
  const std::string png = read_text(path("good.png"));
  const std::string jpeg = jpeg_of(gradient(48, 32, 3), 90);
  // Every cut is an InputError: a whole PNG ends with IEND, a whole JPEG with EOI. (Cuts through
  // the headers every few bytes, and each of the last 32: a slow disk makes each try cost.)
  for (const std::string* good : {&png, &jpeg}) {
    const std::size_t step = std::max<std::size_t>(1, good->size() / 120);
    for (std::size_t n = 0; n < good->size(); n += n + 32 >= good->size() ? 1 : step) {
      write_text(path("cut"), good->substr(0, n));
      EXPECT_THROW(pathline::read_image(path("cut")), InputError) << "cut to " << n << " of " << good->size();
    }
  }
  // Random damage: decoded to a picture of the declared size, or an InputError; never a crash.
  std::mt19937 rng(41);
  int decoded = 0, rejected = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::string bytes = trial % 2 ? png : jpeg;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) bytes[rng() % bytes.size()] = static_cast<char>(rng() & 0xff);
    write_text(path("damaged"), bytes);
    try {
      const Image image = pathline::read_image(path("damaged"), 3);
      ++decoded;
      ASSERT_EQ(image.pixels.size(), static_cast<std::size_t>(image.width) * image.height * 3);
    } catch (const InputError& e) {
      ++rejected;
      ASSERT_EQ(std::string(e.what()).find(path("damaged").string() + ": "), 0u) << e.what();
    }
  }
  // Both outcomes occur: flips in pixel data decode, flips in headers and lengths are refused.
  EXPECT_GT(decoded, 0);
  EXPECT_GT(rejected, 0);
}

TEST_F(IoTest, WritePngRejectsInconsistentImagesAndWritesNothing) {
  Image image;
  image.width = 4;
  image.height = 2;
  image.channels = 3;
  image.pixels.resize(23);
  EXPECT_EQ(input_error_of([&] { pathline::write_png(path("i.png"), image); }),
            path("i.png").string() + ": cannot write: a 4x2 RGB image needs 24 bytes, it has 23");
  image.channels = 5;
  EXPECT_CONTAINS(input_error_of([&] { pathline::write_png(path("i.png"), image); }),
                  "cannot write an image with 5 channels");
  image.width = 0;
  image.channels = 3;
  image.pixels.clear();
  EXPECT_CONTAINS(input_error_of([&] { pathline::write_png(path("i.png"), image); }),
                  "cannot write an empty image (0x2)");
  EXPECT_TRUE(fs::is_empty(dir_));
}

// ------------------------------------------------------------------------------------------------
// Image grids

std::uint8_t pixel(const Image& im, int x, int y, int c = 0) {
  return im.pixels[(static_cast<std::size_t>(y) * im.width + x) * im.channels + c];
}

TEST_F(IoTest, ImageGridLaysTilesOutInRowsWithPadding) {
  // Five 2x3 grey tiles, tile i filled with i / 8 (so none is white), 2 per row, 1 pixel apart.
  const std::int64_t n = 5, h = 2, w = 3;
  torch::Tensor images =
      torch::arange(n, torch::kFloat32).div(8).view({n, 1, 1, 1}).expand({n, 1, h, w}).clone();
  images[3][0][1][2] = 0.5f;  // one marked pixel: tile 3's bottom-right corner
  const Image grid = pathline::image_grid(images, 2, 0.0, 1.0, 1);
  ASSERT_EQ(grid.channels, 1);
  ASSERT_EQ(grid.width, 2 * 3 + 1);
  ASSERT_EQ(grid.height, 3 * 2 + 2);
  ASSERT_EQ(grid.pixels.size(), 7u * 8u);
  auto byte = [](double v) { return static_cast<std::uint8_t>(std::lround(v * 255)); };
  for (std::int64_t i = 0; i < n; ++i) {
    SCOPED_TRACE(i);
    const int x0 = static_cast<int>(i % 2) * 4, y0 = static_cast<int>(i / 2) * 3;
    EXPECT_EQ(pixel(grid, x0, y0), byte(i / 8.0));
    EXPECT_EQ(pixel(grid, x0 + 1, y0 + 1), byte(i / 8.0));
    if (i != 3) {
      EXPECT_EQ(pixel(grid, x0 + 2, y0 + 1), byte(i / 8.0));
    }
  }
  EXPECT_EQ(pixel(grid, 4 + 2, 3 + 1), byte(0.5));  // the marked pixel, where tile 3 puts it
  EXPECT_EQ(pixel(grid, 4 + 1, 3 + 1), byte(3 / 8.0));
  for (int y = 0; y < grid.height; ++y)
    EXPECT_EQ(pixel(grid, 3, y), 255) << "column between tiles, row " << y;
  for (int x = 0; x < grid.width; ++x) EXPECT_EQ(pixel(grid, x, 2), 255) << "row between tiles, column " << x;
  for (int y = 6; y < 8; ++y)
    for (int x = 4; x < 7; ++x) EXPECT_EQ(pixel(grid, x, y), 255) << "the empty sixth place";

  // More columns than images: one row, as wide as the images.
  const Image row = pathline::image_grid(images, 10, 0.0, 1.0, 0);
  EXPECT_EQ(row.width, 15);
  EXPECT_EQ(row.height, 2);
}

TEST_F(IoTest, ImageGridMapsTheValueRangeAndKeepsColours) {
  // Two 1x2 RGB tiles in [-1, 1], with values outside the range and a NaN.
  torch::Tensor images = torch::tensor({-1.0f, 1.0f, 0.0f, 0.5f, -3.0f, 7.0f,  // tile 0: R, G, B planes
                                        std::nanf(""), -1.0f, 1.0f, 1.0f, 0.0f, 0.0f})
                             .view({2, 3, 1, 2});
  const Image grid = pathline::image_grid(images, 2, -1.0, 1.0, 0);
  ASSERT_EQ(grid.channels, 3);
  ASSERT_EQ(grid.width, 4);
  ASSERT_EQ(grid.height, 1);
  const std::vector<std::uint8_t> expected = {
      0,   128, 0,    // tile 0, x 0: R -1 -> 0, G 0 -> 127.5 -> 128, B -3 clamped to 0
      255, 191, 255,  // tile 0, x 1: R 1, G 0.5 -> 191.25, B 7 clamped to 255
      0,   255, 128,  // tile 1, x 0: NaN shows as the low end
      0,   255, 128};
  EXPECT_EQ(grid.pixels, expected);
  // Written as a PNG and read back unchanged.
  pathline::write_png(path("grid.png"), grid);
  EXPECT_EQ(pathline::read_image(path("grid.png")).pixels, expected);
}

TEST_F(IoTest, ImageGridRejectsBadInputs) {
  EXPECT_CONTAINS(
      input_error_of([] {
        pathline::image_grid(torch::zeros({2, 2, 4, 4}), 2, 0, 1);
      }),
      "image_grid: images must be a real [N, C, H, W] tensor with N >= 1 and C 1 or 3, got [2, 2, 4, 4]");
  EXPECT_CONTAINS(input_error_of([] { pathline::image_grid(torch::zeros({4, 4}), 2, 0, 1); }), "got [4, 4]");
  EXPECT_CONTAINS(input_error_of([] {
                    pathline::image_grid(torch::zeros({0, 1, 4, 4}), 2, 0, 1);
                  }),
                  "got [0, 1, 4, 4]");
  EXPECT_CONTAINS(input_error_of([] { pathline::image_grid(torch::Tensor(), 2, 0, 1); }),
                  "an undefined tensor");
  EXPECT_EQ(input_error_of([] {
              pathline::image_grid(torch::zeros({1, 1, 4, 4}), 0, 0, 1);
            }),
            "image_grid: cols must be at least 1, got 0");
  EXPECT_CONTAINS(input_error_of([] {
                    pathline::image_grid(torch::zeros({1, 1, 4, 4}), 1, 1, 1);
                  }),
                  "image_grid: the value range needs finite lo < hi");
  EXPECT_EQ(input_error_of([] {
              pathline::image_grid(torch::zeros({1, 1, 4, 4}), 1, 0, 1, -1);
            }),
            "image_grid: pad must be 0 or more pixels, got -1");
}

}  // namespace
