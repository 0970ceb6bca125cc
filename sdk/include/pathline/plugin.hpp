// The one header a plugin includes: every interface, the registrar and the descriptor macro.
#pragma once

#include <type_traits>

#include "pathline/abi.hpp"
#include "pathline/autoencoder.hpp"
#include "pathline/coupling.hpp"
#include "pathline/dataset.hpp"
#include "pathline/metric.hpp"
#include "pathline/model.hpp"
#include "pathline/objective.hpp"
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

// The kind interface a class is or derives from (FixedStepSolver -> Solver); void for none.
namespace detail {
struct NoKindInterface {};
template <class T, class... Interfaces>
struct FirstKindBase {
  using type = void;
};
template <class T, class I, class... Rest>
struct FirstKindBase<T, I, Rest...> {
  using type = std::conditional_t<std::is_base_of_v<I, T>, I, typename FirstKindBase<T, Rest...>::type>;
};
}  // namespace detail
#define PATHLINE_KIND_INTERFACE(name, Interface) Interface,
template <class T>
using KindInterfaceOf =
    typename detail::FirstKindBase<T, PATHLINE_KINDS(PATHLINE_KIND_INTERFACE) detail::NoKindInterface>::type;
#undef PATHLINE_KIND_INTERFACE

// Handed to a plugin's registration function. Registration is staged: if the function throws,
// nothing it added is kept.
class PATHLINE_API Registrar {
 public:
  virtual ~Registrar() = default;
  // The one entry point: the factory must return a std::shared_ptr<Interface> of `kind`'s
  // interface, type-erased. Use add<Interface>() or add_type<>(), which guarantee that.
  virtual void add_component(Kind kind, ComponentDecl decl, ErasedFactory factory) = 0;

  // registrar.add<Path>({"linear", "x_t = t x1 + (1 - t) x0", {}}, factory). Interface is a kind's
  // interface (Dataset, Path, Coupling, TimeSampler, Parameterization, Model, Solver, TimeGrid,
  // Metric, Autoencoder, Objective) or a class derived from one (FixedStepSolver registers a Solver).
  template <class Interface>
  void add(ComponentDecl decl, Factory<Interface> factory) {
    using Base = KindInterfaceOf<Interface>;
    static_assert(!std::is_void_v<Base>,
                  "add<Interface>/add_type<Interface, Concrete>: Interface must be one of the kind "
                  "interfaces (Dataset, Path, Coupling, TimeSampler, Parameterization, Model, Solver, "
                  "TimeGrid, Metric, Autoencoder, Objective) or derive from one");
    add_component(
        KindOf<Base>::value, std::move(decl),
        [factory = std::move(factory)](const Params& p, const BuildContext& ctx) -> std::shared_ptr<void> {
          // Through the kind's interface: the registry hands out std::shared_ptr<Base>.
          return std::shared_ptr<Base>(factory(p, ctx));
        });
  }

  // registrar.add_type<Interface, Concrete>(decl): Concrete(const Params&, const BuildContext&).
  template <class Interface, class Concrete>
  void add_type(ComponentDecl decl) {
    static_assert(std::is_base_of_v<Interface, Concrete>,
                  "add_type<Interface, Concrete>: Concrete must derive from Interface");
    add<Interface>(std::move(decl), [](const Params& p, const BuildContext& ctx) {
      return std::shared_ptr<Interface>(std::make_shared<Concrete>(p, ctx));
    });
  }
};

}  // namespace pathline
