// A plugin that throws anything (std::runtime_error, a LibTorch c10::Error, a plain int) from its
// factory or from the engine's call into it (forward, solve, couple, compute): the command exits with
// status 1 and one line naming the config position, the slot, the component, the plugin and its file,
// and what the plugin said; never an abort.
#include <fmt/format.h>

#include "support/support.hpp"

namespace pathline {
namespace {

using testing::lines_of;
using testing::run_cli;

struct Case {
  std::string slot;    // model, solver, coupling, metric
  std::string throws;  // runtime_error, c10, int
  std::string at;      // build, call
};

// A small 2D pipeline with the throwing component in `slot`; trains a few steps.
std::string pipeline(const Case& c) {
  std::string text = R"(
[dataset]
type = "toy2d"

[model]
type = "mlp"
width = 16
depth = 2

[train]
steps = 3
batch_size = 32
checkpoint_every = 0

[sample]
n = 64

[solver]
type = "euler"
steps = 8

[[metric]]
type = "energy_distance"
)";
  const std::string component =
      fmt::format("type = \"fixture_throwing\"\nthrows = \"{}\"\nat = \"{}\"\n", c.throws, c.at);
  if (c.slot == "metric") return text + "\n[[metric]]\nname = \"bad\"\n" + component;
  if (c.slot == "coupling") return text + "\n[coupling]\n" + component;
  // Replace the slot's table.
  const std::string header = "[" + c.slot + "]\n";
  const auto begin = text.find(header);
  const auto end = text.find("\n[", begin + 1);
  return text.substr(0, begin) + header + component + text.substr(end);
}

// What the plugin's exception text becomes in the message.
std::string expected_reason(const Case& c) {
  if (c.throws == "int") return "threw something that is not a std::exception";
  if (c.throws == "c10") return "failed in LibTorch: fixture c10 failure in ";
  return "failed: fixture runtime failure in ";
}

class PluginErrors : public testing::FolderTest, public ::testing::WithParamInterface<std::string> {
 protected:
  void check(const Case& c) {
    SCOPED_TRACE(c.slot + " throws " + c.throws + " at " + c.at);
    testing::write_text(path("pipe.toml"), pipeline(c));
    const std::string plugins = std::string(PATHLINE_FIXTURE_DIR) + "/throwing";
    auto r = run_cli(
        fmt::format("run pipe.toml --plugin-dir '{}' --run-dir run-{}-{}", plugins, c.throws, c.at), dir_);
    EXPECT_EQ(r.code, 1) << r.err;
    const auto lines = lines_of(r.err);
    ASSERT_FALSE(lines.empty());
    const std::string& line = lines.back();
    const std::string slot = c.slot == "metric" ? "metric.bad" : c.slot;
    EXPECT_CONTAINS(line, "pipe.toml:");
    EXPECT_CONTAINS(line, "[" + slot + "] (type 'fixture_throwing', plugin 'fixture-throwing' from " +
                              plugins + "/libfixture_throwing.so)");
    EXPECT_CONTAINS(line, expected_reason(c));
    if (c.at == "build") {
      EXPECT_CONTAINS(line, ": building it ");
    }
    EXPECT_EQ(r.err.find("terminate called"), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("Exception raised from"), std::string::npos) << "a LibTorch backtrace: " << r.err;
  }
};

TEST_P(PluginErrors, AreCaughtWhereThePluginIsCalledAndNameIt) {
  for (const std::string throws : {"runtime_error", "c10", "int"})
    for (const std::string at : {"build", "call"}) check({GetParam(), throws, at});
}

INSTANTIATE_TEST_SUITE_P(EachEntryPoint, PluginErrors,
                         ::testing::Values("model", "solver", "coupling", "metric"));

}  // namespace
}  // namespace pathline
