// Components from a validated config, in pipeline order.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "pathline/engine/config.hpp"
#include "pathline/engine/plugin_call.hpp"

namespace pathline {

struct BuiltMetric {
  std::string name;  // unique within the pipeline (ComponentConfig::name)
  std::string type;
  std::int64_t samples = 0;  // generated samples it judges; 0: all
  std::shared_ptr<Metric> metric;
  ComponentOrigin origin;  // slot "metric.<name>"
};

// Every component of a pipeline, built from its config: one member per single slot of
// PATHLINE_SLOTS (slots.hpp), named after its table (dataset, source, path, ..., time_grid), and the
// metrics.
struct Components {
#define PATHLINE_SLOT_MEMBER(table, Interface, ...) std::shared_ptr<Interface> table;
  PATHLINE_SLOTS(PATHLINE_SLOT_MEMBER)
#undef PATHLINE_SLOT_MEMBER
  std::vector<BuiltMetric> metrics;
  BuildContext context;  // context.data: what the engine knows about the target data
  // What the user should know but chose (a solver whose steps the user set, missing the exact flow
  // by more than kMaxNoiseScaleError): `note:` lines for the command to print or log.
  std::vector<std::string> notes;
  // Where each single slot's component came from (by slot table name), for plugin_call.
  std::map<std::string, ComponentOrigin> origins;

  // The flow runs in an autoencoder's latent space (any [autoencoder] but identity): training
  // encodes data batches, sampling decodes what the solver returns. False for a pipeline that trains
  // its autoencoder (no [model]): that one works on the data.
  bool latent = false;
  // Latents are encode(x).mean * latent_scale (unit variance over the data; measured when the
  // autoencoder was trained, read from its run).
  double latent_scale = 1.0;
  std::filesystem::path autoencoder_run;  // the trained autoencoder's run directory ("" for none)

  // Data batches [B, *data shape] to the flow's space, and back (the posterior mean, scaled; no
  // gradients). Identity when `latent` is false.
  torch::Tensor to_flow(const torch::Tensor& x, const Condition& condition) const;
  torch::Tensor to_data(const torch::Tensor& z, const Condition& condition) const;

  const DataInfo& data() const { return context.data; }
  // The space the flow runs in (BuildContext::flow): the data's unless set otherwise.
  const DataInfo& flow() const { return context.flow_space(); }
  // The origin of a slot's component; one naming only the slot when it was not built from a config
  // (components assembled by hand, in tests).
  const ComponentOrigin& origin(const std::string& slot) const;
};

// An autoencoder run's weights file and the settings saved with it.
inline constexpr const char* kAutoencoderWeights = "autoencoder.safetensors";

// Builds every slot in pipeline order; checks what only the built components can tell (the source
// draws samples shaped like the data; labels asked for exist; the sampling interval and the solver's
// grid resolve, and the solver at its default steps follows the path's exact flow of a point mass
// within kMaxNoiseScaleError). Throws ConfigError naming where the slot or key was given.
PATHLINE_API Components build_components(const PipelineConfig& config, const Registry& registry);

// The device [run] device names: "cpu"; "cuda", the GPU of index LOCAL_RANK in a data-parallel run
// (else 0); "auto", that GPU when CUDA can see one, else the CPU.
PATHLINE_API torch::Device run_device(const PipelineConfig& config);
// Whether this process can run on a CUDA GPU: LibTorch has CUDA compiled in and sees a device.
PATHLINE_API bool cuda_visible();
// Why it cannot, in a few words for messages, e.g. "this LibTorch 2.15.0 has CUDA compiled in but
// finds no GPU (CUDA_VISIBLE_DEVICES, the driver?)".
PATHLINE_API std::string cuda_absence();

// Everything that can be known before work starts, as `pathline validate` promises it: builds every
// component (each checks its parameters against each other and against the data), checks the
// labels asked for, and resolves the sampling interval and the solver's grid (the conversions the
// solver needs must be well posed on the path). Nothing is trained or written. ConfigError, each
// line naming the file, line and key (or the component's table) where the problem was given.
// Returns the notes of build_components.
PATHLINE_API std::vector<std::string> check_pipeline(const PipelineConfig& config, const Registry& registry);

// Sets LibTorch's intra-op threads from [run] threads (0: every core), and keep_freed_memory().
PATHLINE_API void apply_thread_setting(const PipelineConfig& config);
// Tells the C library to keep freed memory for reuse instead of returning it to the system after
// every tensor (with glibc; nothing elsewhere). Process-wide; called once by the jobs.
PATHLINE_API void keep_freed_memory();

// OpenBLAS (the BLAS of Debian's LibTorch) picks its kernels from a table of processor models when
// it loads; a processor newer than its table gets the generic SSE3 kernels ("Prescott"), about 5x
// slower than the AVX-512 ones it can run (measured on a Xeon with AVX-512: 52 against 270 GFLOP/s
// for a 2048 x 2048 product). Returns the kernel family to ask for (the value of
// OPENBLAS_CORETYPE: "SKYLAKEX", "HASWELL" or "SANDYBRIDGE") when the loaded OpenBLAS chose kernels
// for less than the processor supports; nullopt when its choice is right, the BLAS is not OpenBLAS,
// or OPENBLAS_CORETYPE is already set. The variable only acts before the library loads: the
// `pathline` command sets it and starts itself again (PATHLINE_BLAS_CHECK=0 turns this off).
PATHLINE_API std::optional<std::string> blas_kernel_override();
// The kernel family the loaded OpenBLAS uses ("SkylakeX", "Haswell", ...; "" for another BLAS).
PATHLINE_API std::string blas_kernel_name();

// "[1, 28, 28]"
PATHLINE_API std::string shape_text(const std::vector<std::int64_t>& shape);

}  // namespace pathline
