// Data-parallel training on PyTorch's c10d: a process group (Gloo on CPU) whose ranks meet through a
// TCPStore at MASTER_ADDR:MASTER_PORT, as torchrun, SLURM wrappers and Kubernetes operators start
// PyTorch programs. See docs/distributed.md.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "pathline/engine/build.hpp"

namespace pathline {

// Where this process sits in a data-parallel run.
struct WorldInfo {
  int rank = 0, world_size = 1, local_rank = 0, local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  bool distributed() const { return world_size > 1; }
};

// From torchrun's variables: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
// MASTER_PORT. A single process when WORLD_SIZE is unset or 1. InputError naming the variable when
// one is not a number, out of range, or inconsistent with the others.
PATHLINE_API WorldInfo world_from_environment();

// Whether this build can train across processes (c10d with Gloo; NCCL when built against a CUDA
// LibTorch with PATHLINE_NCCL=ON).
PATHLINE_API bool distributed_available();

// One process's membership in the group, for the training loop: broadcast from rank 0, averages over
// ranks, gathers. Every call is collective (every rank makes it, in the same order). A rank that
// stops, hangs or cannot be reached makes the others fail with an Error naming the operation and the
// timeout, within about `timeout`.
class PATHLINE_API DataParallel {
 public:
  DataParallel(const WorldInfo& world, std::chrono::milliseconds timeout, const torch::Device& device);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  const WorldInfo& world() const { return world_; }
  // Rank 0's values of the tensors, in place on every rank.
  void broadcast(const std::vector<torch::Tensor>& tensors);
  // Starts summing a float tensor over the ranks, in place, in the background; finish_sums() waits
  // for every sum started (the tensor must live until then).
  void start_sum(const torch::Tensor& part);
  void finish_sums();
  // Every rank's tensor (equal shapes), in rank order.
  std::vector<torch::Tensor> all_gather(const torch::Tensor& tensor);
  void barrier();
  // Seconds spent in communication so far.
  double seconds() const { return seconds_; }

 private:
  struct Impl;
  // Runs `wait` (a collective's wait); an Error naming the collective, this rank, the ranks that did
  // not report the failure (missing_ranks) and the timeout if it throws.
  void finish(const std::function<void()>& wait, const char* what);
  std::string missing_ranks();
  WorldInfo world_;
  std::chrono::milliseconds timeout_;
  std::unique_ptr<Impl> impl_;
  double seconds_ = 0.0;
};

}  // namespace pathline
