package diffgentor

// #include <stdlib.h>
// #include <diffgentor.h>
import "C"

import (
	"encoding/json"
	"runtime"
	"sort"
	"strconv"
	"time"
)

// RemoteOption configures NewRemote. Each sets one key of the C API's dg_generator_options_set;
// options not given come from the backend's DG_<BACKEND>_* environment variables (for example
// DG_OPENAI_API_KEY), then the backend's defaults.
type RemoteOption func(*remoteConfig)

type remoteConfig struct {
	values map[string]string
	err    error
}

func (c *remoteConfig) set(key, value string) {
	if c.values == nil {
		c.values = map[string]string{}
	}
	c.values[key] = value
}

// WithOption sets any remote option by key: "base_url", "api_key", "model", "timeout_s",
// "max_retries", "max_in_flight", "pool_file" or one of the backend's own (docs/backends.md).
// Keys are checked by NewRemote: an unknown one is ErrInvalidArg naming it. An empty value removes
// the key (so the environment variable, or the default, applies again). A later option for the
// same key wins.
func WithOption(key, value string) RemoteOption {
	return func(c *remoteConfig) { c.set(key, value) }
}

// WithBaseURL sets the service's base URL ("base_url"), e.g. "https://api.openai.com/v1" or
// an OpenAI-compatible server's "http://127.0.0.1:8080/v1"; requests go to BASE/images/....
func WithBaseURL(url string) RemoteOption { return WithOption("base_url", url) }

// WithAPIKey sets the key sent with every request ("api_key"; for openai as
// "Authorization: Bearer KEY"). The key never appears in error messages.
func WithAPIKey(key string) RemoteOption { return WithOption("api_key", key) }

// WithModel sets the remote model ("model"), e.g. "gpt-image-1".
func WithModel(model string) RemoteOption { return WithOption("model", model) }

// WithTimeout limits each HTTP call ("timeout_s"); a call that takes longer is retried, and
// fails with ErrTimeout once the retries are spent. It must be positive (at most a day).
func WithTimeout(d time.Duration) RemoteOption {
	return func(c *remoteConfig) {
		if d <= 0 || d > 24*time.Hour {
			c.err = invalidArg("remote timeout %v is out of range (0, 24h]", d)
			return
		}
		c.set("timeout_s", strconv.FormatFloat(d.Seconds(), 'f', -1, 64))
	}
}

// WithMaxRetries sets how many times a failed call (429, 5xx, timeout, broken connection) is
// retried after the first attempt ("max_retries"; the default is 2).
func WithMaxRetries(n int) RemoteOption {
	return func(c *remoteConfig) {
		if n < 0 || uint64(n) > 0xFFFFFFFF {
			c.err = invalidArg("max_retries %d is out of range", n)
			return
		}
		c.set("max_retries", strconv.Itoa(n))
	}
}

// NewRemote makes a Pipeline that sends requests to a remote image service instead of running a
// model: backend "openai" (OpenAI Images, or any server with the same API) or "gemini". It is
// used exactly like a local pipeline (Generate, GenerateResult, Close); Kind reports the backend.
// Nothing is sent until the first request. Fields the service cannot honour (a negative prompt,
// a seed, a scheduler, ...) make Generate fail with ErrUnsupported naming them, unless
// Params.BestEffort is set: then they are left out and listed in Result.Metadata.Ignored.
// An unknown backend or option is ErrInvalidArg.
func NewRemote(backend string, opts ...RemoteOption) (*Pipeline, error) {
	var cfg remoteConfig
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.err != nil {
		return nil, cfg.err
	}
	cbackend, err := cString("backend", backend)
	if err != nil {
		return nil, err
	}
	defer free(cbackend)
	var co *C.dg_generator_options_t
	if err := takeError(C.dg_generator_options_new(&co)); err != nil {
		return nil, err
	}
	defer C.dg_generator_options_free(co)
	keys := make([]string, 0, len(cfg.values))
	for k := range cfg.values {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		ck, err := cString("remote option key", k)
		if err != nil {
			return nil, err
		}
		what := "value of remote option " + strconv.Quote(k)
		if k == "api_key" {
			what = "API key" // never quote the key itself
		}
		cv, err := cString(what, cfg.values[k])
		if err != nil {
			free(ck)
			return nil, err
		}
		err = takeError(C.dg_generator_options_set(co, ck, cv))
		free(ck)
		free(cv)
		if err != nil {
			return nil, err
		}
	}
	var ptr *C.dg_pipeline_t
	if err := takeError(C.dg_pipeline_new_remote(cbackend, co, &ptr)); err != nil {
		return nil, err
	}
	p := &Pipeline{ptr: ptr}
	runtime.SetFinalizer(p, func(p *Pipeline) { p.Close() })
	return p, nil
}

// Kind reports what draws the pipeline's images: "local" (a model package loaded with
// Runtime.LoadPipeline), "openai" or "gemini" (NewRemote); "" once the pipeline is closed.
func (p *Pipeline) Kind() string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.ptr == nil {
		return ""
	}
	kind := C.GoString(C.dg_pipeline_kind(p.ptr))
	runtime.KeepAlive(p)
	return kind
}

// Metadata is what a generator reported besides the images (dg_images_metadata). Local
// pipelines report nothing (Raw is "{}"); remote services report the model that drew the images,
// the prompts as the service rewrote them, and the request fields left out under
// Params.BestEffort.
type Metadata struct {
	// Model is the remote model that answered ("" when not reported).
	Model string
	// RevisedPrompts holds the service's rewritten prompt of each image, where it rewrites them.
	RevisedPrompts []string
	// Ignored names the request fields the service could not honour and left out
	// ("negative_prompt", "seed", ...), under Params.BestEffort.
	Ignored []string
	// Raw is the whole JSON object as the library reported it, including keys not above.
	Raw json.RawMessage
}

// parseMetadata fills the known fields of text (a JSON object) leniently: a field of an
// unexpected shape is left empty, and Raw always holds the text.
func parseMetadata(text string) Metadata {
	m := Metadata{Raw: json.RawMessage(text)}
	var fields map[string]json.RawMessage
	if json.Unmarshal([]byte(text), &fields) != nil {
		return m
	}
	if raw, ok := fields["model"]; ok {
		_ = json.Unmarshal(raw, &m.Model)
	}
	m.RevisedPrompts = stringList(fields["revised_prompts"])
	m.Ignored = stringList(fields["ignored"])
	return m
}

// stringList decodes a JSON array of strings; a null inside (an image without a revised prompt)
// becomes "".
func stringList(raw json.RawMessage) []string {
	if raw == nil {
		return nil
	}
	var items []*string
	if json.Unmarshal(raw, &items) != nil {
		return nil
	}
	out := make([]string, len(items))
	for i, s := range items {
		if s != nil {
			out[i] = *s
		}
	}
	return out
}
