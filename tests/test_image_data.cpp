// Tests of the image data sets (plugin datasets-image: fashion_mnist on Debian's files and on damaged
// copies, image_folder on generated trees of PNG and JPEG pictures) and of the Fashion-MNIST
// classifier metrics (plugin metrics-fmnist: class_accuracy and fd_fmnist with a small classifier
// trained into a temporary cache).
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <stb/stb_image_write.h>
#include <torch/torch.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "pathline/errors.hpp"
#include "pathline/plugin.hpp"
#include "support/support.hpp"

namespace fs = std::filesystem;

namespace pathline {
namespace {

using testing::default_params;
using testing::TempDir;

const char* const kFashionRoot = "/usr/share/datasets/fashion-mnist";

template <class Interface>
std::shared_ptr<Interface> make(const std::string& name,
                                const std::map<std::string, ParamValue>& changes = {},
                                const BuildContext& ctx = {}) {
  const Registry& registry = testing::builtin_registry();
  return registry.create<Interface>(name, default_params(registry, KindOf<Interface>::value, name, changes),
                                    ctx);
}

std::shared_ptr<Dataset> fashion(const std::map<std::string, ParamValue>& changes = {}) {
  return make<Dataset>("fashion_mnist", changes);
}

at::Generator generator(std::uint64_t seed) { return at::detail::createCPUGenerator(seed); }

using testing::input_error_of;

// One number per image that tells images apart: their pixels against fixed random weights.
torch::Tensor fingerprints(const torch::Tensor& x) {
  const torch::Tensor flat = x.reshape({x.size(0), -1}).to(torch::kFloat64);
  const torch::Tensor weights =
      torch::rand({flat.size(1)}, generator(99), torch::TensorOptions().dtype(torch::kFloat64));
  return flat.mv(weights);
}

std::int64_t split_size(Dataset& data, at::Generator& gen) {
  data.sample(1, gen);
  return data.state().at("order").numel();
}

// ------------------------------------------------------------------------------------------------
// fashion_mnist on Debian's files

TEST(FashionMnist, DescribesItselfAndHasBothSplits) {
  auto train = fashion();
  const DataInfo info = train->info();
  EXPECT_EQ(info.shape, (std::vector<std::int64_t>{1, 28, 28}));
  EXPECT_EQ(info.num_classes, 10);
  ASSERT_EQ(info.class_names.size(), 10u);
  EXPECT_EQ(info.class_names[0], "T-shirt/top");
  EXPECT_EQ(info.class_names[9], "Ankle boot");
  EXPECT_EQ(info.min_value, -1.0);
  EXPECT_EQ(info.max_value, 1.0);
  at::Generator gen = generator(1);
  EXPECT_EQ(split_size(*train, gen), 60000);
  EXPECT_EQ(split_size(*fashion({{"split", std::string("test")}}), gen), 10000);
  EXPECT_EQ(split_size(*fashion({{"split", std::string("test")}, {"limit", std::int64_t{250}}}), gen), 250);
}

TEST(FashionMnist, FirstTestImageMatchesAPythonDecode) {
  // From gzip + numpy: the first test image is an ankle boot (9); its byte sum is 33456 and row 14,
  // columns 10-17, reads 0 0 98 136 110 109 110 162.
  auto first = fashion({{"split", std::string("test")}, {"limit", std::int64_t{1}}});
  at::Generator gen = generator(2);
  Batch batch = first->sample(1, gen);
  ASSERT_EQ(batch.x.sizes(), (std::vector<std::int64_t>{1, 1, 28, 28}));
  EXPECT_EQ(batch.x.scalar_type(), torch::kFloat32);
  EXPECT_EQ(batch.labels.scalar_type(), torch::kInt64);
  EXPECT_EQ(batch.labels.item<std::int64_t>(), 9);
  const torch::Tensor bytes = batch.x.add(1.0).mul(127.5).round().to(torch::kInt64);
  EXPECT_EQ(bytes.sum().item<std::int64_t>(), 33456);
  const std::vector<std::int64_t> row = {0, 0, 98, 136, 110, 109, 110, 162};
  for (std::int64_t c = 0; c < 8; ++c) EXPECT_EQ(bytes[0][0][14][10 + c].item<std::int64_t>(), row[c]) << c;
  EXPECT_FLOAT_EQ(batch.x[0][0][14][12].item<float>(), static_cast<float>(98 / 127.5 - 1.0));
}

TEST(FashionMnist, OneEpochInBatchesDrawsEveryImageOnce) {
  // The whole train split in batches that do not divide it: the first 60,000 draws are one epoch,
  // 6,000 of each class (the data set is balanced), values in [-1, 1].
  auto train = fashion();
  at::Generator gen = generator(3);
  std::vector<torch::Tensor> labels, x;
  for (int b = 0; b < 9; ++b) {
    Batch batch = train->sample(7000, gen);
    labels.push_back(batch.labels);
    if (b == 0) x.push_back(batch.x);
  }
  const torch::Tensor all = torch::cat(labels);
  EXPECT_TRUE(torch::equal(all.narrow(0, 0, 60000).bincount(), torch::full({10}, 6000, torch::kInt64)));
  EXPECT_EQ(train->state().at("epoch").item<std::int64_t>(), 2);
  EXPECT_EQ(train->state().at("position").item<std::int64_t>(), 3000);
  EXPECT_GE(x[0].min().item<float>(), -1.0f);
  EXPECT_LE(x[0].max().item<float>(), 1.0f);
  EXPECT_EQ(x[0].min().item<float>(), -1.0f);  // black backgrounds
  EXPECT_EQ(x[0].max().item<float>(), 1.0f);

  // On a smaller split, two epochs drawn in uneven batches hold the same images in another order.
  auto test = fashion({{"split", std::string("test")}, {"limit", std::int64_t{1000}}});
  std::vector<torch::Tensor> drawn;
  for (std::int64_t n : {300, 300, 300, 400, 300, 300, 100}) drawn.push_back(test->sample(n, gen).x);
  const torch::Tensor prints = fingerprints(torch::cat(drawn));
  const torch::Tensor first = prints.narrow(0, 0, 1000), second = prints.narrow(0, 1000, 1000);
  EXPECT_TRUE(torch::equal(std::get<0>(first.sort()), std::get<0>(second.sort())));
  EXPECT_FALSE(torch::equal(first, second));
  EXPECT_GE(std::get<0>(torch::_unique(first)).numel(), 990);  // nearly all distinct pictures
}

TEST(FashionMnist, StateRoundTripContinuesTheSameDraws) {
  for (bool flip : {false, true}) {
    SCOPED_TRACE(flip ? "flip" : "no flip");
    const std::map<std::string, ParamValue> params = {
        {"split", std::string("test")}, {"limit", std::int64_t{1000}}, {"flip", flip}};
    auto first = fashion(params);
    at::Generator gen = generator(4);
    for (int k = 0; k < 3; ++k) first->sample(300, gen);  // 900 of 1000: the next batch straddles
    const Dataset::State saved = first->state();
    EXPECT_EQ(saved.at("position").item<std::int64_t>(), 900);
    at::Generator gen_copy = gen.clone();

    auto second = fashion(params);
    second->set_state(saved);
    for (std::int64_t n : {300, 250, 1200}) {
      Batch a = first->sample(n, gen), b = second->sample(n, gen_copy);
      EXPECT_TRUE(torch::equal(a.x, b.x)) << n;
      EXPECT_TRUE(torch::equal(a.labels, b.labels)) << n;
    }
    EXPECT_EQ(first->state().at("epoch").item<std::int64_t>(), 3);
    EXPECT_TRUE(torch::equal(first->state().at("order"), second->state().at("order")));

    // A state from before any draw restores a fresh sampler.
    auto fresh = fashion(params), restored = fashion(params);
    restored->set_state(fresh->state());
    at::Generator g1 = generator(5), g2 = generator(5);
    EXPECT_TRUE(torch::equal(fresh->sample(50, g1).x, restored->sample(50, g2).x));
  }
  // A state saved with another limit does not fit, and says so.
  auto other = fashion({{"split", std::string("test")}, {"limit", std::int64_t{500}}});
  at::Generator gen = generator(6);
  other->sample(10, gen);
  auto bigger = fashion({{"split", std::string("test")}, {"limit", std::int64_t{1000}}});
  EXPECT_CONTAINS(input_error_of([&] { bigger->set_state(other->state()); }), "does not fit");
}

TEST(FashionMnist, FlipMirrorsSomeImagesAndKeepsLabels) {
  const std::map<std::string, ParamValue> params = {{"split", std::string("test")},
                                                    {"limit", std::int64_t{400}}};
  auto plain = fashion(params);
  auto flipped = fashion({{"split", std::string("test")}, {"limit", std::int64_t{400}}, {"flip", true}});
  // The permutation is drawn first, so the first batch holds the same images in the same order.
  at::Generator g1 = generator(7), g2 = generator(7);
  Batch a = plain->sample(200, g1), b = flipped->sample(200, g2);
  EXPECT_TRUE(torch::equal(a.labels, b.labels));
  const torch::Tensor same = a.x.eq(b.x).flatten(1).all(1);
  const torch::Tensor mirrored = a.x.flip({3}).eq(b.x).flatten(1).all(1);
  EXPECT_TRUE(same.logical_or(mirrored).all().item<bool>());
  const std::int64_t changed = same.logical_not().sum().item<std::int64_t>();
  EXPECT_GT(changed, 60);
  EXPECT_LT(changed, 140);
}

// ------------------------------------------------------------------------------------------------
// fashion_mnist on damaged copies

// A folder of small idx files, gzip-compressed with the gzip command, that each test damages in
// one way.
class FashionMnistCorrupt : public testing::FolderTest {
 protected:
  static std::string be32(std::uint32_t v) {
    return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
            static_cast<char>(v)};
  }
  static std::string idx(std::uint32_t magic, const std::vector<std::uint32_t>& dims,
                         const std::string& data) {
    std::string out = be32(magic);
    for (auto d : dims) out += be32(d);
    return out + data;
  }
  static std::string images(std::uint32_t count, std::uint32_t stored) {
    return idx(0x803, {count, 28, 28}, std::string(stored * 784, '\x40'));
  }
  static std::string labels(std::uint32_t count, std::uint32_t stored, char value = 3) {
    return idx(0x801, {count}, std::string(stored, value));
  }
  // Writes `name` (ending in .gz) gzip-compressed.
  void write_gz(const std::string& name, const std::string& bytes) {
    const fs::path raw = path(name.substr(0, name.size() - 3));
    testing::write_text(raw, bytes);
    ASSERT_EQ(std::system(("gzip -n -f '" + raw.string() + "'").c_str()), 0);
  }
  // A complete, valid data set of 5 train and 4 test images.
  void write_valid() {
    write_gz("train-images-idx3-ubyte.gz", images(5, 5));
    write_gz("train-labels-idx1-ubyte.gz", labels(5, 5));
    write_gz("t10k-images-idx3-ubyte.gz", images(4, 4));
    write_gz("t10k-labels-idx1-ubyte.gz", labels(4, 4));
  }
  std::string error(const std::string& split = "train") {
    return input_error_of([&] { fashion({{"root", dir_.string()}, {"split", split}}); });
  }
};

TEST_F(FashionMnistCorrupt, AValidCopyReads) {
  write_valid();
  auto data = fashion({{"root", dir_.string()}});
  at::Generator gen = generator(8);
  Batch batch = data->sample(5, gen);
  EXPECT_TRUE(torch::allclose(batch.x, torch::full({5, 1, 28, 28}, 64 / 127.5 - 1.0)));
  EXPECT_TRUE(torch::equal(batch.labels, torch::full({5}, 3, torch::kInt64)));
}

TEST_F(FashionMnistCorrupt, MissingFilesSayHowToGetThem) {
  const std::string message = error();
  EXPECT_CONTAINS(message, "fashion_mnist");
  EXPECT_CONTAINS(message, (dir_ / "train-images-idx3-ubyte.gz").string());
  EXPECT_CONTAINS(message, "dataset-fashion-mnist");
  EXPECT_CONTAINS(message, "root");
  write_valid();
  fs::remove(path("t10k-labels-idx1-ubyte.gz"));
  EXPECT_CONTAINS(error("test"), "t10k-labels-idx1-ubyte.gz");
  EXPECT_NO_THROW(fashion({{"root", dir_.string()}}));
}

TEST_F(FashionMnistCorrupt, TruncatedOrCorruptGzip) {
  write_valid();
  const fs::path file = path("train-images-idx3-ubyte.gz");
  const std::string whole = testing::read_text(file);
  testing::write_text(file, whole.substr(0, whole.size() / 2));
  std::string message = error();
  EXPECT_CONTAINS(message, file.string());
  EXPECT_CONTAINS(message, "truncated gzip");

  // The gzip trailer's CRC no longer matches the data.
  std::string damaged = whole;
  damaged[damaged.size() - 8] = static_cast<char>(damaged[damaged.size() - 8] ^ 0x55);
  testing::write_text(file, damaged);
  message = error();
  EXPECT_CONTAINS(message, file.string());
  EXPECT_CONTAINS(message, "gzip");
}

TEST_F(FashionMnistCorrupt, WrongMagicNumber) {
  write_valid();
  write_gz("train-images-idx3-ubyte.gz", idx(0x801, {5, 28, 28}, std::string(5 * 784, '\0')));
  const std::string message = error();
  EXPECT_CONTAINS(message, "train-images-idx3-ubyte.gz");
  EXPECT_CONTAINS(message, "magic number 0x00000801");
  // The labels file given as images.
  write_valid();
  write_gz("t10k-labels-idx1-ubyte.gz", images(4, 4));
  EXPECT_CONTAINS(error("test"), "t10k-labels-idx1-ubyte.gz: wrong magic number");
}

TEST_F(FashionMnistCorrupt, LabelCountDiffersFromImageCount) {
  write_valid();
  write_gz("train-labels-idx1-ubyte.gz", labels(4, 4));
  const std::string message = error();
  EXPECT_CONTAINS(message, "train-labels-idx1-ubyte.gz");
  EXPECT_CONTAINS(message, "4 labels");
  EXPECT_CONTAINS(message, "5 images");
}

TEST_F(FashionMnistCorrupt, ShortDataAndBadLabels) {
  write_valid();
  write_gz("train-images-idx3-ubyte.gz", images(5, 3));
  std::string message = error();
  EXPECT_CONTAINS(message, "train-images-idx3-ubyte.gz");
  EXPECT_CONTAINS(message, "short data");
  // A limit within the data reads; the images beyond it are not looked at.
  EXPECT_NO_THROW(fashion({{"root", dir_.string()}, {"limit", std::int64_t{3}}}));

  write_valid();
  write_gz("train-labels-idx1-ubyte.gz", labels(5, 2));
  EXPECT_CONTAINS(error(), "train-labels-idx1-ubyte.gz: short data");

  write_valid();
  write_gz("train-labels-idx1-ubyte.gz", labels(5, 5, 12));
  message = error();
  EXPECT_CONTAINS(message, "train-labels-idx1-ubyte.gz");
  EXPECT_CONTAINS(message, "label 12");
  EXPECT_CONTAINS(message, "outside 0-9");

  // Images of another size are not Fashion-MNIST's.
  write_valid();
  write_gz("train-images-idx3-ubyte.gz", idx(0x803, {5, 32, 32}, std::string(5 * 1024, '\0')));
  EXPECT_CONTAINS(error(), "32x32");
}

// ------------------------------------------------------------------------------------------------
// image_folder

class ImageFolder : public testing::FolderTest {
 protected:
  // A w x h picture of `channels` channels, every pixel `value` (per channel), or a left-dark,
  // right-light split when value < 0.
  static std::vector<unsigned char> pixels(int w, int h, int channels, std::vector<unsigned char> value) {
    std::vector<unsigned char> out(static_cast<std::size_t>(w * h * channels));
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x)
        for (int c = 0; c < channels; ++c)
          out[static_cast<std::size_t>((y * w + x) * channels + c)] =
              value.empty() ? (x < w / 2 ? 0 : 255) : value[static_cast<std::size_t>(c)];
    return out;
  }
  void png(const fs::path& file, int w, int h, int channels, std::vector<unsigned char> value) {
    fs::create_directories(file.parent_path());
    const auto data = pixels(w, h, channels, std::move(value));
    ASSERT_TRUE(stbi_write_png(file.c_str(), w, h, channels, data.data(), w * channels));
  }
  void jpeg(const fs::path& file, int w, int h, int channels, std::vector<unsigned char> value) {
    fs::create_directories(file.parent_path());
    const auto data = pixels(w, h, channels, std::move(value));
    ASSERT_TRUE(stbi_write_jpg(file.c_str(), w, h, channels, data.data(), 95));
  }
  std::shared_ptr<Dataset> folder(const std::map<std::string, ParamValue>& changes = {}) {
    std::map<std::string, ParamValue> params = {{"root", dir_.string()}};
    for (const auto& [k, v] : changes) params[k] = v;
    return make<Dataset>("image_folder", params);
  }
  // A tree of three classes, given out of order: PNG and JPEG, grey and colour, square and not.
  void write_tree() {
    png(path("dog/red.png"), 40, 30, 3, {255, 0, 0});
    jpeg(path("dog/grey.jpg"), 20, 50, 1, {128});
    png(path("ant/split.png"), 20, 10, 1, {});
    jpeg(path("cat/blue.jpeg"), 32, 32, 3, {0, 0, 255});
    testing::write_text(path("cat/notes.txt"), "not a picture, ignored");
  }
};

TEST_F(ImageFolder, ClassesAreSortedSubfoldersAndImagesFitTheSize) {
  write_tree();
  auto data = folder({{"size", std::int64_t{10}}});
  const DataInfo info = data->info();
  EXPECT_EQ(info.shape, (std::vector<std::int64_t>{3, 10, 10}));
  EXPECT_EQ(info.num_classes, 3);
  EXPECT_EQ(info.class_names, (std::vector<std::string>{"ant", "cat", "dog"}));
  EXPECT_EQ(info.min_value, -1.0);
  EXPECT_EQ(info.max_value, 1.0);

  at::Generator gen = generator(9);
  Batch batch = data->sample(4, gen);
  ASSERT_EQ(batch.x.sizes(), (std::vector<std::int64_t>{4, 3, 10, 10}));
  EXPECT_GE(batch.x.min().item<float>(), -1.0f);
  EXPECT_LE(batch.x.max().item<float>(), 1.0f);
  EXPECT_TRUE(torch::equal(std::get<0>(batch.labels.sort()), torch::tensor({0, 1, 2, 2}, torch::kInt64)));
  // Each picture in its place: the solid red PNG (class dog, 40x30, resized to 13x10 and cropped) is
  // 1 in channel 0 and -1 in the others; the split PNG (class ant, 20x10, grey repeated as RGB)
  // keeps its dark left and light right halves, centred.
  int red = 0;
  for (std::int64_t i = 0; i < 4; ++i) {
    const torch::Tensor x = batch.x[i];
    if (x[0].eq(1).all().item<bool>() && x.narrow(0, 1, 2).eq(-1).all().item<bool>()) {
      ++red;
      EXPECT_EQ(batch.labels[i].item<std::int64_t>(), 2);
    }
    if (batch.labels[i].item<std::int64_t>() == 0) {
      EXPECT_TRUE(x.narrow(2, 0, 5).eq(-1).all().item<bool>()) << x;
      EXPECT_TRUE(x.narrow(2, 5, 5).eq(1).all().item<bool>()) << x;
    }
  }
  EXPECT_EQ(red, 1);

  // Grey: one channel, the luminance of the colour pictures.
  auto grey = folder({{"size", std::int64_t{16}}, {"channels", std::int64_t{1}}});
  EXPECT_EQ(grey->info().shape, (std::vector<std::int64_t>{1, 16, 16}));
  Batch g = grey->sample(4, gen);
  ASSERT_EQ(g.x.sizes(), (std::vector<std::int64_t>{4, 1, 16, 16}));
  EXPECT_GE(g.x.min().item<float>(), -1.0f);
  EXPECT_LE(g.x.max().item<float>(), 1.0f);
}

TEST_F(ImageFolder, FlatFolderIsUnlabelled) {
  png(path("a.png"), 12, 12, 3, {10, 20, 30});
  jpeg(path("b.JPG"), 30, 16, 1, {200});
  png(path("c.png"), 8, 20, 1, {});
  auto data = folder({{"size", std::int64_t{8}}, {"flip", true}});
  EXPECT_EQ(data->info().num_classes, 0);
  EXPECT_TRUE(data->info().class_names.empty());
  at::Generator gen = generator(10);
  Batch batch = data->sample(7, gen);  // across three epochs
  EXPECT_EQ(batch.x.sizes(), (std::vector<std::int64_t>{7, 3, 8, 8}));
  EXPECT_FALSE(batch.labels.defined());
  EXPECT_EQ(data->state().at("epoch").item<std::int64_t>(), 3);
}

TEST_F(ImageFolder, UnreadablePicturesAreNamed) {
  write_tree();
  testing::write_text(path("cat/broken.png"), "this is not a PNG");
  std::string message = input_error_of([&] { folder(); });
  EXPECT_CONTAINS(message, "image_folder");
  EXPECT_CONTAINS(message, path("cat/broken.png").string());
  EXPECT_CONTAINS(message, "not a PNG or JPEG");

  // A cut-off PNG; and a PNG whose data stb cannot decode (its reason in the message).
  fs::remove(path("cat/broken.png"));
  const std::string whole = testing::read_text(path("dog/red.png"));
  testing::write_text(path("cat/cut.png"), whole.substr(0, whole.size() / 2));
  message = input_error_of([&] { folder(); });
  EXPECT_CONTAINS(message, path("cat/cut.png").string());
  EXPECT_CONTAINS(message, "truncated PNG");
  std::string garbled = whole;
  for (std::size_t i = 40; i < garbled.size() - 20; ++i) garbled[i] = static_cast<char>(i * 7);
  testing::write_text(path("cat/cut.png"), garbled);
  message = input_error_of([&] { folder(); });
  EXPECT_CONTAINS(message, path("cat/cut.png").string());
  EXPECT_CONTAINS(message, "stb_image");
}

TEST_F(ImageFolder, EmptyOrMissingFoldersAreErrors) {
  EXPECT_CONTAINS(input_error_of([&] { folder(); }), "no PNG or JPEG pictures");
  EXPECT_CONTAINS(input_error_of([&] { folder({{"root", path("nowhere").string()}}); }), "no such folder");
  write_tree();
  fs::create_directories(path("empty"));
  testing::write_text(path("empty/readme.txt"), "no pictures here");
  const std::string message = input_error_of([&] { folder(); });
  EXPECT_CONTAINS(message, path("empty").string());
  EXPECT_CONTAINS(message, "class folder without");
  fs::remove_all(path("empty"));
  EXPECT_CONTAINS(input_error_of([&] { folder({{"channels", std::int64_t{2}}}); }), "channels");
}

// ------------------------------------------------------------------------------------------------
// class_accuracy and fd_fmnist

// A small classifier (3,000 train images, three epochs: a few seconds, ~75% test accuracy), cached in
// a folder shared by the suite; the cache tests use folders of their own.
class FmnistMetric : public ::testing::Test {
 protected:
  static std::map<std::string, ParamValue> small(const fs::path& cache,
                                                 std::map<std::string, ParamValue> more = {}) {
    more.emplace("cache_dir", cache.string());  // emplace: what `more` sets stays
    more.emplace("train_limit", std::int64_t{3000});
    more.emplace("epochs", std::int64_t{3});
    return more;
  }
  static const fs::path& shared_cache() {
    static const TempDir dir;  // removed when the test binary exits
    return dir.path();
  }
  // The first n test images (in an epoch's order) and their labels.
  static Batch test_images(std::int64_t n) {
    auto data = fashion({{"split", std::string("test")}, {"limit", n}});
    at::Generator gen = generator(11);
    return data->sample(n, gen);
  }
  static MetricResult compute(Metric& metric, const torch::Tensor& x, const torch::Tensor& labels = {},
                              at::Generator* gen = nullptr) {
    MetricInput input;
    input.generated = x;
    input.generated_labels = labels;
    input.generator = gen;
    return metric.compute(input);
  }
  static std::vector<fs::path> files_in(const fs::path& dir) {
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(dir)) files.push_back(entry.path());
    return files;
  }
};

TEST_F(FmnistMetric, TrainsOnceCachesAndLoadsTheCache) {
  TempDir cache;
  const Batch test = test_images(500);
  auto first = make<Metric>("class_accuracy", small(cache.path()));
  EXPECT_TRUE(files_in(cache.path()).empty());  // nothing trained while building
  ::testing::internal::CaptureStderr();
  MetricResult trained;
  {
    c10::InferenceMode inference;  // as the engine calls metrics
    trained = compute(*first, test.x, test.labels);
  }
  std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_CONTAINS(err, "training the Fashion-MNIST classifier once");
  EXPECT_CONTAINS(err, cache.path().string());
  EXPECT_CONTAINS(err, "test accuracy");
  const std::vector<fs::path> files = files_in(cache.path());
  ASSERT_EQ(files.size(), 1u);  // the cache, no temporary left behind
  EXPECT_EQ(files[0].extension(), ".pt");
  EXPECT_CONTAINS(files[0].filename().string(), "fmnist-classifier-");
  const auto written = fs::last_write_time(files[0]);
  const double accuracy = trained.details.at("classifier_test_accuracy");
  EXPECT_GT(accuracy, 0.6);
  EXPECT_LT(accuracy, 0.95);

  // Another metric with the same settings loads it: no training, the same classifier.
  auto second = make<Metric>("fd_fmnist", small(cache.path()));
  ::testing::internal::CaptureStderr();
  MetricResult loaded = compute(*second, test.x);
  err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(err.find("training"), std::string::npos) << err;
  EXPECT_EQ(loaded.details.at("classifier_test_accuracy"), accuracy);
  EXPECT_EQ(fs::last_write_time(files[0]), written);
  EXPECT_EQ(files_in(cache.path()).size(), 1u);

  // Other settings are another classifier, in another file.
  auto longer = make<Metric>("class_accuracy", small(cache.path(), {{"train_limit", std::int64_t{1000}}}));
  ::testing::internal::CaptureStderr();
  compute(*longer, test.x, test.labels);
  err = ::testing::internal::GetCapturedStderr();
  EXPECT_CONTAINS(err, "training");
  EXPECT_EQ(files_in(cache.path()).size(), 2u);
}

TEST_F(FmnistMetric, ACorruptCacheIsTrainedAgain) {
  TempDir cache;
  const Batch test = test_images(200);
  auto metric = make<Metric>("class_accuracy", small(cache.path()));
  ::testing::internal::CaptureStderr();
  const double accuracy = compute(*metric, test.x, test.labels).details.at("classifier_test_accuracy");
  ::testing::internal::GetCapturedStderr();
  const fs::path file = files_in(cache.path()).at(0);
  const std::string whole = testing::read_text(file);
  for (const std::string& damaged : {std::string("garbage"), whole.substr(0, whole.size() / 2)}) {
    testing::write_text(file, damaged);
    auto again = make<Metric>("class_accuracy", small(cache.path()));
    ::testing::internal::CaptureStderr();
    const double retrained = compute(*again, test.x, test.labels).details.at("classifier_test_accuracy");
    const std::string err = ::testing::internal::GetCapturedStderr();
    EXPECT_CONTAINS(err, "unreadable");
    EXPECT_CONTAINS(err, "training");
    EXPECT_NEAR(retrained, accuracy, 0.02);  // the same seed and data (threads may reorder sums)
    EXPECT_GT(testing::read_text(file).size(), 100000u);
  }
}

TEST_F(FmnistMetric, ClassAccuracyFollowsTheLabels) {
  auto metric = make<Metric>("class_accuracy", small(shared_cache()));
  EXPECT_EQ(metric->direction(), Direction::higher_is_better);
  const Batch test = test_images(1000);
  const MetricResult right = compute(*metric, test.x, test.labels);
  EXPECT_GT(right.value, 0.6);
  EXPECT_TRUE(right.details.count("class_0"));
  EXPECT_TRUE(right.details.count("class_9"));
  // Labels shuffled: about chance.
  const torch::Tensor shuffled = test.labels.index_select(
      0, torch::randperm(1000, generator(12), torch::TensorOptions().dtype(torch::kInt64)));
  EXPECT_LT(compute(*metric, test.x, shuffled).value, 0.3);
  // Unconditional samples (-1) are left out.
  torch::Tensor half = test.labels.clone();
  half.narrow(0, 0, 500).fill_(-1);
  EXPECT_NEAR(compute(*metric, test.x, half).value,
              compute(*metric, test.x.narrow(0, 500, 500), test.labels.narrow(0, 500, 500)).value, 1e-12);
  // Without classes to check, it says it needs a conditional run.
  EXPECT_CONTAINS(input_error_of([&] { compute(*metric, test.x); }), "labelled");
  EXPECT_CONTAINS(input_error_of([&] { compute(*metric, test.x, torch::full({1000}, -1, torch::kInt64)); }),
                  "labelled");
  EXPECT_CONTAINS(input_error_of([&] { compute(*metric, test.x, torch::full({1000}, 10, torch::kInt64)); }),
                  "label 10");
}

TEST_F(FmnistMetric, FrechetDistanceIsZeroOnItsReferenceAndLargeOnNoise) {
  auto features = make<Metric>("fd_fmnist", small(shared_cache()));
  EXPECT_EQ(features->direction(), Direction::lower_is_better);
  const Batch test = test_images(1000);
  // Without a generator the reference is the first 1,000 test images: the same set, in another order.
  const MetricResult self = compute(*features, test.x);
  const double floor = self.details.at("floor");
  EXPECT_GT(floor, 0.0);
  EXPECT_LT(self.value, 1e-4 * floor);
  EXPECT_EQ(self.details.at("reference_n"), 1000.0);
  EXPECT_LT(self.details.at("ratio"), 1e-4);

  const torch::Tensor noise = torch::rand({1000, 1, 28, 28}, generator(13)).mul_(2).sub_(1);
  at::Generator gen = generator(14);
  const MetricResult random = compute(*features, noise, {}, &gen);
  EXPECT_GT(random.value, 10 * random.details.at("floor"));
  EXPECT_GT(random.details.at("ratio"), 10.0);

  auto logits = make<Metric>("fd_fmnist", small(shared_cache(), {{"layer", std::string("logits")}}));
  const MetricResult on_logits = compute(*logits, noise, {}, &gen);
  EXPECT_GT(on_logits.value, 10 * on_logits.details.at("floor"));
}

TEST_F(FmnistMetric, BadShapesSayWhatIsExpected) {
  auto fd = make<Metric>("fd_fmnist", small(shared_cache()));
  auto accuracy = make<Metric>("class_accuracy", small(shared_cache()));
  const torch::Tensor labels = torch::zeros({8}, torch::kInt64);
  for (const auto& shape : std::vector<std::vector<std::int64_t>>{{8, 3, 28, 28}, {8, 1, 32, 32}, {8, 784}}) {
    const torch::Tensor x = torch::zeros(shape);
    EXPECT_CONTAINS(input_error_of([&] { compute(*fd, x); }), "[N, 1, 28, 28]");
    EXPECT_CONTAINS(input_error_of([&] { compute(*accuracy, x, labels); }), "[N, 1, 28, 28]");
  }
  // Built for a data set of another shape, it refuses at once.
  BuildContext ctx;
  ctx.data.shape = {3, 32, 32};
  EXPECT_CONTAINS(input_error_of([&] { make<Metric>("fd_fmnist", small(shared_cache()), ctx); }),
                  "[1, 28, 28]");
  // A missing data folder is said when the metric is built.
  EXPECT_CONTAINS(
      input_error_of([&] {
        make<Metric>("class_accuracy", small(shared_cache(), {{"root", std::string("/nonexistent")}}));
      }),
      "dataset-fashion-mnist");
}

}  // namespace
}  // namespace pathline
