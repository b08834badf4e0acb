package diffgentor

// #include <stdlib.h>
// #include <diffgentor.h>
import "C"

import (
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"unsafe"
)

// HeaderVersion is the version of include/diffgentor.h this package was compiled against.
var HeaderVersion = fmt.Sprintf("%d.%d.%d", C.DG_VERSION_MAJOR, C.DG_VERSION_MINOR, C.DG_VERSION_PATCH)

// Version returns the loaded library's version, "MAJOR.MINOR.PATCH".
func Version() string { return C.GoString(C.dg_version()) }

// ABIVersion returns the loaded library's ABI version (its SONAME number).
func ABIVersion() int { return int(C.dg_abi_version()) }

// cString converts a Go string for C; a NUL byte inside is an ErrInvalidArg naming what.
// The caller frees the result with C.free.
func cString(what, s string) (*C.char, error) {
	if strings.IndexByte(s, 0) >= 0 {
		return nil, invalidArg("%s contains a NUL byte", what)
	}
	return C.CString(s), nil
}

func free(p *C.char) { C.free(unsafe.Pointer(p)) }

// RuntimeOption configures NewRuntime.
type RuntimeOption func(*runtimeConfig)

type runtimeConfig struct {
	ep, ortLibrary, trtCache *string
	threads                  *uint32
	fallback, trtFP16        *bool
	keyed                    [][2]string // WithRuntimeOption, in order
	err                      error
}

// WithRuntimeOption sets any runtime option by string key and value (dg_runtime_options_set),
// e.g. WithRuntimeOption("sessions_per_graph", "2"). Keys: "ort_library", "execution_provider",
// "allow_cpu_fallback", "intra_threads", "optimization" ("disable", "basic", "extended",
// "layout" or "all"), "no_spinning", "sessions_per_graph" (1 to 64 sessions per graph, so that
// many concurrent requests run a graph at once, each session with its own copy of the weights),
// "optimized_graph_cache" (a directory; "" turns it off), "tensorrt_fp16" and
// "tensorrt_engine_cache"; booleans are true/false, 1/0, yes/no or on/off. These options are
// applied after the typed ones, in the order given, so they win. NewRuntime fails with
// ErrInvalidArg on an unknown key (the message lists the keys) or an unparsable value (named
// with its key).
func WithRuntimeOption(key, value string) RuntimeOption {
	return func(c *runtimeConfig) { c.keyed = append(c.keyed, [2]string{key, value}) }
}

// setRuntimeOption calls dg_runtime_options_set.
func setRuntimeOption(co *C.dg_runtime_options_t, key, value string) error {
	ck, err := cString("runtime option key", key)
	if err != nil {
		return err
	}
	defer free(ck)
	cv, err := cString("value of runtime option "+strconv.Quote(key), value)
	if err != nil {
		return err
	}
	defer free(cv)
	return takeError(C.dg_runtime_options_set(co, ck, cv))
}

// WithExecutionProvider chooses the execution provider: "cpu" (the default), "cuda",
// "cuda:ID", "tensorrt" or "tensorrt:ID". NewRuntime fails with ErrEPUnavailable when the loaded
// ONNX Runtime cannot use it (unless WithCPUFallback(true)).
func WithExecutionProvider(ep string) RuntimeOption {
	return func(c *runtimeConfig) { c.ep = &ep }
}

// WithORTLibrary uses the ONNX Runtime shared library at path instead of the discovery order
// (DG_ORT_DYLIB_PATH, ORT_DYLIB_PATH, the usual places). ONNX Runtime is loaded once per
// process: naming a different file for a later runtime is ErrBackend.
func WithORTLibrary(path string) RuntimeOption {
	return func(c *runtimeConfig) { c.ortLibrary = &path }
}

// WithIntraThreads sets the intra-op threads per ONNX Runtime session; 0 is ONNX Runtime's
// default (one per physical core).
func WithIntraThreads(n int) RuntimeOption {
	return func(c *runtimeConfig) {
		if n < 0 || uint64(n) > 0xFFFFFFFF {
			c.err = invalidArg("intra-op thread count %d is out of range", n)
			return
		}
		t := uint32(n)
		c.threads = &t
	}
}

// WithCPUFallback lets the runtime use the CPU when the chosen provider cannot be registered,
// instead of failing with ErrEPUnavailable.
func WithCPUFallback(allow bool) RuntimeOption {
	return func(c *runtimeConfig) { c.fallback = &allow }
}

// WithTensorRTFP16 lets TensorRT build fp16 engines (TensorRT provider only).
func WithTensorRTFP16(fp16 bool) RuntimeOption {
	return func(c *runtimeConfig) { c.trtFP16 = &fp16 }
}

// WithTensorRTEngineCache sets the directory where TensorRT keeps its engines and timing cache
// (TensorRT provider only).
func WithTensorRTEngineCache(dir string) RuntimeOption {
	return func(c *runtimeConfig) { c.trtCache = &dir }
}

// Runtime is a loaded ONNX Runtime with its execution provider. It is safe for concurrent use;
// share one per process. Close it when done (a finalizer is only a safety net). Pipelines keep
// what they need of it alive, so a Runtime may be closed before its pipelines.
type Runtime struct {
	mu  sync.RWMutex
	ptr *C.dg_runtime_t
}

// NewRuntime loads ONNX Runtime and checks the execution provider.
func NewRuntime(opts ...RuntimeOption) (*Runtime, error) {
	var cfg runtimeConfig
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.err != nil {
		return nil, cfg.err
	}
	var co *C.dg_runtime_options_t
	if err := takeError(C.dg_runtime_options_new(&co)); err != nil {
		return nil, err
	}
	defer C.dg_runtime_options_free(co)
	setString := func(what string, v *string, set func(*C.char) *C.dg_error_t) error {
		if v == nil {
			return nil
		}
		cs, err := cString(what, *v)
		if err != nil {
			return err
		}
		defer free(cs)
		return takeError(set(cs))
	}
	if err := setString("execution provider", cfg.ep, func(s *C.char) *C.dg_error_t {
		return C.dg_runtime_options_set_execution_provider(co, s)
	}); err != nil {
		return nil, err
	}
	if err := setString("ONNX Runtime library path", cfg.ortLibrary, func(s *C.char) *C.dg_error_t {
		return C.dg_runtime_options_set_ort_library(co, s)
	}); err != nil {
		return nil, err
	}
	if err := setString("TensorRT engine cache", cfg.trtCache, func(s *C.char) *C.dg_error_t {
		return C.dg_runtime_options_set_tensorrt_engine_cache(co, s)
	}); err != nil {
		return nil, err
	}
	if cfg.threads != nil {
		if err := takeError(C.dg_runtime_options_set_intra_threads(co, C.uint32_t(*cfg.threads))); err != nil {
			return nil, err
		}
	}
	if cfg.fallback != nil {
		if err := takeError(C.dg_runtime_options_set_allow_cpu_fallback(co, C.bool(*cfg.fallback))); err != nil {
			return nil, err
		}
	}
	if cfg.trtFP16 != nil {
		if err := takeError(C.dg_runtime_options_set_tensorrt_fp16(co, C.bool(*cfg.trtFP16))); err != nil {
			return nil, err
		}
	}
	for _, kv := range cfg.keyed {
		if err := setRuntimeOption(co, kv[0], kv[1]); err != nil {
			return nil, err
		}
	}
	var ptr *C.dg_runtime_t
	if err := takeError(C.dg_runtime_new(co, &ptr)); err != nil {
		return nil, err
	}
	r := &Runtime{ptr: ptr}
	runtime.SetFinalizer(r, func(r *Runtime) { r.Close() })
	return r, nil
}

// Close releases the runtime. It is idempotent and always returns nil; later calls on the
// runtime return an error matching ErrClosed. Pipelines already loaded keep working.
func (r *Runtime) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ptr != nil {
		C.dg_runtime_free(r.ptr)
		r.ptr = nil
		runtime.SetFinalizer(r, nil)
	}
	return nil
}

// LoadPipeline loads the model package in directory dir (optimum/diffusers ONNX layout).
// A missing or malformed package is ErrModel (or ErrIO).
func (r *Runtime) LoadPipeline(dir string) (*Pipeline, error) {
	cdir, err := cString("model directory", dir)
	if err != nil {
		return nil, err
	}
	defer free(cdir)
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.ptr == nil {
		return nil, closedError("Runtime")
	}
	var ptr *C.dg_pipeline_t
	if err := takeError(C.dg_pipeline_load(r.ptr, cdir, &ptr)); err != nil {
		return nil, err
	}
	p := &Pipeline{ptr: ptr}
	runtime.SetFinalizer(p, func(p *Pipeline) { p.Close() })
	return p, nil
}
