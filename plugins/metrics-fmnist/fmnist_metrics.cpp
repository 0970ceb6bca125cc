// Plugin "metrics-fmnist": metrics that judge generated Fashion-MNIST images through a small
// convolutional classifier trained on the data set's train split. It is trained once, the first
// time a metric needs it, and cached on disk under a name that hashes everything it depends on (its
// settings and the data files' bytes), so that later runs load it in a fraction of a second and a
// change of either trains a new one instead of reusing a stale one.
//   class_accuracy  how often the classifier sees the class a sample was asked for (conditional runs)
//   fd_fmnist       Frechet distance between the classifier's features of generated and test images,
//                   the FID recipe (Heusel et al. 2017) with a Fashion-MNIST network in place of
//                   Inception, which knows nothing of 28x28 grey clothes
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "common/fashion_mnist_idx.hpp"
#include "pathline/plugin.hpp"

namespace {

namespace fm = pathline_plugins::fashion_mnist;
namespace fs = std::filesystem;
using pathline::BuildContext;
using pathline::Params;
using pathline::ParamSpec;

// Everything about the classifier that its cache name must capture besides `epochs`, `train_limit`
// and the data. Bump kArchitectureVersion whenever the network or its training changes, so that
// caches of the old one are not loaded into the new one.
constexpr std::int64_t kArchitectureVersion = 1;
constexpr std::uint64_t kSeed = 20170825;  // Fashion-MNIST's release date
constexpr std::int64_t kBatchSize = 256;
constexpr double kLearningRate = 4e-3;
constexpr std::int64_t kDefaultEpochs = 6;
constexpr std::int64_t kFeatures = 128;        // width of the penultimate layer
constexpr std::int64_t kEvalBatch = 500;       // images per forward pass when classifying
constexpr std::int64_t kMaxReference = 10000;  // the whole test split
constexpr double kPi = 3.14159265358979323846;

// Three stride-2 3x3 convolutions with batch norm (28 -> 14 -> 7 -> 4 pixels; 24, 48 and 96
// channels), a 128-unit hidden layer with dropout, 10 logits. Striding instead of pooling keeps a
// training step cheap on a CPU (no convolution at full resolution). Batches of 256: on this
// project's 2-core machine a step cost about as much with 128 images as with 256 (the time goes to
// the allocator, not the arithmetic), so the larger batch halves an epoch. The default six epochs
// reach about 91.7% test accuracy in about two minutes on one core.
struct ClassifierImpl : torch::nn::Module {
  ClassifierImpl() {
    convs = register_module("convs", torch::nn::Sequential());
    for (auto [in, out] : {std::pair<std::int64_t, std::int64_t>{1, 24}, {24, 48}, {48, 96}}) {
      convs->push_back(
          torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).stride(2).padding(1).bias(false)));
      convs->push_back(torch::nn::BatchNorm2d(out));
      convs->push_back(torch::nn::ReLU());
    }
    hidden = register_module("hidden", torch::nn::Linear(96 * 4 * 4, kFeatures));
    dropout = register_module("dropout", torch::nn::Dropout(0.3));
    head = register_module("head", torch::nn::Linear(kFeatures, fm::kNumClasses));
  }
  // The penultimate layer, [B, 128]: what fd_fmnist compares by default.
  torch::Tensor features(const torch::Tensor& x) { return torch::relu(hidden(convs->forward(x).flatten(1))); }
  torch::Tensor logits_of(const torch::Tensor& features) { return head(dropout(features)); }
  torch::Tensor forward(const torch::Tensor& x) { return logits_of(features(x)); }

  torch::nn::Sequential convs{nullptr};
  torch::nn::Linear hidden{nullptr}, head{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(Classifier);

// Bytes as the data set hands them out: [-1, 1].
torch::Tensor to_unit_range(const torch::Tensor& images) {
  return images.to(torch::kFloat32).div_(127.5).sub_(1.0);
}

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// LibTorch's global generator seeded for training (parameter initialisation and dropout draw from
// it) and restored afterwards, so that training the classifier in the middle of a run neither
// depends on nor changes any random draw of the run.
class SeededGlobalGenerator {
 public:
  explicit SeededGlobalGenerator(std::uint64_t seed) : gen_(at::detail::getDefaultCPUGenerator()) {
    std::lock_guard<std::mutex> lock(gen_.mutex());
    saved_ = gen_.get_state();
    gen_.set_current_seed(seed);
  }
  ~SeededGlobalGenerator() {
    std::lock_guard<std::mutex> lock(gen_.mutex());
    gen_.set_state(saved_);
  }
  SeededGlobalGenerator(const SeededGlobalGenerator&) = delete;
  SeededGlobalGenerator& operator=(const SeededGlobalGenerator&) = delete;

 private:
  at::Generator gen_;
  torch::Tensor saved_;
};

// One intra-op thread while the classifier trains, whatever [run] threads says, restored afterwards.
// Its convolutions are small (14x14 outputs at most), and on this project's 2-core machine a second
// OpenMP thread made training several times slower whenever the other core was busy (the threads
// spin while they wait for each other). One thread also sums in one order, so that the cached
// classifier does not depend on the thread setting of the run that trained it.
class SingleThreaded {
 public:
  SingleThreaded() : saved_(at::get_num_threads()) { at::set_num_threads(1); }
  ~SingleThreaded() { at::set_num_threads(saved_); }
  SingleThreaded(const SingleThreaded&) = delete;
  SingleThreaded& operator=(const SingleThreaded&) = delete;

 private:
  int saved_;
};

// The parameters both metrics take, resolved.
struct Settings {
  fs::path root;
  fs::path cache_dir;
  std::int64_t epochs = kDefaultEpochs;
  std::int64_t train_limit = 0;
};

fs::path default_cache_dir(const std::string& who) {
  if (const char* dir = std::getenv("PATHLINE_CACHE_DIR"); dir && *dir) return dir;
  if (const char* dir = std::getenv("XDG_CACHE_HOME"); dir && *dir) return fs::path(dir) / "pathline";
  if (const char* home = std::getenv("HOME"); home && *home) return fs::path(home) / ".cache" / "pathline";
  throw pathline::InputError(who +
                             ": no cache folder for the classifier: set cache_dir, or PATHLINE_CACHE_DIR, "
                             "XDG_CACHE_HOME or HOME");
}

// The trained classifier, in eval mode, and its accuracy on the whole test split.
struct Trained {
  Classifier net{nullptr};
  double test_accuracy = 0.0;
};

// The classifier's logits or penultimate features of images [N, 1, 28, 28] in [-1, 1], a batch at a
// time.
// The classifier's features or logits of CPU images, computed on the device the net is on (the
// run's: a GPU run judges its samples on the GPU), returned on the CPU.
torch::Tensor classify(Classifier& net, const torch::Tensor& images, bool features) {
  c10::InferenceMode inference;
  const torch::Device device = net->parameters().front().device();
  std::vector<torch::Tensor> outputs;
  for (std::int64_t i = 0; i < images.size(0); i += kEvalBatch) {
    const torch::Tensor x = images.narrow(0, i, std::min(kEvalBatch, images.size(0) - i)).to(device);
    const torch::Tensor f = net->features(x);
    outputs.push_back((features ? f : net->logits_of(f)).to(torch::kCPU));
  }
  return outputs.empty() ? torch::empty({0, features ? kFeatures : fm::kNumClasses}) : torch::cat(outputs);
}

double accuracy_on(Classifier& net, const fm::Split& split) {
  const torch::Tensor predicted = classify(net, to_unit_range(split.images), false).argmax(1);
  return predicted.eq(split.labels).to(torch::kFloat64).mean().item<double>();
}

// Adam with a cosine learning-rate decay to 0 over all steps, random left-right flips (clothes look
// alike mirrored), cross-entropy; data order and flips from a generator of its own.
void train(Classifier& net, const fm::Split& data, std::int64_t epochs) {
  SingleThreaded single;
  SeededGlobalGenerator seeded(kSeed);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(kSeed);
  net = Classifier();  // initialised from the seeded global generator
  net->train();
  const torch::Tensor images = to_unit_range(data.images);
  const std::int64_t n = images.size(0), steps_per_epoch = (n + kBatchSize - 1) / kBatchSize;
  const double total_steps = static_cast<double>(epochs * steps_per_epoch);
  torch::optim::Adam optimizer(net->parameters(), torch::optim::AdamOptions(kLearningRate));
  std::int64_t step = 0;
  for (std::int64_t epoch = 0; epoch < epochs; ++epoch) {
    const torch::Tensor order = torch::randperm(n, gen, torch::TensorOptions().dtype(torch::kInt64));
    for (std::int64_t start = 0; start < n; start += kBatchSize, ++step) {
      const torch::Tensor index = order.narrow(0, start, std::min(kBatchSize, n - start));
      torch::Tensor x = images.index_select(0, index);
      const torch::Tensor mirrored =
          torch::rand({x.size(0)}, gen, torch::TensorOptions().dtype(torch::kFloat32))
              .lt(0.5)
              .view({-1, 1, 1, 1});
      x = torch::where(mirrored, x.flip({3}), x);
      const double lr = 0.5 * kLearningRate * (1.0 + std::cos(kPi * static_cast<double>(step) / total_steps));
      for (auto& group : optimizer.param_groups())
        static_cast<torch::optim::AdamOptions&>(group.options()).lr(lr);
      const torch::Tensor loss =
          torch::nn::functional::cross_entropy(net->forward(x), data.labels.index_select(0, index));
      optimizer.zero_grad();
      loss.backward();
      optimizer.step();
    }
  }
  net->eval();
}

std::string hex64(std::uint64_t v) {
  char text[17];
  std::snprintf(text, sizeof text, "%016" PRIx64, v);
  return text;
}

// The cache key: FNV-1a over the settings' text, continued over the four data files' bytes.
std::uint64_t cache_key(const fm::Reader& reader, const Settings& s) {
  std::uint64_t hash = 14695981039346656037ull;
  const std::string settings = "pathline fmnist classifier v" + std::to_string(kArchitectureVersion) +
                               " seed " + std::to_string(kSeed) + " epochs " + std::to_string(s.epochs) +
                               " train_limit " + std::to_string(s.train_limit);
  for (unsigned char c : settings) hash = (hash ^ c) * 1099511628211ull;
  for (const char* split : {"train", "test"}) {
    const fm::SplitFiles files = fm::split_files(s.root, split);
    hash = fm::fnv1a_file(reader, files.images, hash);
    hash = fm::fnv1a_file(reader, files.labels, hash);
  }
  return hash;
}

// Reads a cached classifier; nullopt (with a note on stderr) when the file is unreadable or holds
// another classifier, which then gets trained again.
std::optional<Trained> load_cached(const std::string& who, const fs::path& file, std::uint64_t key) {
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(file.string());
    torch::Tensor stored_key, accuracy;
    archive.read("pathline_key", stored_key);
    archive.read("pathline_test_accuracy", accuracy);
    if (stored_key.numel() != 1 || static_cast<std::uint64_t>(stored_key.item<std::int64_t>()) != key) {
      std::fprintf(
          stderr, "%s: note: the cached classifier %s belongs to other settings or data; training it again\n",
          who.c_str(), file.c_str());
      return std::nullopt;
    }
    Trained trained;
    trained.net = Classifier();
    // Module::load replaces each tensor by the stored one without comparing shapes; a file of
    // another architecture must not get as far as a forward pass.
    std::vector<std::vector<std::int64_t>> shapes;
    for (const auto& t : trained.net->named_parameters()) shapes.push_back(t.value().sizes().vec());
    for (const auto& t : trained.net->named_buffers()) shapes.push_back(t.value().sizes().vec());
    trained.net->load(archive);
    std::size_t i = 0;
    for (const auto& t : trained.net->named_parameters())
      if (t.value().sizes().vec() != shapes[i++])
        throw pathline::Error("parameter " + t.key() + " has another shape");
    for (const auto& t : trained.net->named_buffers())
      if (t.value().sizes().vec() != shapes[i++])
        throw pathline::Error("buffer " + t.key() + " has another shape");
    trained.net->eval();
    trained.test_accuracy = accuracy.item<double>();
    return trained;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: note: the cached classifier %s is unreadable (%s); training it again\n",
                 who.c_str(), file.c_str(), first_line(e.what()).c_str());
    return std::nullopt;
  }
}

// Written to a temporary file in the same folder, then renamed over the final name: a reader (another
// run starting meanwhile) sees the whole file or none. A cache that cannot be written is a note, not
// an error: the run goes on with the classifier in memory.
void save_cached(const std::string& who, const fs::path& file, std::uint64_t key, const Trained& trained) {
  std::random_device random;
  const fs::path temp = file.string() + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(random());
  try {
    fs::create_directories(file.parent_path());
    torch::serialize::OutputArchive archive;
    trained.net->save(archive);
    archive.write("pathline_key", torch::tensor(static_cast<std::int64_t>(key), torch::kInt64));
    archive.write("pathline_test_accuracy", torch::tensor(trained.test_accuracy, torch::kFloat64));
    archive.save_to(temp.string());
    fs::rename(temp, file);
  } catch (const std::exception& e) {
    std::error_code ec;
    fs::remove(temp, ec);
    std::fprintf(stderr,
                 "%s: note: could not cache the classifier in %s (%s); it will be trained again next time\n",
                 who.c_str(), file.c_str(), first_line(e.what()).c_str());
  }
}

// The classifier for these settings: from the cache, or trained now and cached.
Trained obtain_classifier(const std::string& who, const Settings& s) {
  // Metrics run under inference mode; training needs autograd back.
  c10::InferenceMode no_inference(false);
  const fm::Reader reader{who, "the metric's `root`"};
  const std::uint64_t key = cache_key(reader, s);
  const fs::path file = s.cache_dir / ("fmnist-classifier-" + hex64(key) + ".pt");
  std::error_code ec;
  if (fs::exists(file, ec))
    if (std::optional<Trained> cached = load_cached(who, file, key)) return std::move(*cached);

  const fm::Split data = fm::read_split(reader, s.root, "train", s.train_limit);
  std::fprintf(stderr,
               "%s: training the Fashion-MNIST classifier once (%" PRId64 " epoch%s on %" PRId64
               " images; about two minutes with the defaults); it is cached in %s\n",
               who.c_str(), s.epochs, s.epochs == 1 ? "" : "s", data.images.size(0), file.c_str());
  const auto start = std::chrono::steady_clock::now();
  Trained trained;
  train(trained.net, data, s.epochs);
  trained.test_accuracy = accuracy_on(trained.net, fm::read_split(reader, s.root, "test"));
  std::fprintf(stderr, "%s: classifier trained in %.1f s, test accuracy %.4f\n", who.c_str(),
               seconds_since(start), trained.test_accuracy);
  save_cached(who, file, key, trained);
  return trained;
}

// What both metrics share: the settings, the classifier (obtained on first use, not when the pipeline
// is built, so that `pathline validate` never trains) and the checks on the generated images.
class FmnistMetric : public pathline::Metric {
 protected:
  FmnistMetric(std::string who, const Params& p, const BuildContext& ctx)
      : who_(std::move(who)), device_(ctx.device) {
    settings_.root = p.string("root");
    settings_.cache_dir =
        p.string("cache_dir").empty() ? default_cache_dir(who_) : fs::path(p.string("cache_dir"));
    settings_.epochs = p.integer("epochs");
    settings_.train_limit = p.integer("train_limit");
    // Missing data is said while the pipeline is built, not after training the model.
    const fm::Reader reader = this->reader();
    for (const char* split : {"train", "test"}) {
      const fm::SplitFiles files = fm::split_files(settings_.root, split);
      fm::require_file(reader, files.images);
      fm::require_file(reader, files.labels);
    }
    if (!ctx.data.shape.empty() && ctx.data.shape != std::vector<std::int64_t>{1, fm::kSide, fm::kSide})
      throw pathline::InputError(who_ +
                                 " judges Fashion-MNIST images of shape [1, 28, 28]; the data set's are " +
                                 shape_text(ctx.data.shape));
  }

  fm::Reader reader() const { return {who_, "the metric's `root`"}; }

  Trained& classifier() {
    if (!trained_) {
      trained_ = obtain_classifier(who_, settings_);  // trained (and cached) on the CPU
      trained_->net->to(device_);
    }
    return *trained_;
  }

  // The generated images as float32 [N, 1, 28, 28], clamped to the data's range [-1, 1] as they are
  // when saved as pictures (a sample a little out of range is still the same picture).
  torch::Tensor images_of(const torch::Tensor& generated) const {
    if (!generated.defined() || generated.dim() != 4 || generated.size(1) != 1 ||
        generated.size(2) != fm::kSide || generated.size(3) != fm::kSide || generated.size(0) == 0)
      throw pathline::InputError(
          who_ + ": expected generated images of shape [N, 1, 28, 28] (N >= 1, Fashion-MNIST), got " +
          (generated.defined() ? shape_text(generated.sizes().vec()) : std::string("none")));
    return generated.to(torch::kCPU, torch::kFloat32).clamp(-1.0, 1.0).contiguous();
  }

  static std::string shape_text(const std::vector<std::int64_t>& shape) {
    std::string text = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
    return text + "]";
  }

  std::string who_;
  torch::Device device_;  // where the classifier judges: the run's device
  Settings settings_;
  std::optional<Trained> trained_;
};

// The share of generated samples that the classifier puts in the class they were asked for: the
// conditional model's faithfulness to its labels, bounded by the classifier's own test accuracy
// (reported as a detail beside per-class shares). Unconditional samples (label -1) are left out.
class ClassAccuracy : public FmnistMetric {
 public:
  ClassAccuracy(const Params& p, const BuildContext& ctx) : FmnistMetric("class_accuracy", p, ctx) {}

  pathline::Direction direction() const override { return pathline::Direction::higher_is_better; }

  pathline::MetricResult compute(const pathline::MetricInput& input) override {
    const torch::Tensor images = images_of(input.generated);
    const torch::Tensor& labels = input.generated_labels;
    if (!labels.defined())
      throw pathline::InputError(
          "class_accuracy needs a labelled (class-conditional) run: the generated samples were asked for no "
          "class; train on a labelled data set such as fashion_mnist");
    if (labels.dim() != 1 || labels.size(0) != images.size(0))
      throw pathline::InputError("class_accuracy: expected one label per generated image, [" +
                                 std::to_string(images.size(0)) + "], got " +
                                 shape_text(labels.sizes().vec()));
    const torch::Tensor asked = labels.to(torch::kCPU, torch::kInt64);
    const torch::Tensor bad = asked.lt(-1).logical_or(asked.ge(fm::kNumClasses));
    if (bad.any().item<bool>())
      throw pathline::InputError("class_accuracy: label " +
                                 std::to_string(asked.masked_select(bad)[0].item<std::int64_t>()) +
                                 " is not a Fashion-MNIST class (0-9, or -1 for an unconditional sample)");
    const torch::Tensor conditional = asked.ge(0);
    const std::int64_t judged = conditional.sum().item<std::int64_t>();
    if (judged == 0)
      throw pathline::InputError(
          "class_accuracy needs a labelled (class-conditional) run: all " + std::to_string(asked.size(0)) +
          " samples are unconditional (label -1); ask for classes 0-9 in [sample] labels");

    Trained& trained = classifier();
    const torch::Tensor wanted = asked.masked_select(conditional);
    const torch::Tensor predicted =
        classify(trained.net, images.index({conditional}), false).argmax(1).to(torch::kInt64);
    const torch::Tensor hit = predicted.eq(wanted).to(torch::kFloat64);
    pathline::MetricResult result;
    result.value = hit.mean().item<double>();
    result.details["classifier_test_accuracy"] = trained.test_accuracy;
    for (std::int64_t k = 0; k < fm::kNumClasses; ++k) {
      const torch::Tensor of_k = wanted.eq(k);
      if (of_k.any().item<bool>())
        result.details["class_" + std::to_string(k)] = hit.masked_select(of_k).mean().item<double>();
    }
    return result;
  }
};

// Frechet distance between Gaussians fitted to two sets of feature vectors [n, d]:
//   |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr (S1^1/2 S2 S1^1/2)^1/2,
// (Dowson & Landau 1982), in float64. tr (S1 S2)^1/2 is computed as the trace of the square root of
// the symmetric S1^1/2 S2 S1^1/2, which has the same eigenvalues as S1 S2, so that both square roots
// come from symmetric eigendecompositions; eigenvalues a little below zero by rounding count as 0.
double frechet_distance(const torch::Tensor& a, const torch::Tensor& b) {
  const torch::Tensor x = a.to(torch::kFloat64), y = b.to(torch::kFloat64);
  auto covariance = [](const torch::Tensor& v, const torch::Tensor& mean) {
    const torch::Tensor centred = v - mean;
    return centred.t().mm(centred).div_(static_cast<double>(v.size(0) - 1));
  };
  const torch::Tensor mu1 = x.mean(0), mu2 = y.mean(0);
  const torch::Tensor s1 = covariance(x, mu1), s2 = covariance(y, mu2);
  const auto [w1, v1] = torch::linalg_eigh(s1, "L");
  const torch::Tensor root1 = (v1 * w1.clamp_min(0.0).sqrt()).mm(v1.t());
  torch::Tensor m = root1.mm(s2).mm(root1);
  m = (m + m.t()).mul_(0.5);
  const double cross = torch::linalg_eigvalsh(m, "L").clamp_min(0.0).sqrt().sum().item<double>();
  const double d = (mu1 - mu2).square().sum().item<double>() + s1.trace().item<double>() +
                   s2.trace().item<double>() - 2.0 * cross;
  return std::max(d, 0.0);  // negative only by rounding
}

// Frechet distance between the classifier's features of the generated images and of as many test
// images (at most the 10,000 of the test split), with the same distance between as many train and
// test images as its floor: what samples of the true distribution score at this sample size (the
// estimate is biased upward at small N). "ratio" is value / floor.
class FdFmnist : public FmnistMetric {
 public:
  FdFmnist(const Params& p, const BuildContext& ctx)
      : FmnistMetric("fd_fmnist", p, ctx), features_(p.string("layer") == "features") {}

  pathline::MetricResult compute(const pathline::MetricInput& input) override {
    const torch::Tensor images = images_of(input.generated);
    const std::int64_t n = images.size(0);
    if (n < 2)
      throw pathline::InputError("fd_fmnist: needs at least 2 generated images to fit a Gaussian, got 1");
    if (!test_) test_ = fm::read_split(reader(), settings_.root, "test");
    if (!train_) train_ = fm::read_split(reader(), settings_.root, "train");
    const std::int64_t reference_n =
        std::min({n, kMaxReference, test_->images.size(0), train_->images.size(0)});
    const torch::Tensor test = pick(test_->images, reference_n, input.generator);
    const torch::Tensor train = pick(train_->images, reference_n, input.generator);

    Trained& trained = classifier();
    const torch::Tensor test_features = classify(trained.net, test, features_);
    pathline::MetricResult result;
    result.value = frechet_distance(classify(trained.net, images, features_), test_features);
    const double floor = frechet_distance(classify(trained.net, train, features_), test_features);
    result.details["floor"] = floor;
    if (floor > 0) result.details["ratio"] = result.value / floor;
    result.details["reference_n"] = static_cast<double>(reference_n);
    result.details["classifier_test_accuracy"] = trained.test_accuracy;
    return result;
  }

 private:
  // n images of a split in [-1, 1]: the first n of a permutation drawn with the evaluation's
  // generator, or the first n when there is none.
  static torch::Tensor pick(const torch::Tensor& images, std::int64_t n, at::Generator* gen) {
    const torch::Tensor chosen =
        gen ? images.index_select(
                  0, torch::randperm(images.size(0), *gen, torch::TensorOptions().dtype(torch::kInt64))
                         .narrow(0, 0, n))
            : images.narrow(0, 0, n);
    return to_unit_range(chosen);
  }

  bool features_;
  std::optional<fm::Split> test_, train_;  // read on first use, kept for later calls
};

std::vector<ParamSpec> classifier_params() {
  return {
      ParamSpec::string("root", fm::kDefaultRoot,
                        "folder of Fashion-MNIST's four idx .gz files (Debian's dataset-fashion-mnist)"),
      ParamSpec::string("cache_dir", "",
                        "where the trained classifier is cached; empty: $PATHLINE_CACHE_DIR, else "
                        "$XDG_CACHE_HOME/pathline, else $HOME/.cache/pathline"),
      ParamSpec::integer("epochs", kDefaultEpochs,
                         "epochs of classifier training (the default reaches about 91% test accuracy)")
          .range(1, 1000),
      ParamSpec::integer("train_limit", 0, "train the classifier on the first N train images only (0: all)")
          .at_least(0)};
}

void register_metrics(pathline::Registrar& registrar) {
  registrar.add_type<pathline::Metric, ClassAccuracy>(pathline::ComponentDecl{
      "class_accuracy",
      "share of generated Fashion-MNIST images a trained classifier assigns to the class they were asked for",
      classifier_params()});
  std::vector<ParamSpec> fd_params = classifier_params();
  fd_params.push_back(ParamSpec::choice("layer", {"features", "logits"}, "features",
                                        "the classifier's layer compared: features (the 128-unit penultimate "
                                        "layer) or logits"));
  registrar.add_type<pathline::Metric, FdFmnist>(pathline::ComponentDecl{
      "fd_fmnist",
      "Frechet distance between a Fashion-MNIST classifier's features of generated and test images, with the "
      "train-vs-test floor",
      fd_params});
}

}  // namespace

PATHLINE_PLUGIN("metrics-fmnist", "0.1.0", register_metrics)
