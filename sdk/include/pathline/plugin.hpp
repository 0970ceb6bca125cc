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
#include "pathline/time_sampler.hpp"

namespace pathline {

template <class Interface> struct KindOf;
template <> struct KindOf<Dataset> { static constexpr Kind value = Kind::dataset; };
template <> struct KindOf<Path> { static constexpr Kind value = Kind::path; };
template <> struct KindOf<Coupling> { static constexpr Kind value = Kind::coupling; };
template <> struct KindOf<TimeSampler> { static constexpr Kind value = Kind::time_sampler; };
template <> struct KindOf<Parameterization> { static constexpr Kind value = Kind::parameterization; };
template <> struct KindOf<Model> { static constexpr Kind value = Kind::model; };
template <> struct KindOf<Solver> { static constexpr Kind value = Kind::solver; };
template <> struct KindOf<Metric> { static constexpr Kind value = Kind::metric; };

// Handed to a plugin's registration function. Registration is staged: if the function throws,
// nothing it added is kept.
class PATHLINE_API Registrar {
 public:
  virtual ~Registrar() = default;
  virtual void add_dataset(ComponentDecl decl, Factory<Dataset> factory) = 0;
  virtual void add_path(ComponentDecl decl, Factory<Path> factory) = 0;
  virtual void add_coupling(ComponentDecl decl, Factory<Coupling> factory) = 0;
  virtual void add_time_sampler(ComponentDecl decl, Factory<TimeSampler> factory) = 0;
  virtual void add_parameterization(ComponentDecl decl, Factory<Parameterization> factory) = 0;
  virtual void add_model(ComponentDecl decl, Factory<Model> factory) = 0;
  virtual void add_solver(ComponentDecl decl, Factory<Solver> factory) = 0;
  virtual void add_metric(ComponentDecl decl, Factory<Metric> factory) = 0;

  // registrar.add<Path>({"linear", "x_t = t x1 + (1 - t) x0", {}}, factory)
  template <class Interface>
  void add(ComponentDecl decl, Factory<Interface> factory) {
    if constexpr (KindOf<Interface>::value == Kind::dataset) add_dataset(std::move(decl), std::move(factory));
    if constexpr (KindOf<Interface>::value == Kind::path) add_path(std::move(decl), std::move(factory));
    if constexpr (KindOf<Interface>::value == Kind::coupling) add_coupling(std::move(decl), std::move(factory));
    if constexpr (KindOf<Interface>::value == Kind::time_sampler) add_time_sampler(std::move(decl), std::move(factory));
    if constexpr (KindOf<Interface>::value == Kind::parameterization) add_parameterization(std::move(decl), std::move(factory));
    if constexpr (KindOf<Interface>::value == Kind::model) add_model(std::move(decl), std::move(factory));
    if constexpr (KindOf<Interface>::value == Kind::solver) add_solver(std::move(decl), std::move(factory));
    if constexpr (KindOf<Interface>::value == Kind::metric) add_metric(std::move(decl), std::move(factory));
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
