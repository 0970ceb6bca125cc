// The Gloo names that LibTorch's c10d/ProcessGroupGloo.hpp mentions, declared so that the header
// compiles without Gloo's own headers (no LibTorch distribution ships them). Pathline creates the
// Gloo backend compiled into LibTorch (its constructor and Options run inside libtorch_cpu) and
// calls it only through c10d::Backend's interface; these types appear in the header only behind
// pointers, as a base class of a helper Pathline never constructs, or in inline bodies Pathline
// never calls. Nothing here is defined, so no Gloo code of ours can disagree with LibTorch's.
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace gloo {

class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};

namespace transport {
class Device;
class UnboundBuffer;
}  // namespace transport

namespace rendezvous {
class Store {
 public:
  virtual ~Store();
  virtual void set(const std::string& key, const std::vector<char>& data) = 0;
  virtual std::vector<char> get(const std::string& key) = 0;
  virtual void wait(const std::vector<std::string>& keys) = 0;
  virtual void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) = 0;
};
}  // namespace rendezvous

}  // namespace gloo
