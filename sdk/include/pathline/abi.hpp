// Plugin ABI: the version number, the export macro and the descriptor every plugin exports.
#pragma once

#include <torch/version.h>

#include <cstdint>

// The SDK ABI version. Bump it whenever a change to any SDK header changes the layout or the
// virtual interface of something that crosses the plugin boundary. The host refuses plugins whose
// descriptor carries another number. It can be overridden on the command line only so that the
// tests can build a plugin "from another SDK" for real.
#ifndef PATHLINE_SDK_ABI_VERSION
#define PATHLINE_SDK_ABI_VERSION 8
#endif

// The LibTorch version a plugin was compiled against (overridable for the same reason).
#ifndef PATHLINE_TORCH_VERSION
#define PATHLINE_TORCH_VERSION TORCH_VERSION
#endif

#if defined(PATHLINE_CXX11_ABI_OVERRIDE)  // tests only
#define PATHLINE_CXX11_ABI PATHLINE_CXX11_ABI_OVERRIDE
#elif defined(_GLIBCXX_USE_CXX11_ABI)
#define PATHLINE_CXX11_ABI _GLIBCXX_USE_CXX11_ABI
#else
#define PATHLINE_CXX11_ABI 0
#endif

// Plugins are built with hidden visibility; the SDK's types and the descriptor stay visible so
// that RTTI and exceptions work across the boundary.
#define PATHLINE_API __attribute__((visibility("default")))

namespace pathline {

class Registrar;

// The symbol every plugin exports. The layout of the first five fields is frozen across all ABI
// versions so that the host can always read them and say what it found; only fields after
// `cxx11_abi` may change with the ABI version.
struct PluginDescriptor {
  std::uint32_t abi_version;  // PATHLINE_SDK_ABI_VERSION at the plugin's build
  const char* name;           // the plugin's name, e.g. "paths"
  const char* version;        // the plugin's own version, e.g. "0.1.0"
  const char* torch_version;  // TORCH_VERSION at the plugin's build, e.g. "1.13.0"
  int cxx11_abi;              // _GLIBCXX_USE_CXX11_ABI at the plugin's build
  void (*register_components)(Registrar&);
};

inline constexpr const char* kDescriptorSymbol = "pathline_plugin_descriptor";

}  // namespace pathline

// Declares the plugin's descriptor. Use it once per plugin, at namespace scope:
//   PATHLINE_PLUGIN("paths", "0.1.0", register_paths)
#define PATHLINE_PLUGIN(NAME, VERSION, REGISTER_FN)                                      \
  extern "C" PATHLINE_API const ::pathline::PluginDescriptor pathline_plugin_descriptor{ \
      PATHLINE_SDK_ABI_VERSION, NAME, VERSION, PATHLINE_TORCH_VERSION, PATHLINE_CXX11_ABI, REGISTER_FN};
