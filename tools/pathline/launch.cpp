// `pathline launch`: this machine's ranks of a data-parallel run, started as torchrun would.
#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstring>
#include <iostream>
#include <thread>

#include "cli.hpp"
#include "pathline/engine/distributed.hpp"
#include "process.hpp"

extern char** environ;

namespace pathline::cli {

namespace {

// `pathline launch`: starts this machine's ranks of a data-parallel run as torchrun would (the same
// environment variables), forwards SIGINT/SIGTERM/SIGHUP to them, and ends with the first failing
// rank's status after stopping the others.
volatile std::sig_atomic_t g_forward_signal = 0;
extern "C" void on_launch_signal(int signal) { g_forward_signal = signal; }

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 29500;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t size = sizeof(address);
  int port = 29500;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size) == 0)
    port = ntohs(address.sin_port);
  ::close(fd);
  return port;
}

}  // namespace

int cmd_launch(const std::string& name, const std::vector<std::string>& args) {
  auto separator = std::find(args.begin(), args.end(), "--");
  std::vector<std::string> own(args.begin(), separator);
  std::vector<std::string> command(separator == args.end() ? args.end() : separator + 1, args.end());
  po::options_description options("Options");
  options.add_options()("nproc-per-node", po::value<int>()->default_value(1),
                        "ranks to start on this machine")("nnodes", po::value<int>()->default_value(1),
                                                          "machines in the run")(
      "node-rank", po::value<int>()->default_value(0), "this machine's index, 0 .. nnodes - 1")(
      "master-addr", po::value<std::string>()->default_value("127.0.0.1"),
      "address of rank 0's machine (where the rendezvous store listens)")(
      "master-port", po::value<int>()->default_value(29500),
      "port of the rendezvous store; 0 picks a free one (one machine only)");
  auto vm = parse(
      name, own, options, {},
      "--nproc-per-node N [--nnodes M --node-rank R --master-addr A --master-port P] -- run|train|resume "
      "...");
  if (!vm) return kOk;
  const int nproc = (*vm)["nproc-per-node"].as<int>(), nnodes = (*vm)["nnodes"].as<int>();
  const int node = (*vm)["node-rank"].as<int>();
  int port = (*vm)["master-port"].as<int>();
  if (nproc < 1 || nproc > 1024) throw UsageError("--nproc-per-node must be 1 to 1024");
  if (nnodes < 1 || nnodes > 65536) throw UsageError("--nnodes must be at least 1");
  if (node < 0 || node >= nnodes) throw UsageError(fmt::format("--node-rank must be 0 to {}", nnodes - 1));
  if (port < 0 || port > 65535) throw UsageError("--master-port must be 0 to 65535");
  if (port == 0 && nnodes > 1) throw UsageError("--master-port 0 (a free port) works on one machine only");
  if (command.empty())
    throw UsageError(
        "nothing to launch: give the command after --, e.g. pathline launch --nproc-per-node 2 -- run "
        "configs/quickstart.toml");
  const Command* launched = find_command(command[0]);
  if (!launched || !launched->launchable) {
    std::vector<std::string> names;
    for (const Command& c : commands())
      if (c.launchable) names.push_back(std::string("'") + c.name + "'");
    std::string list;
    for (std::size_t i = 0; i < names.size(); ++i)
      list += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + names[i];
    throw UsageError(fmt::format("launch runs {} on every rank, not '{}'", list, command[0]));
  }
  if (port == 0) port = free_port();
  if (!distributed_available())
    throw std::runtime_error(
        "this build cannot train across processes: it has no c10d Gloo backend (install "
        "libgloo-dev and rebuild)");

  struct sigaction action {};
  action.sa_handler = on_launch_signal;
  sigemptyset(&action.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) ::sigaction(sig, &action, nullptr);

  const int world = nproc * nnodes;
  std::vector<pid_t> pids(static_cast<std::size_t>(nproc), -1);
  for (int local = 0; local < nproc; ++local) {
    const int rank = node * nproc + local;
    process::Spec spec;
    spec.program = "/proc/self/exe";
    spec.argv0 = "pathline";
    spec.args = command;
    spec.set_env = {
        "RANK=" + std::to_string(rank),        "WORLD_SIZE=" + std::to_string(world),
        "LOCAL_RANK=" + std::to_string(local), "LOCAL_WORLD_SIZE=" + std::to_string(nproc),
        "GROUP_RANK=" + std::to_string(node),  "MASTER_ADDR=" + (*vm)["master-addr"].as<std::string>(),
        "MASTER_PORT=" + std::to_string(port)};
    try {
      pids[static_cast<std::size_t>(local)] = process::spawn(spec);
    } catch (const std::runtime_error& e) {
      process::signal_all(pids, SIGTERM);
      throw std::runtime_error("cannot start rank " + std::to_string(rank) + ": " + e.what());
    }
  }

  int result = 0, running = nproc;
  bool stopping = false, forwarded = false;
  auto stop_deadline = std::chrono::steady_clock::time_point::max();
  while (running > 0) {
    if (g_forward_signal != 0) {
      const int sig = g_forward_signal;
      g_forward_signal = 0;
      forwarded = true;
      process::signal_all(pids, sig);
    }
    if (const auto done = process::wait_any(/*block=*/false)) {
      auto it = std::find(pids.begin(), pids.end(), done->pid);
      if (it == pids.end()) continue;
      const int rank = node * nproc + static_cast<int>(it - pids.begin());
      *it = -1;
      --running;
      if (done->code != 0 && result == 0) {
        result = done->code;
        if (!forwarded)
          std::cerr << "pathline launch: rank " << rank << " exited with status " << done->code
                    << (done->signal ? " (signal " + std::to_string(done->signal) + ")" : std::string())
                    << (running > 0 ? "; stopping the other ranks" : "") << "\n";
        process::signal_all(pids, SIGTERM);
        stopping = true;
        stop_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
      }
      continue;
    }
    if (stopping && std::chrono::steady_clock::now() > stop_deadline) {
      process::signal_all(pids, SIGKILL);
      stop_deadline = std::chrono::steady_clock::time_point::max();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return result;
}

}  // namespace pathline::cli
