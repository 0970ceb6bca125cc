// The registry of components, filled by the plugin host, read by config validation and the engine.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "pathline/plugin.hpp"

namespace pathline {

// Where a component came from.
struct PluginInfo {
  std::string name;
  std::string version;
  std::filesystem::path file;  // empty for components registered in-process (tests)
  // How the host found it: "built-in", "PATHLINE_PLUGIN_PATH", "--plugin-dir" (PluginHost's
  // search path) or "explicit" (a direct load_file/load_directory call).
  std::string origin;
};

struct ComponentEntry {
  Kind kind;
  ComponentDecl decl;
  std::shared_ptr<const PluginInfo> plugin;
  ErasedFactory factory;  // returns a std::shared_ptr<Interface of kind>, type-erased

  const ParamSpec* find_param(const std::string& key) const {
    for (const auto& spec : decl.params)
      if (spec.name == key) return &spec;
    return nullptr;
  }
};

class PATHLINE_API Registry {
 public:
  // Adds an entry; throws PluginError naming the earlier owner if the kind and name are taken.
  void add(ComponentEntry entry);
  const ComponentEntry* find(Kind kind, const std::string& name) const;
  // Entries of one kind, sorted by name.
  std::vector<const ComponentEntry*> list(Kind kind) const;
  std::vector<std::string> names(Kind kind) const;
  std::size_t size() const { return entries_.size(); }

  // Builds a component; throws InputError if none of that kind and name is registered.
  template <class Interface>
  std::shared_ptr<Interface> create(const std::string& name, const Params& params,
                                    const BuildContext& ctx) const {
    const ComponentEntry* entry = find(KindOf<Interface>::value, name);
    if (!entry)
      throw InputError(std::string("no ") + to_string(KindOf<Interface>::value) + " named '" + name +
                       "' is registered");
    // The registrar's add<Interface> wrapped a shared_ptr<Interface>; the entry's kind says which.
    auto object = std::static_pointer_cast<Interface>(entry->factory(params, ctx));
    if (!object)
      throw Error(std::string(to_string(KindOf<Interface>::value)) + " '" + name +
                  "': its factory returned nothing");
    return object;
  }

 private:
  std::map<std::pair<Kind, std::string>, ComponentEntry> entries_;
};

// Collects a plugin's registrations; nothing reaches the registry until commit().
class PATHLINE_API StagingRegistrar : public Registrar {
 public:
  explicit StagingRegistrar(std::shared_ptr<const PluginInfo> plugin) : plugin_(std::move(plugin)) {}
  void add_component(Kind kind, ComponentDecl decl, ErasedFactory factory) override {
    stage(kind, std::move(decl), std::move(factory));
  }

  // Checks every staged entry against the registry and against each other, then adds them all, or
  // none (throwing PluginError).
  void commit(Registry& registry);
  std::size_t staged() const { return staged_.size(); }

 private:
  void stage(Kind kind, ComponentDecl decl, ErasedFactory factory);
  std::shared_ptr<const PluginInfo> plugin_;
  std::vector<ComponentEntry> staged_;
};

}  // namespace pathline
