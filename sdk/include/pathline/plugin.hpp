// The one header a plugin includes: every interface, the registrar and the descriptor macro.
#pragma once

#include "pathline/abi.hpp"
#include "pathline/coupling.hpp"
#include "pathline/dataset.hpp"
#include "pathline/metric.hpp"
#include "pathline/model.hpp"
#include "pathline/parameterization.hpp"
#include "pathline/path.hpp"
#include "pathline/solver.hpp"
#include "pathline/time_grid.hpp"
#include "pathline/time_sampler.hpp"

namespace pathline {

// The kind of an interface, from the table in component.hpp.
template <class Interface>
struct KindOf;
#define PATHLINE_KIND_OF(name, Interface)     \
  template <>                                 \
  struct KindOf<Interface> {                  \
    static constexpr Kind value = Kind::name; \
  };
PATHLINE_KINDS(PATHLINE_KIND_OF)
#undef PATHLINE_KIND_OF

// Handed to a plugin's registration function. Registration is staged: if the function throws,
// nothing it added is kept.
class PATHLINE_API Registrar {
 public:
  virtual ~Registrar() = default;
  // The one entry point: the factory must return a std::shared_ptr<Interface> of `kind`'s
  // interface, type-erased. Use add<Interface>() or add_type<>(), which guarantee that.
  virtual void add_component(Kind kind, ComponentDecl decl, ErasedFactory factory) = 0;

  // registrar.add<Path>({"linear", "x_t = t x1 + (1 - t) x0", {}}, factory)
  template <class Interface>
  void add(ComponentDecl decl, Factory<Interface> factory) {
    add_component(
        KindOf<Interface>::value, std::move(decl),
        [factory = std::move(factory)](const Params& p, const BuildContext& ctx) -> std::shared_ptr<void> {
          return std::shared_ptr<Interface>(factory(p, ctx));
        });
  }

  // registrar.add_type<Interface, Concrete>(decl): Concrete(const Params&, const BuildContext&).
  template <class Interface, class Concrete>
  void add_type(ComponentDecl decl) {
    add<Interface>(std::move(decl), [](const Params& p, const BuildContext& ctx) {
      return std::shared_ptr<Interface>(std::make_shared<Concrete>(p, ctx));
    });
  }
};

}  // namespace pathline
