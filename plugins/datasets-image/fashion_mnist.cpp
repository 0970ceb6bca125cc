// `fashion_mnist`: Zalando's Fashion-MNIST (Xiao, Rasul & Vollgraf 2017), 70,000 grey 28x28 pictures
// of clothes in 10 classes, read from the idx files of Debian's package dataset-fashion-mnist.
#include <algorithm>
#include <string>

#include "common/fashion_mnist_idx.hpp"
#include "epoch_images.hpp"

namespace pathline_plugins::image_data {

namespace {

namespace fm = pathline_plugins::fashion_mnist;

using pathline::BuildContext;
using pathline::Params;
using pathline::ParamSpec;

pathline::DataInfo fashion_mnist_info() {
  pathline::DataInfo info;
  info.shape = {1, fm::kSide, fm::kSide};
  info.num_classes = fm::kNumClasses;
  info.class_names = fm::class_names();
  return info;
}

// The whole split (or its first `limit` images) is decoded once, in the constructor, so that a
// missing or damaged file is reported while the pipeline is built, before any training.
class FashionMnist : public EpochImages {
 public:
  FashionMnist(const Params& p, const BuildContext&) : FashionMnist(read(p), p.boolean("flip")) {}

 private:
  FashionMnist(fm::Split split, bool flip)
      : EpochImages("fashion_mnist", std::move(split.images), std::move(split.labels), fashion_mnist_info(),
                    flip) {}

  static fm::Split read(const Params& p) {
    const std::string root = p.string("root");
    if (root.empty())
      throw pathline::InputError("fashion_mnist: root is empty; set it to the folder of the idx .gz files (" +
                                 std::string(fm::kDefaultRoot) + " by default)");
    return fm::read_split({"fashion_mnist", "[dataset] root"}, root, p.string("split"), p.integer("limit"));
  }
};

}  // namespace

void register_fashion_mnist(pathline::Registrar& registrar) {
  registrar.add_type<pathline::Dataset, FashionMnist>(pathline::ComponentDecl{
      "fashion_mnist",
      "Fashion-MNIST: 28x28 grey pictures of clothes in 10 classes, in [-1, 1], labelled; from Debian's "
      "package dataset-fashion-mnist",
      {ParamSpec::string("root", fm::kDefaultRoot,
                         "folder of the four idx .gz files (train-images-idx3-ubyte.gz, ...)"),
       ParamSpec::choice("split", {"train", "test"}, "train", "which split: train (60,000) or test (10,000)"),
       ParamSpec::boolean("flip", false, "mirror each drawn image left-right with probability 1/2"),
       ParamSpec::integer("limit", 0,
                          "use only the first N images of the split (0: all); for tests and quick runs")
           .at_least(0)}});
}

}  // namespace pathline_plugins::image_data
