// diffgentor.hpp: header-only C++17 binding of the diffgentor C API (include/diffgentor.h).
//
// Every type owns its C handle through std::unique_ptr / std::shared_ptr with a deleter that
// calls the matching dg_*_free, so resources are released deterministically on scope exit.
// Failures throw dg::Error (a std::runtime_error) carrying the stable dg::ErrorCode.
//
// Ownership of images: dg::Pipeline::generate returns dg::Images, which keeps the C result
// (dg_images_t) alive through a std::shared_ptr. Every dg::Image obtained from it shares that
// pointer, so an Image stays valid (pixels included) after its Images, Pipeline and Runtime are
// gone; the pixels are never copied. Images and Image are immutable and cheap to copy, and may be
// read from any thread.
//
// Pipelines are local (a model package loaded on a Runtime) or remote (Pipeline::remote: an
// OpenAI-compatible or Gemini image service, configured by RemoteOptions); both generate alike.
//
// LoRA adapters: Pipeline::load_lora / unload_lora / set_default_loras / loras_json, and per
// request Params::lora and clear_loras.
//
// Vision-language models (dg::Vlm, loaded with Runtime::load_vlm) caption images, answer questions
// about them and rewrite prompts for a generator (VlmParams::enhance); VlmResult holds the answer.
//
// Threading: Runtime, Pipeline and Vlm are thread-safe (many threads may call generate on one
// pipeline or model at once); Params, VlmParams, RuntimeOptions and RemoteOptions are builders for
// one thread at a time; CancelToken::cancel may be called from any thread. See
// bindings/cpp/README.md.

#ifndef DIFFGENTOR_HPP
#define DIFFGENTOR_HPP

#include <diffgentor.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <iomanip>
#include <limits>
#include <locale>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace dg {

/// Stable error classes; the values equal DG_ERROR_* (and never change).
enum class ErrorCode : int {
    Ok = DG_ERROR_OK,
    NullArg = DG_ERROR_NULL_ARG,
    InvalidArg = DG_ERROR_INVALID_ARG,
    Io = DG_ERROR_IO,
    Model = DG_ERROR_MODEL,
    Unsupported = DG_ERROR_UNSUPPORTED,
    EpUnavailable = DG_ERROR_EP_UNAVAILABLE,
    Cancelled = DG_ERROR_CANCELLED,
    Backend = DG_ERROR_BACKEND,
    Panic = DG_ERROR_PANIC,
    /// A remote service answered with an error, sent something unusable, or was unreachable.
    Remote = DG_ERROR_REMOTE,
    /// A remote service still refused for rate or quota after the retries.
    RateLimited = DG_ERROR_RATE_LIMITED,
    /// A remote call did not finish within its timeout (retries included).
    Timeout = DG_ERROR_TIMEOUT,
    /// A remote service's safety or moderation system blocked the prompt or the image.
    Refused = DG_ERROR_REFUSED,
};

/// The DG_ERROR_* name of a code, e.g. "DG_ERROR_MODEL".
inline const char *to_string(ErrorCode code) noexcept {
    switch (code) {
    case ErrorCode::Ok: return "DG_ERROR_OK";
    case ErrorCode::NullArg: return "DG_ERROR_NULL_ARG";
    case ErrorCode::InvalidArg: return "DG_ERROR_INVALID_ARG";
    case ErrorCode::Io: return "DG_ERROR_IO";
    case ErrorCode::Model: return "DG_ERROR_MODEL";
    case ErrorCode::Unsupported: return "DG_ERROR_UNSUPPORTED";
    case ErrorCode::EpUnavailable: return "DG_ERROR_EP_UNAVAILABLE";
    case ErrorCode::Cancelled: return "DG_ERROR_CANCELLED";
    case ErrorCode::Backend: return "DG_ERROR_BACKEND";
    case ErrorCode::Panic: return "DG_ERROR_PANIC";
    case ErrorCode::Remote: return "DG_ERROR_REMOTE";
    case ErrorCode::RateLimited: return "DG_ERROR_RATE_LIMITED";
    case ErrorCode::Timeout: return "DG_ERROR_TIMEOUT";
    case ErrorCode::Refused: return "DG_ERROR_REFUSED";
    }
    return "DG_ERROR_UNKNOWN";
}

/// An error reported by the library: what() is its message (UTF-8), code() its class.
class Error : public std::runtime_error {
public:
    Error(ErrorCode code, const std::string &message) : std::runtime_error(message), code_(code) {}

    ErrorCode code() const noexcept { return code_; }
    /// The numeric DG_ERROR_* value.
    int raw_code() const noexcept { return static_cast<int>(code_); }
    bool cancelled() const noexcept { return code_ == ErrorCode::Cancelled; }
    /// Whether a remote service caused it (Remote, RateLimited, Timeout or Refused).
    bool remote() const noexcept {
        return code_ == ErrorCode::Remote || code_ == ErrorCode::RateLimited ||
               code_ == ErrorCode::Timeout || code_ == ErrorCode::Refused;
    }

private:
    ErrorCode code_;
};

/// The loaded library's version ("MAJOR.MINOR.PATCH"); compare with DG_VERSION_* of the header.
inline std::string version() { return dg_version(); }
/// The loaded library's ABI version (its SONAME number), equal to DG_VERSION_MAJOR.
inline std::uint32_t abi_version() noexcept { return dg_abi_version(); }

namespace detail {

struct ErrorDeleter {
    void operator()(dg_error_t *e) const noexcept { dg_error_free(e); }
};
struct RuntimeOptionsDeleter {
    void operator()(dg_runtime_options_t *o) const noexcept { dg_runtime_options_free(o); }
};
struct RuntimeDeleter {
    void operator()(dg_runtime_t *r) const noexcept { dg_runtime_free(r); }
};
struct GeneratorOptionsDeleter {
    void operator()(dg_generator_options_t *o) const noexcept { dg_generator_options_free(o); }
};
struct PipelineDeleter {
    void operator()(dg_pipeline_t *p) const noexcept { dg_pipeline_free(p); }
};
struct ParamsDeleter {
    void operator()(dg_params_t *p) const noexcept { dg_params_free(p); }
};
struct CancelTokenDeleter {
    void operator()(dg_cancel_token_t *t) const noexcept { dg_cancel_token_free(t); }
};
struct ImagesDeleter {
    void operator()(dg_images_t *i) const noexcept { dg_images_free(i); }
};
struct BufferDeleter {
    void operator()(dg_buffer_t *b) const noexcept { dg_buffer_free(b); }
};
struct VlmDeleter {
    void operator()(dg_vlm_t *v) const noexcept { dg_vlm_free(v); }
};
struct VlmParamsDeleter {
    void operator()(dg_vlm_params_t *p) const noexcept { dg_vlm_params_free(p); }
};
struct StringDeleter {
    void operator()(char *s) const noexcept { dg_string_free(s); }
};

/// Takes ownership of `raw` (NULL = success) and throws it as dg::Error.
inline void check(dg_error_t *raw) {
    if (raw == nullptr) return;
    std::unique_ptr<dg_error_t, ErrorDeleter> err(raw);
    throw Error(static_cast<ErrorCode>(dg_error_code(err.get())), dg_error_message(err.get()));
}

/// A NUL-terminated copy-free view of `s` for the C API; a string with an embedded NUL would be
/// silently truncated by C, so it is rejected as InvalidArg naming the parameter.
inline const char *c_str(const std::string &s, const char *what) {
    if (s.find('\0') != std::string::npos)
        throw Error(ErrorCode::InvalidArg, std::string(what) + " contains a NUL byte");
    return s.c_str();
}

/// The stride of a `width` x `height` x `channels` image in `pixels` (`stride` 0: unpadded rows),
/// after checking that the vector holds every byte the C call will read.
inline std::size_t checked_layout(const std::vector<std::uint8_t> &pixels, std::uint32_t width,
                                  std::uint32_t height, std::uint32_t channels, std::size_t stride,
                                  const char *what) {
    // An empty vector's data() may be null, which C would take as "clear": refused instead.
    if (pixels.empty())
        throw Error(ErrorCode::InvalidArg, std::string(what) + ": an empty pixel vector");
    const std::size_t row = std::size_t{width} * channels;
    if (stride == 0) stride = row;
    // Sides and channels are checked by the library; only a short vector is caught here.
    if (width != 0 && height != 0 && channels != 0 && stride >= row) {
        const std::size_t rows = std::size_t{height} - 1;
        if (rows > (SIZE_MAX - row) / stride || pixels.size() < stride * rows + row)
            throw Error(ErrorCode::InvalidArg,
                        std::string(what) + ": " + std::to_string(pixels.size()) +
                            " bytes are too few for " + std::to_string(width) + "x" +
                            std::to_string(height) + "x" + std::to_string(channels) +
                            " with stride " + std::to_string(stride));
    }
    return stride;
}

/// A float as text that parses back to the same float (whatever the global locale).
inline std::string float_text(float value) {
    std::ostringstream out;
    out.imbue(std::locale::classic());
    out << std::setprecision(std::numeric_limits<float>::max_digits10) << value;
    return out.str();
}

[[noreturn]] inline void moved_from(const char *type) {
    throw Error(ErrorCode::NullArg, std::string("use of a moved-from dg::") + type);
}

}  // namespace detail

/// Options of a Runtime: a fluent builder (one thread at a time). Runtime copies them.
class RuntimeOptions {
public:
    RuntimeOptions() {
        dg_runtime_options_t *raw = nullptr;
        detail::check(dg_runtime_options_new(&raw));
        handle_.reset(raw);
    }

    /// The ONNX Runtime shared library to load instead of the discovery order.
    RuntimeOptions &ort_library(const std::string &path) {
        detail::check(
            dg_runtime_options_set_ort_library(get(), detail::c_str(path, "ort_library")));
        return *this;
    }
    /// "cpu", "cuda", "cuda:ID", "tensorrt" or "tensorrt:ID"; anything else is InvalidArg.
    RuntimeOptions &execution_provider(const std::string &ep) {
        detail::check(dg_runtime_options_set_execution_provider(
            get(), detail::c_str(ep, "execution_provider")));
        return *this;
    }
    /// Use the CPU when the chosen provider cannot be registered, instead of failing.
    RuntimeOptions &allow_cpu_fallback(bool allow = true) {
        detail::check(dg_runtime_options_set_allow_cpu_fallback(get(), allow));
        return *this;
    }
    /// Intra-op threads per ONNX Runtime session; 0 = ONNX Runtime's default.
    RuntimeOptions &intra_threads(std::uint32_t threads) {
        detail::check(dg_runtime_options_set_intra_threads(get(), threads));
        return *this;
    }
    /// TensorRT only: allow fp16 engines.
    RuntimeOptions &tensorrt_fp16(bool fp16 = true) {
        detail::check(dg_runtime_options_set_tensorrt_fp16(get(), fp16));
        return *this;
    }
    /// TensorRT only: directory for serialized engines and the timing cache.
    RuntimeOptions &tensorrt_engine_cache(const std::string &dir) {
        detail::check(dg_runtime_options_set_tensorrt_engine_cache(
            get(), detail::c_str(dir, "tensorrt_engine_cache")));
        return *this;
    }
    /// Any option by key, e.g. set("sessions_per_graph", "2"): "ort_library",
    /// "execution_provider", "allow_cpu_fallback", "intra_threads", "optimization",
    /// "no_spinning", "sessions_per_graph", "optimized_graph_cache", "tensorrt_fp16",
    /// "tensorrt_engine_cache" (dg_runtime_options_set). An unknown key is InvalidArg listing the
    /// keys; an unparsable value is InvalidArg naming key and value.
    RuntimeOptions &set(const std::string &key, const std::string &value) {
        detail::check(dg_runtime_options_set(get(), detail::c_str(key, "key"),
                                             detail::c_str(value, "value")));
        return *this;
    }

    const dg_runtime_options_t *get() const {
        if (!handle_) detail::moved_from("RuntimeOptions");
        return handle_.get();
    }
    dg_runtime_options_t *get() {
        if (!handle_) detail::moved_from("RuntimeOptions");
        return handle_.get();
    }

private:
    std::unique_ptr<dg_runtime_options_t, detail::RuntimeOptionsDeleter> handle_;
};

/// Settings of a remote pipeline (Pipeline::remote): a fluent builder (one thread at a time),
/// string keys as in dg_generator_options_set. Keys are checked by Pipeline::remote (an unknown
/// key or a bad value is InvalidArg naming it); an empty value removes a key. Keys not set come
/// from the backend's DG_<BACKEND>_* environment variables (DG_OPENAI_API_KEY, ...).
class RemoteOptions {
public:
    RemoteOptions() {
        dg_generator_options_t *raw = nullptr;
        detail::check(dg_generator_options_new(&raw));
        handle_.reset(raw);
    }

    /// Any key: "base_url", "api_key", "model", "timeout_s", "max_retries", "max_in_flight",
    /// "pool_file" or the backend's own (docs/backends.md).
    RemoteOptions &set(const std::string &key, const std::string &value) {
        // The value is never quoted in an error: it may be the API key.
        detail::check(dg_generator_options_set(get(), detail::c_str(key, "key"),
                                               detail::c_str(value, "value")));
        return *this;
    }
    /// The service's base URL, e.g. "https://api.openai.com/v1" or "http://127.0.0.1:8080/v1".
    RemoteOptions &base_url(const std::string &url) { return set("base_url", url); }
    /// The key sent with every request (openai: "Authorization: Bearer KEY"); never shown in
    /// error messages.
    RemoteOptions &api_key(const std::string &key) { return set("api_key", key); }
    /// The remote model, e.g. "gpt-image-1".
    RemoteOptions &model(const std::string &name) { return set("model", name); }
    /// The limit of each HTTP call (millisecond resolution; positive, at most a day).
    template <class Rep, class Period>
    RemoteOptions &timeout(std::chrono::duration<Rep, Period> limit) {
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(limit).count();
        if (ms <= 0) throw Error(ErrorCode::InvalidArg, "timeout must be at least 1 ms");
        const auto whole = static_cast<unsigned long long>(ms / 1000);
        std::string frac = std::to_string(ms % 1000);
        frac.insert(0, 3 - frac.size(), '0');
        return set("timeout_s", std::to_string(whole) + "." + frac);
    }
    /// Retries after a failed first attempt (429, 5xx, timeout, broken connection); default 2.
    RemoteOptions &max_retries(std::uint32_t retries) {
        return set("max_retries", std::to_string(retries));
    }

    const dg_generator_options_t *get() const {
        if (!handle_) detail::moved_from("RemoteOptions");
        return handle_.get();
    }
    dg_generator_options_t *get() {
        if (!handle_) detail::moved_from("RemoteOptions");
        return handle_.get();
    }

private:
    std::unique_ptr<dg_generator_options_t, detail::GeneratorOptionsDeleter> handle_;
};

class Pipeline;
class Vlm;

/// A loaded ONNX Runtime with its execution provider. Thread-safe; share one per process.
/// Pipelines keep it alive internally, so it may be destroyed before them.
class Runtime {
public:
    /// Defaults: CPU, ONNX Runtime found through DG_ORT_DYLIB_PATH and the usual places.
    Runtime() { init(nullptr); }
    explicit Runtime(const RuntimeOptions &options) { init(options.get()); }

    /// Loads a model package directory on this runtime (same as Pipeline(runtime, dir)).
    inline Pipeline load(const std::string &model_dir) const;
    /// Loads a vision-language model package on this runtime (same as Vlm(runtime, dir)).
    inline Vlm load_vlm(const std::string &model_dir) const;

    const dg_runtime_t *get() const {
        if (!handle_) detail::moved_from("Runtime");
        return handle_.get();
    }
    explicit operator bool() const noexcept { return static_cast<bool>(handle_); }

private:
    void init(const dg_runtime_options_t *opts) {
        dg_runtime_t *raw = nullptr;
        detail::check(dg_runtime_new(opts, &raw));
        handle_.reset(raw);
    }
    std::unique_ptr<dg_runtime_t, detail::RuntimeDeleter> handle_;
};

class Image;

/// Parameters of one request: a fluent builder (one thread at a time). generate copies them, so
/// one Params may be changed and reused between requests.
///
/// Editing: an init image makes the request img2img (strength), with a mask inpainting, and on an
/// InstructPix2Pix package instruction editing (image_guidance_scale); a plan runs progressive
/// stages (docs/editing.md). Pixel buffers are copied by the setter, so they may be freed right
/// after it returns.
class Params {
public:
    /// diffusers' defaults: empty prompt, 50 steps, guidance 7.5, one image, the package's size
    /// and scheduler, torch-compatible noise, a random seed (reported by Images::seed()).
    Params() {
        dg_params_t *raw = nullptr;
        detail::check(dg_params_new(&raw));
        handle_.reset(raw);
    }

    Params &prompt(const std::string &text) {
        detail::check(dg_params_set_prompt(get(), detail::c_str(text, "prompt")));
        return *this;
    }
    Params &negative_prompt(const std::string &text) {
        detail::check(
            dg_params_set_negative_prompt(get(), detail::c_str(text, "negative_prompt")));
        return *this;
    }
    /// Back to no negative prompt (the unconditional pass uses "").
    Params &clear_negative_prompt() {
        detail::check(dg_params_set_negative_prompt(get(), nullptr));
        return *this;
    }
    Params &steps(std::uint32_t steps) {
        detail::check(dg_params_set_steps(get(), steps));
        return *this;
    }
    Params &guidance_scale(float scale) {
        detail::check(dg_params_set_guidance_scale(get(), scale));
        return *this;
    }
    Params &size(std::uint32_t width, std::uint32_t height) {
        detail::check(dg_params_set_size(get(), width, height));
        return *this;
    }
    Params &seed(std::uint64_t seed) {
        detail::check(dg_params_set_seed(get(), seed));
        return *this;
    }
    Params &num_images(std::uint32_t n) {
        detail::check(dg_params_set_num_images(get(), n));
        return *this;
    }
    Params &scheduler(const std::string &name) {
        detail::check(dg_params_set_scheduler(get(), detail::c_str(name, "scheduler")));
        return *this;
    }

    /// The source image of img2img, inpainting and instruction editing (copied): `height` rows of
    /// `stride` bytes, each `width` pixels of `channels` bytes (1 grey, 3 RGB, 4 RGBA with alpha
    /// ignored). It must have the output size (a size left unset is taken from it). Bad channels,
    /// stride or sides are InvalidArg; a size that differs from the request's is InvalidArg at
    /// generate time. A null `pixels` clears it (as clear_init_image()).
    Params &init_image(const std::uint8_t *pixels, std::uint32_t width, std::uint32_t height,
                       std::uint32_t channels, std::size_t stride) {
        detail::check(dg_params_set_init_image(get(), pixels, width, height, channels, stride));
        return *this;
    }
    /// As above from a vector; `stride` 0 means width * channels (rows not padded). A vector too
    /// short for the layout is InvalidArg (nothing is read past its end).
    Params &init_image(const std::vector<std::uint8_t> &pixels, std::uint32_t width,
                       std::uint32_t height, std::uint32_t channels, std::size_t stride = 0) {
        stride = detail::checked_layout(pixels, width, height, channels, stride, "init image");
        return init_image(pixels.data(), width, height, channels, stride);
    }
    /// An image a pipeline made (RGB8), e.g. to edit a generated image further.
    inline Params &init_image(const Image &image);
    /// Back to text-to-image (no init image).
    Params &clear_init_image() {
        detail::check(dg_params_set_init_image(get(), nullptr, 0, 0, 0, 0));
        return *this;
    }
    /// The inpainting mask (copied), laid out as init_image() and of the same size (checked at
    /// generate time: InvalidArg): pixels with luma >= 128 (white) are repainted, the rest kept.
    /// Needs an init image. A null `pixels` clears it (as clear_mask()).
    Params &mask(const std::uint8_t *pixels, std::uint32_t width, std::uint32_t height,
                 std::uint32_t channels, std::size_t stride) {
        detail::check(dg_params_set_mask(get(), pixels, width, height, channels, stride));
        return *this;
    }
    /// As above from a vector; `stride` 0 means width * channels.
    Params &mask(const std::vector<std::uint8_t> &pixels, std::uint32_t width,
                 std::uint32_t height, std::uint32_t channels, std::size_t stride = 0) {
        stride = detail::checked_layout(pixels, width, height, channels, stride, "mask");
        return mask(pixels.data(), width, height, channels, stride);
    }
    /// An image a pipeline made, used as the mask (its luma decides).
    inline Params &mask(const Image &image);
    /// No mask (plain img2img when an init image is set).
    Params &clear_mask() {
        detail::check(dg_params_set_mask(get(), nullptr, 0, 0, 0, 0));
        return *this;
    }
    /// How much of the init image is re-noised, in (0, 1] (else InvalidArg, checked here);
    /// without it img2img uses 0.8 and inpainting 1.0.
    Params &strength(double strength) {
        detail::check(dg_params_set_strength(get(), strength));
        return *this;
    }
    /// InstructPix2Pix's image guidance scale (default 1.5; used when >= 1 and the guidance scale
    /// is > 1).
    Params &image_guidance_scale(float scale) {
        detail::check(dg_params_set_image_guidance_scale(get(), scale));
        return *this;
    }
    /// A progressive plan from its JSON text (docs/editing.md), e.g.
    /// {"stages": [{"width": 64, "height": 64, "steps": 2}, {"width": 96, "height": 96,
    /// "steps": 2, "strength": 0.5}]}; checked here (bad JSON, no stages, an unknown field:
    /// InvalidArg).
    Params &plan(const std::string &json) {
        detail::check(dg_params_set_plan(get(), detail::c_str(json, "plan")));
        return *this;
    }
    /// No plan (a single stage).
    Params &clear_plan() {
        detail::check(dg_params_set_plan(get(), nullptr));
        return *this;
    }

    /// Appends adapter `name` (loaded with Pipeline::load_lora) at `strength` to the request's
    /// LoRA stack (1 = as trained, negative subtracts it); the first call replaces the pipeline's
    /// default stack for this request. A non-finite strength, an empty name, a name already in the
    /// stack and an 11th adapter throw InvalidArg here; a name that is not loaded throws
    /// InvalidArg from Pipeline::generate, listing the loaded ones.
    Params &lora(const std::string &name, float strength = 1.0f) {
        detail::check(dg_params_add_lora(get(), detail::c_str(name, "LoRA name"), strength));
        return *this;
    }
    /// Runs the request without any LoRA, whatever the pipeline's default stack (lora() then
    /// starts a new stack).
    Params &clear_loras() {
        detail::check(dg_params_clear_loras(get()));
        return *this;
    }

    /// Remote pipelines: leave out the fields the service cannot honour (negative prompt, seed,
    /// scheduler, ...) and list them in Images::metadata()'s "ignored", instead of throwing
    /// Unsupported. Local pipelines honour every field anyway.
    Params &best_effort(bool on = true) { return set("best_effort", on ? "true" : "false"); }
    /// Any parameter by key, e.g. set("guidance_scale", "7.5") or
    /// set("scheduler.timestep_spacing", "trailing"); an unknown key is InvalidArg naming it.
    Params &set(const std::string &key, const std::string &value) {
        detail::check(
            dg_params_set(get(), detail::c_str(key, "key"), detail::c_str(value, "value")));
        return *this;
    }

    const dg_params_t *get() const {
        if (!handle_) detail::moved_from("Params");
        return handle_.get();
    }
    dg_params_t *get() {
        if (!handle_) detail::moved_from("Params");
        return handle_.get();
    }

private:
    std::unique_ptr<dg_params_t, detail::ParamsDeleter> handle_;
};

/// A cancellation flag for one request. cancel() is thread-safe and may be called from any
/// thread while another generates with the token; a raised token stays raised (use a new one per
/// request). Destroy it only once no generate using it is running.
class CancelToken {
public:
    CancelToken() {
        dg_cancel_token_t *raw = nullptr;
        detail::check(dg_cancel_token_new(&raw));
        handle_.reset(raw);
    }

    /// Stops a generate using this token before its next denoising step (or before decoding);
    /// that generate throws Error with ErrorCode::Cancelled. No-op on a moved-from token.
    void cancel() const noexcept { dg_cancel_token_cancel(handle_.get()); }

    const dg_cancel_token_t *get() const {
        if (!handle_) detail::moved_from("CancelToken");
        return handle_.get();
    }

private:
    std::unique_ptr<dg_cancel_token_t, detail::CancelTokenDeleter> handle_;
};

/// Progress of a running request, reported after every denoising step (remote pipelines: after
/// every image received).
struct Progress {
    std::uint32_t step = 0;        ///< steps finished so far (1 after the first)
    std::uint32_t total = 0;       ///< steps in the request
    double elapsed_seconds = 0.0;  ///< since the request started
    std::uint32_t stage = 1;       ///< the plan stage running, 1-based (1 without a plan)
    std::uint32_t stages = 1;      ///< stages in the request (1 without a plan)
};

/// Called on the generating thread after every step; return false to cancel the request. An
/// exception thrown by it cancels the request and is rethrown by generate once the C call returns.
using ProgressCallback = std::function<bool(const Progress &)>;

/// One RGB8 image (3 bytes per pixel, rows top to bottom, no padding). Keeps the request's result
/// alive: valid (pixels included) as long as any Image or Images of that request exists.
class Image {
public:
    /// An empty image (no pixels; every getter returns 0 or nullptr).
    Image() = default;

    std::uint32_t width() const noexcept { return dg_image_width(raw_); }
    std::uint32_t height() const noexcept { return dg_image_height(raw_); }
    /// Bytes per pixel: 3.
    std::uint32_t channels() const noexcept { return dg_image_channels(raw_); }
    /// Bytes per row: 3 * width.
    std::size_t stride() const noexcept { return dg_image_stride(raw_); }
    /// height() * stride() bytes, RGB, top row first; valid as long as this Image.
    const std::uint8_t *pixels() const noexcept { return dg_image_pixels(raw_); }
    std::size_t size_bytes() const noexcept { return stride() * height(); }
    /// A copy of the pixels.
    std::vector<std::uint8_t> to_vector() const {
        const std::uint8_t *p = pixels();
        return p ? std::vector<std::uint8_t>(p, p + size_bytes()) : std::vector<std::uint8_t>();
    }

    /// Writes a PNG file atomically (parent directories are created).
    void write_png(const std::string &path) const {
        detail::check(dg_image_write_png(raw_, detail::c_str(path, "path")));
    }
    /// Writes a JPEG file atomically; quality 1..100 (else InvalidArg).
    void write_jpeg(const std::string &path, std::uint8_t quality = 90) const {
        detail::check(dg_image_write_jpeg(raw_, detail::c_str(path, "path"), quality));
    }
    std::vector<std::uint8_t> encode_png() const {
        dg_buffer_t *raw = nullptr;
        detail::check(dg_image_encode_png(raw_, &raw));
        return take(raw);
    }
    std::vector<std::uint8_t> encode_jpeg(std::uint8_t quality = 90) const {
        dg_buffer_t *raw = nullptr;
        detail::check(dg_image_encode_jpeg(raw_, quality, &raw));
        return take(raw);
    }

    /// The borrowed C image (valid as long as this Image).
    const dg_image_t *get() const noexcept { return raw_; }

private:
    friend class Images;
    Image(std::shared_ptr<const dg_images_t> owner, const dg_image_t *raw)
        : owner_(std::move(owner)), raw_(raw) {}

    static std::vector<std::uint8_t> take(dg_buffer_t *raw) {
        std::unique_ptr<dg_buffer_t, detail::BufferDeleter> buf(raw);
        const std::uint8_t *data = dg_buffer_data(buf.get());
        return std::vector<std::uint8_t>(data, data + dg_buffer_len(buf.get()));
    }

    std::shared_ptr<const dg_images_t> owner_;
    const dg_image_t *raw_ = nullptr;
};

inline Params &Params::init_image(const Image &image) {
    if (image.pixels() == nullptr)
        throw Error(ErrorCode::InvalidArg, "init image: an empty dg::Image (use clear_init_image)");
    return init_image(image.pixels(), image.width(), image.height(), image.channels(),
                      image.stride());
}

inline Params &Params::mask(const Image &image) {
    if (image.pixels() == nullptr)
        throw Error(ErrorCode::InvalidArg, "mask: an empty dg::Image (use clear_mask)");
    return mask(image.pixels(), image.width(), image.height(), image.channels(), image.stride());
}

/// The images of one request, in order, with the seed it used. Shares (never copies) the C
/// result with every Image taken from it.
class Images {
public:
    using const_iterator = std::vector<Image>::const_iterator;

    /// No images.
    Images() = default;

    std::size_t size() const noexcept { return images_.size(); }
    bool empty() const noexcept { return images_.empty(); }
    const Image &operator[](std::size_t i) const noexcept { return images_[i]; }
    const Image &at(std::size_t i) const { return images_.at(i); }
    const Image &front() const { return images_.at(0); }
    const_iterator begin() const noexcept { return images_.begin(); }
    const_iterator end() const noexcept { return images_.end(); }
    /// The seed the request used (the one set, or the one drawn when none was).
    std::uint64_t seed() const noexcept { return seed_; }
    /// What the generator reported besides the images, as JSON object text: a remote service's
    /// "model" and "revised_prompts", the request fields it "ignored" (Params::best_effort);
    /// "{}" for local pipelines and "" for empty Images.
    std::string metadata() const { return dg_images_metadata(owner_.get()); }

    const dg_images_t *get() const noexcept { return owner_.get(); }

private:
    friend class Pipeline;
    explicit Images(dg_images_t *raw)
        : owner_(std::shared_ptr<const dg_images_t>(raw, [](const dg_images_t *p) {
              dg_images_free(const_cast<dg_images_t *>(p));
          })),
          seed_(dg_images_seed(raw)) {
        const std::size_t n = dg_images_count(raw);
        images_.reserve(n);
        for (std::size_t i = 0; i < n; ++i) images_.push_back(Image(owner_, dg_images_get(raw, i)));
    }

    std::shared_ptr<const dg_images_t> owner_;
    std::vector<Image> images_;
    std::uint64_t seed_ = 0;
};

namespace detail {

struct ProgressContext {
    const ProgressCallback *callback;
    std::exception_ptr error;
};

// Called by the library on the generating thread. Nothing may unwind into C: any exception is
// stored and turns into a cancel; generate rethrows it once dg_pipeline_generate has returned.
// (C++ linkage on purpose: that is the linkage of the header's dg_progress_fn typedef in C++.)
inline bool progress_trampoline(const dg_progress_t *progress, void *user_data) noexcept {
    auto *ctx = static_cast<ProgressContext *>(user_data);
    if (ctx->error) return false;
    try {
        Progress p;
        const std::uint32_t size = progress->struct_size;
        if (size >= offsetof(dg_progress_t, step) + sizeof progress->step) p.step = progress->step;
        if (size >= offsetof(dg_progress_t, total) + sizeof progress->total)
            p.total = progress->total;
        if (size >= offsetof(dg_progress_t, elapsed_seconds) + sizeof progress->elapsed_seconds)
            p.elapsed_seconds = progress->elapsed_seconds;
        if (size >= offsetof(dg_progress_t, stages) + sizeof progress->stages) {
            p.stage = progress->stage;
            p.stages = progress->stages;
        }
        return (*ctx->callback)(p);
    } catch (...) {
        ctx->error = std::current_exception();
        return false;
    }
}

}  // namespace detail

/// One adapter of a LoRA stack (Pipeline::set_default_loras) and its strength.
struct Lora {
    std::string name;
    float strength = 1.0f;
};

/// What draws the images: a model package loaded on a runtime, or a remote image service
/// (Pipeline::remote). Thread-safe: generate may run on many threads at once. Keeps its runtime
/// alive. Do not destroy it while a generate on it is running.
class Pipeline {
public:
    /// Loads the package in `model_dir` (optimum/diffusers ONNX layout).
    Pipeline(const Runtime &runtime, const std::string &model_dir) {
        dg_pipeline_t *raw = nullptr;
        detail::check(
            dg_pipeline_load(runtime.get(), detail::c_str(model_dir, "model_dir"), &raw));
        handle_.reset(raw);
    }

    /// A pipeline that sends requests to a remote image service: `backend` is "openai" (OpenAI
    /// Images or any server with its API) or "gemini". Nothing is sent until the first generate.
    /// An unknown backend or option is InvalidArg; failures of the service throw Remote,
    /// RateLimited, Timeout or Refused; fields it cannot honour throw Unsupported naming them
    /// unless the params set best_effort().
    static Pipeline remote(const std::string &backend,
                           const RemoteOptions &options = RemoteOptions()) {
        dg_pipeline_t *raw = nullptr;
        detail::check(
            dg_pipeline_new_remote(detail::c_str(backend, "backend"), options.get(), &raw));
        return Pipeline(raw);
    }

    /// "local", "openai" or "gemini".
    std::string kind() const { return dg_pipeline_kind(get()); }

    /// Runs one request: text-to-image, or an edit when the params carry an init image
    /// (img2img, inpainting with a mask, instruction editing), staged when they carry a plan
    /// (Progress::stage of Progress::stages). `progress` (may be empty) is called after every step;
    /// returning false cancels. `cancel` (may be null) may be raised from any thread. A cancelled
    /// request throws Error(ErrorCode::Cancelled); an exception thrown by `progress` is rethrown
    /// as is once the request has stopped.
    Images generate(const Params &params, const ProgressCallback &progress = nullptr,
                    const CancelToken *cancel = nullptr) const {
        detail::ProgressContext ctx{&progress, nullptr};
        dg_images_t *raw = nullptr;
        dg_error_t *err = dg_pipeline_generate(
            get(), params.get(), progress ? &detail::progress_trampoline : nullptr,
            progress ? &ctx : nullptr, cancel ? cancel->get() : nullptr, &raw);
        if (ctx.error) {
            dg_error_free(err);
            dg_images_free(raw);
            std::rethrow_exception(ctx.error);
        }
        detail::check(err);
        return Images(raw);
    }
    Images generate(const Params &params, const CancelToken &cancel,
                    const ProgressCallback &progress = nullptr) const {
        return generate(params, progress, &cancel);
    }

    /// Loads the LoRA file at `path` (safetensors: diffusers/PEFT, kohya or LyCORIS naming) as
    /// adapter `name` (1 to 128 letters, digits, '_', '-' or '.'), replacing one of that name.
    /// `allow_partial` skips tensors that match no weight of the model instead of failing.
    /// Requests pick adapters with Params::lora or the default stack; a request without a stack
    /// still gives the base model's pixels. A missing file throws Io; a bad name, a file that is
    /// not safetensors or one made for another model InvalidArg; a remote pipeline Unsupported.
    /// Thread-safe (may run while other threads generate).
    void load_lora(const std::string &name, const std::string &path,
                   bool allow_partial = false) const {
        detail::check(dg_pipeline_lora_load(get(), detail::c_str(name, "LoRA name"),
                                            detail::c_str(path, "LoRA path"),
                                            allow_partial ? DG_LORA_ALLOW_PARTIAL : 0u));
    }
    /// Unloads adapter `name` and takes it out of the default stack; InvalidArg when no adapter
    /// of that name is loaded.
    void unload_lora(const std::string &name) const {
        detail::check(dg_pipeline_lora_unload(get(), detail::c_str(name, "LoRA name")));
    }
    /// The loaded adapters and the default stack, as JSON object text: "adapters" (by name, each
    /// with "name", "path", "format", "layers" per component, "unmatched" and "default_strength",
    /// null when not in the default stack) and "default_stack" ([{"name", "strength"}], in order).
    std::string loras_json() const {
        char *raw = nullptr;
        detail::check(dg_pipeline_lora_list(get(), &raw));
        std::unique_ptr<char, detail::StringDeleter> text(raw);
        return std::string(text.get());
    }
    /// Sets the stack of requests that name none (no Params::lora, no clear_loras); every adapter
    /// must be loaded, at most 10, each once, with finite strengths (else InvalidArg, and the
    /// default stack is unchanged). An empty vector clears it.
    void set_default_loras(const std::vector<Lora> &stack) const {
        std::string text;
        for (const Lora &lora : stack) {
            if (lora.name.empty() || lora.name.find_first_of(":;,") != std::string::npos)
                throw Error(ErrorCode::InvalidArg, "LoRA name \"" + lora.name +
                                                       "\" must be 1 to 128 letters, digits, "
                                                       "'_', '-' or '.'");
            if (!text.empty()) text += ';';
            text += lora.name + ':' + detail::float_text(lora.strength);
        }
        detail::check(dg_pipeline_lora_set_default(get(), detail::c_str(text, "LoRA stack")));
    }
    /// No default stack: requests that name none run without LoRA.
    void clear_default_loras() const { detail::check(dg_pipeline_lora_set_default(get(), "")); }

    const dg_pipeline_t *get() const {
        if (!handle_) detail::moved_from("Pipeline");
        return handle_.get();
    }
    explicit operator bool() const noexcept { return static_cast<bool>(handle_); }

private:
    explicit Pipeline(dg_pipeline_t *raw) noexcept : handle_(raw) {}

    std::unique_ptr<dg_pipeline_t, detail::PipelineDeleter> handle_;
};

inline Pipeline Runtime::load(const std::string &model_dir) const {
    return Pipeline(*this, model_dir);
}

/// Parameters of one VLM request: the conversation, in order, and the generation settings. A
/// fluent builder (one thread at a time); Vlm::generate copies it, so it may be changed and reused.
/// Consecutive parts of one role form one message; a part of another role starts the next one.
class VlmParams {
public:
    /// No message yet; at most 128 new tokens, greedy decoding, no stop string.
    VlmParams() {
        dg_vlm_params_t *raw = nullptr;
        detail::check(dg_vlm_params_new(&raw));
        handle_.reset(raw);
    }

    /// Prompt enhancement: asks the model to rewrite `instruction` (an edit instruction or a
    /// text-to-image prompt) into a better prompt for a generator of `style`: "qwen_image_edit",
    /// "flux2", "glm_image" or "t2i" (else InvalidArg listing them). Add the image it is about, if
    /// any, with one image*() call; text() is refused. Read VlmResult::enhanced_prompt().
    static VlmParams enhance(const std::string &style, const std::string &instruction) {
        dg_vlm_params_t *raw = nullptr;
        detail::check(dg_vlm_params_new_enhance(detail::c_str(style, "style"),
                                                detail::c_str(instruction, "instruction"), &raw));
        return VlmParams(raw);
    }

    /// A text part of `role` ("user", "system", "assistant").
    VlmParams &text(const std::string &text, const std::string &role = "user") {
        detail::check(dg_vlm_params_add_text(get(), detail::c_str(role, "role"),
                                             detail::c_str(text, "text")));
        return *this;
    }
    /// An image part (copied): `height` rows of `stride` bytes, each `width` pixels of `channels`
    /// bytes (1 grey, 3 RGB, 4 RGBA with alpha ignored), as Params::init_image takes them.
    VlmParams &image(const std::uint8_t *pixels, std::uint32_t width, std::uint32_t height,
                     std::uint32_t channels, std::size_t stride, const std::string &role = "user") {
        detail::check(dg_vlm_params_add_image(get(), detail::c_str(role, "role"), pixels, width,
                                              height, channels, stride));
        return *this;
    }
    /// As above from a vector; `stride` 0 means width * channels.
    VlmParams &image(const std::vector<std::uint8_t> &pixels, std::uint32_t width,
                     std::uint32_t height, std::uint32_t channels, std::size_t stride = 0,
                     const std::string &role = "user") {
        stride = detail::checked_layout(pixels, width, height, channels, stride, "image");
        return image(pixels.data(), width, height, channels, stride, role);
    }
    /// An image a pipeline made, e.g. to caption a generated picture.
    inline VlmParams &image(const Image &image, const std::string &role = "user");
    /// An image read from a PNG, JPEG or WebP file (Io when unreadable, InvalidArg when no such
    /// image).
    VlmParams &image_file(const std::string &path, const std::string &role = "user") {
        detail::check(dg_vlm_params_add_image_file(get(), detail::c_str(role, "role"),
                                                   detail::c_str(path, "path")));
        return *this;
    }
    /// An image decoded from the bytes of a PNG, JPEG or WebP file (an upload, a download).
    VlmParams &image_encoded(const std::uint8_t *data, std::size_t len,
                             const std::string &role = "user") {
        detail::check(
            dg_vlm_params_add_image_encoded(get(), detail::c_str(role, "role"), data, len));
        return *this;
    }
    VlmParams &image_encoded(const std::vector<std::uint8_t> &data,
                             const std::string &role = "user") {
        static const std::uint8_t none = 0;  // a valid pointer for an empty vector
        return image_encoded(data.empty() ? &none : data.data(), data.size(), role);
    }

    /// Any setting by key (dg_vlm_params_set): "max_new_tokens", "temperature", "top_k",
    /// "top_p", "repetition_penalty", "seed", "system", "stop". An unknown key or a bad value is
    /// InvalidArg naming it, and changes nothing.
    VlmParams &set(const std::string &key, const std::string &value) {
        detail::check(dg_vlm_params_set(get(), detail::c_str(key, "key"),
                                        detail::c_str(value, "value")));
        return *this;
    }
    /// At most this many new tokens (1..32768; default 128, 256 for an enhancement).
    VlmParams &max_new_tokens(std::uint32_t n) { return set("max_new_tokens", std::to_string(n)); }
    /// Sampling temperature; 0 (the default) is greedy decoding.
    VlmParams &temperature(float t) { return set("temperature", number(t)); }
    /// Keep the k most likely tokens when sampling (0 = off).
    VlmParams &top_k(std::uint32_t k) { return set("top_k", std::to_string(k)); }
    /// Keep the most likely tokens up to this probability when sampling (1 = off).
    VlmParams &top_p(float p) { return set("top_p", number(p)); }
    /// Above 1 discourages repeated tokens (1 = off).
    VlmParams &repetition_penalty(float r) { return set("repetition_penalty", number(r)); }
    /// The seed of sampled decoding.
    VlmParams &seed(std::uint64_t seed) { return set("seed", std::to_string(seed)); }
    /// A system message put first, replacing any other (for an enhancement: the style's).
    VlmParams &system(const std::string &text) { return set("system", text); }
    /// Adds a stop string: the answer ends before it (at most 16); "" removes them all.
    VlmParams &stop(const std::string &text) { return set("stop", text); }

    const dg_vlm_params_t *get() const {
        if (!handle_) detail::moved_from("VlmParams");
        return handle_.get();
    }
    dg_vlm_params_t *get() {
        if (!handle_) detail::moved_from("VlmParams");
        return handle_.get();
    }

private:
    explicit VlmParams(dg_vlm_params_t *raw) noexcept : handle_(raw) {}

    /// A float as text that parses back to the same float.
    static std::string number(float value) { return detail::float_text(value); }

    std::unique_ptr<dg_vlm_params_t, detail::VlmParamsDeleter> handle_;
};

inline VlmParams &VlmParams::image(const Image &image, const std::string &role) {
    if (image.pixels() == nullptr) throw Error(ErrorCode::InvalidArg, "image: an empty dg::Image");
    return this->image(image.pixels(), image.width(), image.height(), image.channels(),
                       image.stride(), role);
}

/// One new token, passed to the token callback.
struct VlmToken {
    std::int64_t id = 0;  ///< the token id
    /// The text this token completes; often empty (inside a UTF-8 character, a special token, text
    /// held back because it may begin a stop string). The texts add up to VlmResult::text().
    std::string text;
    std::uint32_t index = 0;  ///< new tokens so far, this one included (1 for the first)
};

/// Called on the generating thread after every new token; return false to cancel the request.
/// An exception thrown by it cancels the request and is rethrown by Vlm::generate.
using TokenCallback = std::function<bool(const VlmToken &)>;

/// The answer of one request. Immutable and cheap to copy (copies share the C result).
class VlmResult {
public:
    /// The answer, special tokens skipped, cut before a stop string (UTF-8; may hold NUL bytes).
    std::string text() const {
        std::size_t len = 0;
        const char *p = dg_vlm_result_text(raw_.get(), &len);
        return std::string(p, len);
    }
    /// The new token ids (an end-of-sequence token that ended generation included).
    std::vector<std::int64_t> token_ids() const {
        std::size_t len = 0;
        const std::int64_t *p = dg_vlm_result_token_ids(raw_.get(), &len);
        return p ? std::vector<std::int64_t>(p, p + len) : std::vector<std::int64_t>();
    }
    /// Tokens in the prompt, image tokens included.
    std::size_t prompt_tokens() const noexcept { return dg_vlm_result_prompt_tokens(raw_.get()); }
    /// "stop" (an end-of-sequence token or a stop string) or "length" (max_new_tokens or the
    /// context).
    std::string finish_reason() const { return dg_vlm_result_finish_reason(raw_.get()); }
    /// Where the time went, JSON object text of seconds: "preprocess_s", "vision_s",
    /// "first_token_s", "decode_s", "total_s", and "tokens_per_second".
    std::string timings() const { return dg_vlm_result_timings(raw_.get()); }
    /// The answer read as a prompt for a generator (whitespace, a code fence, a "Prompt:" label
    /// and wrapping quotes removed); "" when nothing is left. What an enhancement wants.
    std::string enhanced_prompt() const { return dg_vlm_result_enhanced_prompt(raw_.get()); }

    const dg_vlm_result_t *get() const noexcept { return raw_.get(); }

private:
    friend class Vlm;
    explicit VlmResult(dg_vlm_result_t *raw)
        : raw_(std::shared_ptr<const dg_vlm_result_t>(raw, [](const dg_vlm_result_t *p) {
              dg_vlm_result_free(const_cast<dg_vlm_result_t *>(p));
          })) {}

    std::shared_ptr<const dg_vlm_result_t> raw_;
};

namespace detail {

struct TokenContext {
    const TokenCallback *callback;
    std::exception_ptr error;
};

// Called by the library on the generating thread. Nothing may unwind into C: an exception is
// stored and turns into a cancel; Vlm::generate rethrows it once dg_vlm_generate has returned.
inline bool token_trampoline(const dg_vlm_token_t *token, void *user_data) noexcept {
    auto *ctx = static_cast<TokenContext *>(user_data);
    if (ctx->error) return false;
    try {
        VlmToken t;
        t.id = token->token_id;
        t.index = token->index;
        if (token->struct_size >= offsetof(dg_vlm_token_t, text_len) + sizeof token->text_len)
            t.text.assign(token->text, token->text_len);
        return (*ctx->callback)(t);
    } catch (...) {
        ctx->error = std::current_exception();
        return false;
    }
}

}  // namespace detail

/// A vision-language model: captions images, answers questions about them and rewrites prompts.
/// Thread-safe: generate may run on many threads at once. Keeps its runtime alive. Do not destroy
/// it while a generate on it is running.
class Vlm {
public:
    /// Loads the package in `model_dir` (onnxruntime-genai, transformers.js or optimum
    /// vision-encoder-decoder layout); one that matches none is Model listing what was found.
    Vlm(const Runtime &runtime, const std::string &model_dir) {
        dg_vlm_t *raw = nullptr;
        detail::check(dg_vlm_load(runtime.get(), detail::c_str(model_dir, "model_dir"), &raw));
        handle_.reset(raw);
    }

    /// JSON object text: "layout", "context_length", "eos_ids", "chat" (false for a captioner)
    /// and "caption_prompt" (the prompt `dg caption` asks for a caption with).
    std::string info() const { return dg_vlm_info(get()); }

    /// Runs one request. `on_token` (may be empty) is called with every new token; returning false
    /// cancels. `cancel` (may be null) may be raised from any thread. A cancelled request throws
    /// Error(ErrorCode::Cancelled); an exception thrown by `on_token` is rethrown as is.
    VlmResult generate(const VlmParams &params, const TokenCallback &on_token = nullptr,
                       const CancelToken *cancel = nullptr) const {
        detail::TokenContext ctx{&on_token, nullptr};
        dg_vlm_result_t *raw = nullptr;
        dg_error_t *err = dg_vlm_generate(get(), params.get(),
                                          on_token ? &detail::token_trampoline : nullptr,
                                          on_token ? &ctx : nullptr,
                                          cancel ? cancel->get() : nullptr, &raw);
        if (ctx.error) {
            dg_error_free(err);
            dg_vlm_result_free(raw);
            std::rethrow_exception(ctx.error);
        }
        detail::check(err);
        return VlmResult(raw);
    }
    VlmResult generate(const VlmParams &params, const CancelToken &cancel,
                       const TokenCallback &on_token = nullptr) const {
        return generate(params, on_token, &cancel);
    }

    /// Prompt enhancement in one call: the rewritten prompt (VlmResult::enhanced_prompt) of
    /// `instruction` for `style`, about the image file `image_path` when it is not empty.
    std::string enhance(const std::string &style, const std::string &instruction,
                        const std::string &image_path = "") const {
        VlmParams params = VlmParams::enhance(style, instruction);
        if (!image_path.empty()) params.image_file(image_path);
        return generate(params).enhanced_prompt();
    }

    const dg_vlm_t *get() const {
        if (!handle_) detail::moved_from("Vlm");
        return handle_.get();
    }
    explicit operator bool() const noexcept { return static_cast<bool>(handle_); }

private:
    std::unique_ptr<dg_vlm_t, detail::VlmDeleter> handle_;
};

inline Vlm Runtime::load_vlm(const std::string &model_dir) const { return Vlm(*this, model_dir); }

}  // namespace dg

#endif  // DIFFGENTOR_HPP
