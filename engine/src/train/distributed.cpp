#include "pathline/engine/distributed.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <thread>

#if defined(PATHLINE_HAVE_GLOO)
#define USE_C10D_GLOO 1
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif
#if defined(PATHLINE_HAVE_NCCL)
#define USE_C10D_NCCL 1
#include <c10/cuda/CUDAFunctions.h>

#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace pathline {

namespace {

using Clock = std::chrono::steady_clock;

// An integer environment variable: `fallback` when unset; InputError naming it when malformed.
int integer_variable(const char* name, int fallback, int lowest) {
  const char* text = std::getenv(name);
  if (!text || !*text) return fallback;
  errno = 0;
  char* end = nullptr;
  const long value = std::strtol(text, &end, 10);
  if (errno != 0 || *end != '\0' || value < lowest || value > 1 << 20)
    throw InputError(
        fmt::format("environment variable {}='{}': expected an integer of at least {}", name, text, lowest));
  return static_cast<int>(value);
}

// The first line of an exception's message.
[[maybe_unused]] std::string first_line(const std::exception& e) {
  std::string what = e.what();
  if (const auto* c10 = dynamic_cast<const c10::Error*>(&e)) what = c10->what_without_backtrace();
  return what.substr(0, what.find('\n'));
}

}  // namespace

WorldInfo world_from_environment() {
  WorldInfo w;
  w.world_size = integer_variable("WORLD_SIZE", 1, 1);
  w.rank = integer_variable("RANK", 0, 0);
  w.local_world_size = integer_variable("LOCAL_WORLD_SIZE", w.world_size, 1);
  w.local_rank = integer_variable("LOCAL_RANK", w.rank % w.local_world_size, 0);
  w.master_port = integer_variable("MASTER_PORT", 29500, 0);
  if (const char* addr = std::getenv("MASTER_ADDR"); addr && *addr) w.master_addr = addr;
  if (w.rank >= w.world_size)
    throw InputError(
        fmt::format("environment variable RANK={} is not below WORLD_SIZE={}", w.rank, w.world_size));
  if (w.local_rank >= w.local_world_size)
    throw InputError(fmt::format("environment variable LOCAL_RANK={} is not below LOCAL_WORLD_SIZE={}",
                                 w.local_rank, w.local_world_size));
  if (w.local_world_size > w.world_size)
    throw InputError(fmt::format("environment variable LOCAL_WORLD_SIZE={} is more than WORLD_SIZE={}",
                                 w.local_world_size, w.world_size));
  if (w.master_port == 0 && w.rank != 0)
    throw InputError(
        "environment variable MASTER_PORT=0 lets rank 0's system pick the port; the other ranks need "
        "the port rank 0 reports (\"rendezvous store listening on ...\")");
  if (w.master_port > 65535)
    throw InputError(fmt::format("environment variable MASTER_PORT={}: not a TCP port", w.master_port));
  return w;
}

bool distributed_available() {
#if defined(PATHLINE_HAVE_GLOO)
  return true;
#else
  return false;
#endif
}

#if defined(PATHLINE_HAVE_GLOO)

struct DataParallel::Impl {
  torch::Device device = torch::kCPU;  // where the backend's tensors live (NCCL: this rank's GPU)
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> group;                 // Gloo or NCCL, compiled into LibTorch
  std::vector<c10::intrusive_ptr<c10d::Work>> pending;     // start_sum's, until finish_sums
  std::deque<std::vector<torch::Tensor>> pending_tensors;  // stable addresses while growing
};

DataParallel::DataParallel(const WorldInfo& world, std::chrono::milliseconds timeout,
                           const torch::Device& device)
    : world_(world), timeout_(timeout), impl_(std::make_unique<Impl>()) {
  impl_->device = device;
  const std::string where = fmt::format("{}:{}", world.master_addr, world.master_port);
  try {
    c10d::TCPStoreOptions options;
    options.port = static_cast<std::uint16_t>(world.master_port);
    options.isServer = world.rank == 0;
    options.numWorkers = static_cast<std::size_t>(world.world_size);
    // MASTER_PORT=0: the system picks a free port, which rank 0 reports for the others (no window
    // between choosing a port and listening on it). Gloo's own rendezvous then waits for them.
    const bool pick_port = world.master_port == 0;
    options.waitWorkers = !pick_port;
    options.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(world.master_addr, options);
    if (pick_port)
      fmt::print(stderr, "pathline: rank 0: rendezvous store listening on {}:{}\n", world.master_addr,
                 store->getPort());
    std::fflush(stderr);
    impl_->store = store;
  } catch (const std::exception& e) {
    throw Error(fmt::format("rank {}: cannot meet the other ranks through the store at {} within {} s: {}",
                            world.rank, where, timeout.count() / 1000, first_line(e)));
  }
  try {
    if (device.is_cuda()) {
#if defined(PATHLINE_HAVE_NCCL)
      // NCCL makes its communicator on the current GPU: this rank's own.
      c10::cuda::set_device(device.index());
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      impl_->group =
          c10::make_intrusive<c10d::ProcessGroupNCCL>(impl_->store, world.rank, world.world_size, options);
#else
      throw Error(
          fmt::format("this build has no NCCL backend for CUDA tensors: LibTorch {} was built "
                      "without NCCL, or CMake found no nccl.h",
                      TORCH_VERSION));
#endif
    } else {
      auto options = c10d::ProcessGroupGloo::Options::create(timeout);
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(
          world.master_addr == "localhost" ? std::string("127.0.0.1") : world.master_addr));
      impl_->group =
          c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, world.rank, world.world_size, options);
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(fmt::format("rank {}: cannot form the process group of {} ranks through {}: {}", world.rank,
                            world.world_size, where, first_line(e)));
  }
}

DataParallel::~DataParallel() = default;

void DataParallel::finish(const std::function<void()>& wait, const char* what) {
  try {
    wait();
  } catch (const std::exception& e) {
    throw Error(fmt::format("rank {}: data-parallel {} failed: {}; {} ([run] timeout = {} s)", world_.rank,
                            what, first_line(e), missing_ranks(), timeout_.count() / 1000));
  }
}

std::string DataParallel::missing_ranks() {
  // The ranks still running see their collective fail at about the same moment: each says so in the
  // store, waits a little, and names the ranks that did not (they died, or hang elsewhere).
  try {
    impl_->store->add(fmt::format("pathline/failed/{}", world_.rank), 1);
    std::vector<int> missing;
    const auto deadline = Clock::now() + std::chrono::milliseconds(2500);
    do {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      missing.clear();
      for (int r = 0; r < world_.world_size; ++r)
        if (!impl_->store->check({fmt::format("pathline/failed/{}", r)})) missing.push_back(r);
    } while (!missing.empty() && Clock::now() < deadline);
    if (missing.empty()) return "every rank reported the failure";
    std::string list;
    for (int r : missing) list += (list.empty() ? "" : ", ") + std::to_string(r);
    return fmt::format("rank{} {} stopped, hang{} or cannot be reached", missing.size() > 1 ? "s" : "", list,
                       missing.size() > 1 ? "" : "s");
  } catch (const std::exception&) {
    return world_.rank == 0 ? "another rank stopped, hangs or cannot be reached"
                            : "rank 0 (which holds the rendezvous store) stopped or cannot be reached";
  }
}

void DataParallel::broadcast(const std::vector<torch::Tensor>& tensors) {
  const auto start = Clock::now();
  for (const auto& t : tensors) {
    std::vector<torch::Tensor> one = {t};
    auto work = impl_->group->broadcast(one);
    finish([&] { work->wait(timeout_); }, "broadcast");
  }
  seconds_ += std::chrono::duration<double>(Clock::now() - start).count();
}

void DataParallel::start_sum(const torch::Tensor& part) {
  const auto start = Clock::now();
  impl_->pending_tensors.push_back({part});
  impl_->pending.push_back(impl_->group->allreduce(impl_->pending_tensors.back()));
  seconds_ += std::chrono::duration<double>(Clock::now() - start).count();
}

void DataParallel::finish_sums() {
  const auto start = Clock::now();
  auto pending = std::move(impl_->pending);
  auto tensors = std::move(impl_->pending_tensors);
  impl_->pending.clear();
  impl_->pending_tensors.clear();
  for (const auto& work : pending) finish([&] { work->wait(timeout_); }, "all-reduce");
  seconds_ += std::chrono::duration<double>(Clock::now() - start).count();
}

std::vector<torch::Tensor> DataParallel::all_gather(const torch::Tensor& tensor) {
  const auto start = Clock::now();
  // NCCL gathers GPU tensors only: a CPU tensor (a generator's state) goes there and back.
  const torch::Tensor input = tensor.to(impl_->device).contiguous();
  std::vector<std::vector<torch::Tensor>> outputs(1);
  for (int r = 0; r < world_.world_size; ++r) outputs[0].push_back(torch::empty_like(input));
  std::vector<torch::Tensor> inputs = {input};
  auto work = impl_->group->allgather(outputs, inputs);
  finish([&] { work->wait(timeout_); }, "all-gather");
  for (auto& out : outputs[0]) out = out.to(tensor.device());
  seconds_ += std::chrono::duration<double>(Clock::now() - start).count();
  return outputs[0];
}

void DataParallel::barrier() {
  auto work = impl_->group->barrier();
  finish([&] { work->wait(timeout_); }, "barrier");
}

#else

struct DataParallel::Impl {};

DataParallel::DataParallel(const WorldInfo& world, std::chrono::milliseconds timeout, const torch::Device&)
    : world_(world), timeout_(timeout) {
  throw Error(
      fmt::format("this build of Pathline cannot train across processes: LibTorch {} has no c10d Gloo "
                  "backend (USE_C10D_GLOO); build against a LibTorch with distributed support, such as "
                  "pip's torch",
                  TORCH_VERSION));
}
DataParallel::~DataParallel() = default;
void DataParallel::broadcast(const std::vector<torch::Tensor>&) {}
void DataParallel::start_sum(const torch::Tensor&) {}
void DataParallel::finish_sums() {}
std::vector<torch::Tensor> DataParallel::all_gather(const torch::Tensor& tensor) { return {tensor}; }
void DataParallel::barrier() {}
void DataParallel::finish(const std::function<void()>& wait, const char*) { wait(); }
std::string DataParallel::missing_ranks() { return ""; }

#endif

}  // namespace pathline
