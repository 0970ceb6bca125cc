#include "pathline/engine/host.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/dll/shared_library.hpp>
#include <cstdlib>
#include <cstring>
#include <sstream>

namespace pathline {

// ---------------------------------------------------------------------------------------------
// Registry

void Registry::add(ComponentEntry entry) {
  auto key = std::make_pair(entry.kind, entry.decl.name);
  auto it = entries_.find(key);
  if (it != entries_.end()) {
    const auto& owner = it->second.plugin;
    std::string where = owner ? "plugin '" + owner->name + "'" +
                                    (owner->file.empty() ? "" : " (" + owner->file.string() + ")")
                              : "the host";
    throw PluginError(std::string("expected unique component names, found ") + to_string(entry.kind) + " '" +
                      entry.decl.name + "' already registered by " + where);
  }
  entries_.emplace(std::move(key), std::move(entry));
}

const ComponentEntry* Registry::find(Kind kind, const std::string& name) const {
  auto it = entries_.find({kind, name});
  return it == entries_.end() ? nullptr : &it->second;
}

std::vector<const ComponentEntry*> Registry::list(Kind kind) const {
  std::vector<const ComponentEntry*> out;
  for (const auto& [key, entry] : entries_)
    if (key.first == kind) out.push_back(&entry);
  return out;  // std::map keeps (kind, name) order
}

std::vector<std::string> Registry::names(Kind kind) const {
  std::vector<std::string> out;
  for (const auto* entry : list(kind)) out.push_back(entry->decl.name);
  return out;
}

void StagingRegistrar::stage(Kind kind, ComponentDecl decl, ErasedFactory factory) {
  if (decl.name.empty())
    throw PluginError(std::string("a ") + to_string(kind) + " was registered without a name");
  staged_.push_back(ComponentEntry{kind, std::move(decl), plugin_, std::move(factory)});
}

void StagingRegistrar::commit(Registry& registry) {
  // Check everything first so that a conflict leaves the registry untouched.
  Registry trial;
  for (const auto& entry : staged_) {
    if (const ComponentEntry* existing = registry.find(entry.kind, entry.decl.name)) {
      Registry probe;
      probe.add(*existing);
      probe.add(entry);  // throws with the owner's name
    }
    trial.add(entry);  // throws on a duplicate within this plugin
  }
  for (auto& entry : staged_) registry.add(std::move(entry));
  staged_.clear();
}

// ---------------------------------------------------------------------------------------------
// Plugin host

namespace {

// Plugins are never unloaded while the process lives: their code backs vtables and factories that
// outlive any owner we could name. The list is deliberately leaked so that no static destructor
// unloads a library before the objects that use it are gone.
std::vector<boost::dll::shared_library>& kept_libraries() {
  static auto* libraries = new std::vector<boost::dll::shared_library>();
  return *libraries;
}

// "2.15" of "2.15.0" or "2.15.1+cu132": the part of a LibTorch version its C++ ABI is kept within
// (patch releases of a minor release are ABI-compatible; minor releases are not).
std::string major_minor(const std::string& version) {
  const auto first = version.find('.');
  if (first == std::string::npos) return version;
  return version.substr(0, version.find_first_not_of("0123456789", first + 1));
}

std::string quoted_or_null(const char* text) {
  return text ? fmt::format("'{}'", text) : std::string("(null)");
}

}  // namespace

std::string PluginFailure::line() const {
  return "plugin " + file.string() + ": stage '" + stage + "': " + message;
}

void PluginHost::fail(const std::filesystem::path& file, std::string stage, std::string message) {
  failures_.push_back(PluginFailure{file, std::move(stage), std::move(message)});
}

bool PluginHost::load_file(const std::filesystem::path& file, const std::string& origin) {
  std::error_code ec;
  auto canonical = std::filesystem::weakly_canonical(file, ec);
  if (ec) canonical = file;
  if (std::find(loaded_files_.begin(), loaded_files_.end(), canonical) != loaded_files_.end()) return true;

  boost::dll::shared_library library;
  try {
    library.load(canonical, boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local);
  } catch (const std::exception& e) {
    std::string reason = e.what();
    std::replace(reason.begin(), reason.end(), '\n', ' ');
    fail(canonical, "open", "expected a loadable shared library, found an error: " + reason);
    return false;
  }

  if (!library.has(kDescriptorSymbol)) {
    fail(canonical, "descriptor",
         std::string("expected the exported symbol '") + kDescriptorSymbol +
             "' (PATHLINE_PLUGIN), found none: not a Pathline plugin");
    return false;
  }
  const auto& descriptor = library.get<const PluginDescriptor>(kDescriptorSymbol);

  // The ABI version is checked before any other field is trusted.
  if (descriptor.abi_version != PATHLINE_SDK_ABI_VERSION) {
    fail(canonical, "abi-version",
         "expected SDK ABI version " + std::to_string(PATHLINE_SDK_ABI_VERSION) + ", found " +
             std::to_string(descriptor.abi_version) + " (plugin " + quoted_or_null(descriptor.name) +
             "); rebuild it against this SDK");
    return false;
  }
  if (!descriptor.name || !*descriptor.name || !descriptor.version || !descriptor.register_components) {
    fail(canonical, "descriptor",
         "expected a name, a version and a registration function, found " +
             std::string(!descriptor.name || !*descriptor.name ? "no name"
                         : !descriptor.version                 ? "no version"
                                                               : "no registration function"));
    return false;
  }
  if (!descriptor.torch_version || major_minor(descriptor.torch_version) != major_minor(TORCH_VERSION)) {
    fail(canonical, "torch-version",
         fmt::format("expected LibTorch {}.x (the host's {}; the major and minor versions must match, as "
                     "LibTorch keeps its C++ ABI only within a minor release), found {} (plugin '{}'); "
                     "rebuild it against LibTorch {}",
                     major_minor(TORCH_VERSION), TORCH_VERSION, quoted_or_null(descriptor.torch_version),
                     descriptor.name, major_minor(TORCH_VERSION)));
    return false;
  }
  if (descriptor.cxx11_abi != PATHLINE_CXX11_ABI) {
    fail(canonical, "cxx-abi",
         "expected _GLIBCXX_USE_CXX11_ABI=" + std::to_string(PATHLINE_CXX11_ABI) + ", found " +
             std::to_string(descriptor.cxx11_abi) + " (plugin '" + descriptor.name + "')");
    return false;
  }

  auto info =
      std::make_shared<PluginInfo>(PluginInfo{descriptor.name, descriptor.version, canonical, origin});
  StagingRegistrar staging(info);
  try {
    descriptor.register_components(staging);
    if (staging.staged() == 0) throw PluginError("expected at least one component, found none registered");
    staging.commit(registry_);
  } catch (const std::exception& e) {
    fail(canonical, "register", std::string(e.what()) + " (plugin '" + descriptor.name + "')");
    return false;
  } catch (...) {
    fail(canonical, "register",
         std::string("expected registration to succeed, found a non-standard exception (plugin '") +
             descriptor.name + "')");
    return false;
  }

  kept_libraries().push_back(std::move(library));
  loaded_files_.push_back(canonical);
  plugins_.push_back(std::move(info));
  return true;
}

void PluginHost::load_directory(const std::filesystem::path& dir, const std::string& origin) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    fail(dir, "search",
         "expected a directory of plugins, found " +
             std::string(std::filesystem::exists(dir, ec) ? "a file" : "nothing"));
    return;
  }
  std::vector<std::filesystem::path> files;
  for (const auto& item : std::filesystem::directory_iterator(dir, ec)) {
    const auto& p = item.path();
    if (item.is_regular_file(ec) && p.extension() == ".so") files.push_back(p);
  }
  std::sort(files.begin(), files.end());
  for (const auto& f : files) load_file(f, origin);
}

void PluginHost::load_search_path(const std::vector<std::filesystem::path>& extra_dirs, bool builtin) {
  if (builtin) load_directory(builtin_plugin_dir(), "built-in");
  if (const char* env = std::getenv("PATHLINE_PLUGIN_PATH")) {
    std::stringstream stream(env);
    std::string item;
    while (std::getline(stream, item, ':'))
      if (!item.empty()) load_directory(item, "PATHLINE_PLUGIN_PATH");
  }
  for (const auto& dir : extra_dirs) load_directory(dir, "--plugin-dir");
}

std::filesystem::path PluginHost::builtin_plugin_dir() {
  boost::dll::fs::error_code ec;
  auto engine = boost::dll::this_line_location(ec);
  return std::filesystem::path(engine).parent_path() / "pathline" / "plugins";
}

}  // namespace pathline
