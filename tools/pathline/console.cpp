#include <unistd.h>

#include <cstdlib>
#include <iostream>

#include "cli.hpp"
#include "pathline/engine/run.hpp"

namespace pathline::cli {

Console& Console::get() {
  static Console console;
  return console;
}

Console::Console() {
  const char* term = std::getenv("TERM");
  terminal_ = ::isatty(STDERR_FILENO) == 1 && !(term && std::string(term) == "dumb");
}

void Console::line(const std::string& text) {
  end_live();
  std::cerr << text << "\n";
}

void Console::live(const std::string& text) {
  std::cerr << "\r\033[K" << text << std::flush;
  pending_ = true;
}

void Console::end_live() {
  if (pending_) std::cerr << "\r\033[K" << std::flush;
  pending_ = false;
}

Logger stderr_logger() {
  if (Console::get().is_terminal())
    set_live_progress([](const std::string& text) { Console::get().live(text); });
  return [](const std::string& line) { Console::get().line(line); };
}

}  // namespace pathline::cli
