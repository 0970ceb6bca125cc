// A module's weights by name, and loading them back with every name and shape checked (io.hpp).
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

std::vector<std::pair<std::string, torch::Tensor>> named_weights(torch::nn::Module& module) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& item : module.named_parameters(/*recurse=*/true))
    if (item.value().defined()) out.emplace_back(item.key(), item.value().detach());
  for (const auto& item : module.named_buffers(/*recurse=*/true))
    if (item.value().defined()) out.emplace_back(item.key(), item.value().detach());
  return out;
}

void load_named_weights(torch::nn::Module& module,
                        const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                        const fs::path& file) {
  std::unordered_map<std::string, const torch::Tensor*> given;
  for (const auto& [name, tensor] : tensors)
    if (!given.emplace(name, &tensor).second) fail(file, "tensor " + shown(name) + " is given twice");
  const auto targets = named_weights(module);
  std::unordered_set<std::string> wanted;
  for (const auto& [name, target] : targets) {
    wanted.insert(name);
    if (!given.count(name)) fail(file, "no tensor " + shown(name) + ", which the model has");
  }
  for (const auto& [name, tensor] : tensors)
    if (!wanted.count(name))
      fail(file, "unexpected tensor " + shown(name) + ": the model has no such parameter or buffer");
  for (const auto& [name, target] : targets) {
    const torch::Tensor& source = *given.at(name);
    if (!source.defined()) fail(file, "tensor " + shown(name) + " is undefined");
    if (source.sizes() != target.sizes())
      fail(file, "tensor " + shown(name) + " is shaped " + shape_text(source.sizes()) + ", the model's is " +
                     shape_text(target.sizes()));
  }
  torch::NoGradGuard no_grad;
  for (const auto& [name, target] : targets) {
    torch::Tensor t = target;  // shares the module's storage
    t.copy_(*given.at(name));
  }
}

}  // namespace pathline
