#include "process.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace pathline::process {

namespace {

Exit exit_of(pid_t pid, int status) {
  Exit e;
  e.pid = pid;
  if (WIFSIGNALED(status)) {
    e.signal = WTERMSIG(status);
    e.code = 128 + e.signal;
  } else {
    e.code = WIFEXITED(status) ? WEXITSTATUS(status) : 1;
  }
  return e;
}

}  // namespace

pid_t spawn(const Spec& spec) {
  // The environment: this process's, without the names unset or set here, then the ones set.
  std::vector<std::string> env;
  auto name_of = [](const std::string& entry) { return entry.substr(0, entry.find('=')); };
  std::vector<std::string> replaced = spec.unset_env;
  for (const auto& entry : spec.set_env) replaced.push_back(name_of(entry));
  for (char** e = environ; *e; ++e) {
    const std::string entry = *e;
    if (std::find(replaced.begin(), replaced.end(), name_of(entry)) == replaced.end()) env.push_back(entry);
  }
  env.insert(env.end(), spec.set_env.begin(), spec.set_env.end());

  std::vector<std::string> argv_text = {spec.argv0.empty() ? spec.program.string() : spec.argv0};
  argv_text.insert(argv_text.end(), spec.args.begin(), spec.args.end());
  std::vector<char*> argv, envp;
  for (auto& a : argv_text) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (!spec.out.empty())
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, spec.out.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
  if (!spec.err.empty())
    posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, spec.err.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
  pid_t pid = -1;
  const int err = ::posix_spawn(&pid, spec.program.c_str(), &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  if (err != 0) throw std::runtime_error(spec.program.string() + ": cannot start: " + std::strerror(err));
  return pid;
}

Exit wait(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return Exit{pid, 1, 0};
  return exit_of(pid, status);
}

std::optional<Exit> wait_any(bool block) {
  for (;;) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, block ? 0 : WNOHANG);
    if (pid > 0) return exit_of(pid, status);
    if (pid == 0) return std::nullopt;  // none has ended (WNOHANG)
    if (errno == EINTR) {
      if (!block) return std::nullopt;
      continue;
    }
    return std::nullopt;  // ECHILD: no children
  }
}

std::optional<Exit> wait_for(pid_t pid, std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int status = 0;
    const pid_t done = ::waitpid(pid, &status, WNOHANG);
    if (done == pid) return exit_of(pid, status);
    if (done < 0 && errno != EINTR) return Exit{pid, 1, 0};
    if (std::chrono::steady_clock::now() >= end) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

void signal_all(const std::vector<pid_t>& pids, int signal) {
  for (pid_t pid : pids)
    if (pid > 0) ::kill(pid, signal);
}

}  // namespace pathline::process
