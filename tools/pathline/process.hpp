// Child processes for the command line (launch, ablate) and the tests: start one with its own
// arguments, environment and output files; wait for one, any, or with a timeout; signal them.
// A small static library (pathline_process) so that the tests start `pathline` the same way.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace pathline::process {

struct Spec {
  std::filesystem::path program;  // run as is (no PATH search)
  std::vector<std::string> args;  // after argv[0]
  std::string argv0;              // argv[0]; empty: the program's path
  // Variables set (NAME=value) over the inherited environment, and names removed from it.
  std::vector<std::string> set_env, unset_env;
  // Where stdout and stderr go: empty keeps this process's; "/dev/null" discards.
  std::filesystem::path out, err;
};

// Starts a child; throws std::runtime_error naming the program when it cannot.
pid_t spawn(const Spec& spec);

// How a child ended: its exit status, or 128 + the signal that ended it (as a shell reports it).
struct Exit {
  pid_t pid = -1;
  int code = 0;
  int signal = 0;  // the signal that ended it, else 0
};

// Waits for `pid`.
Exit wait(pid_t pid);
// Waits for any child; nullopt when there is none (or, with block = false, when none has ended).
std::optional<Exit> wait_any(bool block = true);
// Waits for `pid` at most `timeout`; nullopt if it is still running then.
std::optional<Exit> wait_for(pid_t pid, std::chrono::milliseconds timeout);
// Sends `signal` to each pid > 0.
void signal_all(const std::vector<pid_t>& pids, int signal);

}  // namespace pathline::process
