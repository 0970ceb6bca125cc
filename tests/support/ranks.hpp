// Data-parallel ranks as child processes, for the suites that start them (distributed, cuda): a
// rendezvous port that rank 0's system picks, torchrun's variables, a background `pathline` and its exit.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "process.hpp"

namespace pathline::testing {

// torchrun's variables for rank `rank` of `world` on this one machine (LOCAL_RANK = RANK).
inline std::string rank_env(int rank, int world, int port) {
  return "RANK=" + std::to_string(rank) + " WORLD_SIZE=" + std::to_string(world) +
         " LOCAL_RANK=" + std::to_string(rank) + " LOCAL_WORLD_SIZE=" + std::to_string(world) +
         " MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port);
}

// Starts `pathline ARGS` (a shell word list, quoted as on a command line) in the background with
// ENV ("NAME=value ..."); returns its pid (stderr to `log`). Through the command line's process helper.
inline pid_t start_cli(const std::string& env, const std::string& args, const std::filesystem::path& log) {
  process::Spec spec;
  spec.program = "/bin/sh";
  spec.args = {"-c", "exec env " + env + " '" + std::string(PATHLINE_CLI) + "' " + args};
  spec.out = "/dev/null";
  spec.err = log;
  return process::spawn(spec);
}

// Starts rank 0 of `world` with MASTER_PORT=0, so that its system picks a free port for the
// rendezvous store (nothing can take it between choosing and listening), and returns that port as
// rank 0 reports it in `log` (-1 and a test failure if it does not within a minute). `pid`: rank 0's.
inline int start_rank_zero(int world, const std::string& args, const std::filesystem::path& log, pid_t& pid) {
  pid = start_cli(rank_env(0, world, 0), args, log);
  const std::string marker = "rendezvous store listening on 127.0.0.1:";
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < end) {
    std::ifstream in(log);
    std::stringstream text;
    text << in.rdbuf();
    const std::string said = text.str();
    if (auto at = said.find(marker); at != std::string::npos && said.find('\n', at) != std::string::npos)
      return std::stoi(said.substr(at + marker.size()));
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ADD_FAILURE() << "rank 0 did not report its rendezvous port: " << log;
  return -1;
}

// Waits for `pid`; its exit status, or 128 + the signal that ended it.
inline int wait_exit(pid_t pid) { return process::wait(pid).code; }

}  // namespace pathline::testing
