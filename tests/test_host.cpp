// The plugin host: good plugins load, every kind of broken plugin is refused with one line naming
// the file, the stage and what was expected against what was found, and the others still load.
#include "support/support.hpp"

namespace pathline {
namespace {

using testing::fixture;

TEST(PluginHost, LoadsGoodPluginAndRegistersItsComponents) {
  Registry registry;
  PluginHost host(registry);
  ASSERT_TRUE(host.load_file(fixture("fixture_good")));
  EXPECT_TRUE(host.failures().empty());
  ASSERT_EQ(host.plugins().size(), 1u);
  EXPECT_EQ(host.plugins()[0]->name, "fixture-good");
  EXPECT_EQ(host.plugins()[0]->version, "1.2.3");
  const ComponentEntry* entry = registry.find(Kind::path, "fixture_path");
  ASSERT_NE(entry, nullptr);
  EXPECT_EQ(entry->plugin->file, std::filesystem::canonical(fixture("fixture_good")));
  // The factory works across the boundary and reads its parameter.
  Params params({{"scale", ParamValue{2.0}}});
  auto path = registry.create<Path>("fixture_path", params, BuildContext{});
  auto c = path->coefficients(torch::tensor({0.5}));
  EXPECT_DOUBLE_EQ(c.alpha.item<double>(), 1.0);
  EXPECT_DOUBLE_EQ(c.sigma.item<double>(), 0.5);
}

TEST(PluginHost, LoadingTheSameFileTwiceIsANoOp) {
  Registry registry;
  PluginHost host(registry);
  ASSERT_TRUE(host.load_file(fixture("fixture_good")));
  ASSERT_TRUE(host.load_file(fixture("fixture_good")));
  EXPECT_EQ(host.plugins().size(), 1u);
  EXPECT_TRUE(host.failures().empty());
}

struct BrokenCase {
  std::string fixture;
  std::string stage;
  std::string message;  // exact message after "stage '...': "
};

class BrokenPlugin : public ::testing::TestWithParam<BrokenCase> {};

TEST_P(BrokenPlugin, IsRefusedWithOneLineAndOthersStillLoad) {
  const BrokenCase& c = GetParam();
  Registry registry;
  PluginHost host(registry);
  ASSERT_TRUE(host.load_file(fixture("fixture_good")));
  std::size_t before = registry.size();
  EXPECT_FALSE(host.load_file(fixture(c.fixture)));
  ASSERT_EQ(host.failures().size(), 1u);
  const PluginFailure& f = host.failures()[0];
  EXPECT_EQ(f.stage, c.stage);
  auto file = std::filesystem::weakly_canonical(fixture(c.fixture));
  EXPECT_EQ(f.line(), "plugin " + file.string() + ": stage '" + c.stage + "': " + c.message);
  EXPECT_EQ(f.line().find('\n'), std::string::npos);
  // Nothing of the broken plugin was registered, and the good one is intact.
  EXPECT_EQ(registry.size(), before);
  EXPECT_NE(registry.find(Kind::path, "fixture_path"), nullptr);
  EXPECT_EQ(registry.find(Kind::path, "fixture_partial"), nullptr);
  EXPECT_EQ(registry.find(Kind::path, "fixture_unique"), nullptr);
  // A good plugin loaded after the failure still loads. (The twin is only broken next to 'good'.)
  if (c.fixture == "fixture_twin") return;
  Registry other;
  PluginHost second(other);
  EXPECT_FALSE(second.load_file(fixture(c.fixture)));
  EXPECT_TRUE(second.load_file(fixture("fixture_good")));
}

// "2.15" of the host's LibTorch version, and the refusal of a plugin built against another minor
// release (found: the plugin's version, quoted).
std::string torch_minor() {
  const std::string v = TORCH_VERSION;
  return v.substr(0, v.find('.', v.find('.') + 1));
}
std::string torch_refusal(const std::string& found) {
  return "expected LibTorch " + torch_minor() + ".x (the host's " + TORCH_VERSION +
         "; the major and minor versions must match, as LibTorch keeps its C++ ABI only within a minor "
         "release), found " +
         found + " (plugin 'fixture-good'); rebuild it against LibTorch " + torch_minor();
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, BrokenPlugin,
    ::testing::Values(
        BrokenCase{"fixture_not_a_plugin", "descriptor",
                   "expected the exported symbol 'pathline_plugin_descriptor' (PATHLINE_PLUGIN), found none: "
                   "not a Pathline plugin"},
        BrokenCase{"fixture_wrong_abi", "abi-version",
                   "expected SDK ABI version " + std::to_string(PATHLINE_SDK_ABI_VERSION) +
                       ", found 999 (plugin 'fixture-good'); rebuild it against this SDK"},
        BrokenCase{"fixture_wrong_torch", "torch-version", torch_refusal("'0.4.1'")},
        BrokenCase{"fixture_longer_torch_minor", "torch-version",
                   torch_refusal("'" + torch_minor() + "0.0'")},
        BrokenCase{"fixture_wrong_cxx_abi", "cxx-abi",
                   "expected _GLIBCXX_USE_CXX11_ABI=1, found 0 (plugin 'fixture-good')"},
        BrokenCase{"fixture_throws", "register",
                   "fixture registration failed on purpose (plugin 'fixture-throws')"},
        BrokenCase{
            "fixture_throws_int", "register",
            "expected registration to succeed, found a non-standard exception (plugin 'fixture-throws-int')"},
        BrokenCase{"fixture_empty", "register",
                   "expected at least one component, found none registered (plugin 'fixture-empty')"},
        BrokenCase{"fixture_twin", "register",
                   "expected unique component names, found path 'fixture_path' already registered by plugin "
                   "'fixture-good' (" +
                       std::filesystem::canonical(fixture("fixture_good")).string() +
                       ") (plugin 'fixture-twin')"}),
    [](const auto& info) { return info.param.fixture.substr(8); });

TEST(PluginHost, FileThatIsNotASharedLibraryFailsAtOpen) {
  Registry registry;
  PluginHost host(registry);
  EXPECT_FALSE(host.load_file(fixture("fixture_garbage")));
  ASSERT_EQ(host.failures().size(), 1u);
  EXPECT_EQ(host.failures()[0].stage, "open");
  EXPECT_NE(host.failures()[0].line().find(
                "libfixture_garbage.so: stage 'open': expected a loadable shared library"),
            std::string::npos);
  EXPECT_EQ(host.failures()[0].line().find('\n'), std::string::npos);
}

TEST(PluginHost, DirectoryLoadKeepsGoingPastEveryBrokenPlugin) {
  Registry registry;
  PluginHost host(registry);
  host.load_directory(PATHLINE_FIXTURE_DIR);
  // All broken fixtures fail; the good one loads (the twin and the good one built against another
  // patch release of LibTorch sort after it and fail as twins).
  std::vector<std::string> stages;
  for (const auto& f : host.failures()) stages.push_back(f.stage);
  EXPECT_EQ(host.failures().size(), 11u);
  EXPECT_NE(registry.find(Kind::path, "fixture_path"), nullptr);
  ASSERT_EQ(host.plugins().size(), 1u);
  EXPECT_EQ(host.plugins()[0]->name, "fixture-good");
}

TEST(PluginHost, PluginOfAnotherPatchReleaseOfTheSameLibTorchLoads) {
  // Built with TORCH_VERSION = <host's major.minor>.99: the C++ ABI is the same.
  Registry registry;
  PluginHost host(registry);
  ASSERT_TRUE(host.load_file(fixture("fixture_other_torch_patch")));
  EXPECT_TRUE(host.failures().empty());
  EXPECT_NE(registry.find(Kind::path, "fixture_path"), nullptr);
}

TEST(PluginHost, MissingDirectoryIsReported) {
  Registry registry;
  PluginHost host(registry);
  host.load_directory("/nonexistent/pathline-plugins");
  ASSERT_EQ(host.failures().size(), 1u);
  EXPECT_EQ(
      host.failures()[0].line(),
      "plugin /nonexistent/pathline-plugins: stage 'search': expected a directory of plugins, found nothing");
}

TEST(PluginHost, SearchPathReadsEnvironmentVariable) {
  testing::TempDir empty;
  std::string value = std::string(PATHLINE_FIXTURE_DIR) + ":" + empty.path().string();
  ::setenv("PATHLINE_PLUGIN_PATH", value.c_str(), 1);
  Registry registry;
  PluginHost host(registry);
  host.load_search_path({}, /*builtin=*/false);
  ::unsetenv("PATHLINE_PLUGIN_PATH");
  EXPECT_NE(registry.find(Kind::path, "fixture_path"), nullptr);
}

TEST(PluginHost, RecordsWhereEachPluginWasFound) {
  ::setenv("PATHLINE_PLUGIN_PATH", PATHLINE_FIXTURE_DIR, 1);
  Registry registry;
  PluginHost host(registry);
  host.load_search_path({});
  ::unsetenv("PATHLINE_PLUGIN_PATH");
  std::map<std::string, std::string> origins;
  for (const auto& p : host.plugins()) origins[p->name] = p->origin;
  EXPECT_EQ(origins["solvers"], "built-in");
  EXPECT_EQ(origins["fixture-good"], "PATHLINE_PLUGIN_PATH");
  EXPECT_EQ(registry.find(Kind::solver, "euler")->plugin->origin, "built-in");
  EXPECT_EQ(registry.find(Kind::path, "fixture_path")->plugin->origin, "PATHLINE_PLUGIN_PATH");
  // A direct load is "explicit".
  Registry other;
  PluginHost direct(other);
  ASSERT_TRUE(direct.load_file(fixture("fixture_good")));
  EXPECT_EQ(direct.plugins()[0]->origin, "explicit");
}

TEST(PluginHost, ExtraDirectoriesAreMarkedAsPluginDir) {
  Registry registry;
  PluginHost host(registry);
  host.load_search_path({PATHLINE_FIXTURE_DIR}, /*builtin=*/false);
  ASSERT_NE(registry.find(Kind::path, "fixture_path"), nullptr);
  EXPECT_EQ(registry.find(Kind::path, "fixture_path")->plugin->origin, "--plugin-dir");
}

TEST(PluginHost, BuiltinFolderIsNextToTheEngineLibrary) {
  EXPECT_EQ(std::filesystem::weakly_canonical(PluginHost::builtin_plugin_dir()),
            std::filesystem::weakly_canonical(testing::builtin_plugins()));
}

TEST(Registry, RejectsDuplicateNamesOfTheSameKindOnly) {
  Registry registry;
  auto info = std::make_shared<PluginInfo>(PluginInfo{"a", "1", "/x/liba.so", "explicit"});
  Factory<Path> factory = [](const Params&, const BuildContext&) -> std::shared_ptr<Path> { return nullptr; };
  registry.add({Kind::path, {"same", "", {}}, info, factory});
  Factory<Metric> metric = [](const Params&, const BuildContext&) -> std::shared_ptr<Metric> {
    return nullptr;
  };
  registry.add({Kind::metric, {"same", "", {}}, info, metric});  // another kind: fine
  try {
    registry.add({Kind::path, {"same", "", {}}, info, factory});
    FAIL() << "expected PluginError";
  } catch (const PluginError& e) {
    EXPECT_STREQ(
        e.what(),
        "expected unique component names, found path 'same' already registered by plugin 'a' (/x/liba.so)");
  }
  EXPECT_EQ(registry.names(Kind::path), std::vector<std::string>{"same"});
  // A factory that returns nothing is an error, not a null component.
  EXPECT_THROW(registry.create<Path>("same", Params{}, BuildContext{}), Error);
  EXPECT_THROW(registry.create<Path>("missing", Params{}, BuildContext{}), InputError);
}

}  // namespace
}  // namespace pathline
