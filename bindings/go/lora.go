package diffgentor

// #include <stdlib.h>
// #include <diffgentor.h>
import "C"

import (
	"encoding/json"
	"math"
	"runtime"
	"strconv"
	"strings"
)

// Lora is one adapter of a LoRA stack and how strongly it applies: 1 is as trained, a negative
// strength subtracts it, 0 feeds the base weights.
type Lora struct {
	// Name is the adapter's name, as given to Pipeline.LoadLora.
	Name string
	// Strength must be finite.
	Strength float32
}

// LoraInfo describes one loaded adapter (Pipeline.Loras).
type LoraInfo struct {
	Name string `json:"name"`
	// Path is the file it was loaded from.
	Path string `json:"path"`
	// Format is the naming the file uses: "diffusers", "kohya", "PEFT", ...
	Format string `json:"format"`
	// Layers counts the weights it changes, per component ("unet", "text_encoder", ...).
	Layers map[string]int `json:"layers"`
	// Unmatched counts the tensors skipped because they matched no weight (AllowPartial).
	Unmatched int `json:"unmatched"`
	// DefaultStrength is its strength in the pipeline's default stack; nil when it is not in it.
	DefaultStrength *float32 `json:"default_strength"`
}

// LoraOption configures Pipeline.LoadLora.
type LoraOption func(*C.uint32_t)

// AllowPartial makes LoadLora skip the file's tensors that match no weight of the model (or are
// of an unknown kind) instead of failing; LoraInfo.Unmatched counts them (DG_LORA_ALLOW_PARTIAL).
func AllowPartial() LoraOption {
	return func(flags *C.uint32_t) { *flags |= C.DG_LORA_ALLOW_PARTIAL }
}

// withLocal runs call on the open pipeline's handle (held for reading, like Generate).
func (p *Pipeline) withLocal(call func(ptr *C.dg_pipeline_t) error) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.ptr == nil {
		return closedError("Pipeline")
	}
	err := call(p.ptr)
	runtime.KeepAlive(p)
	return err
}

// LoadLora loads the LoRA file at path (safetensors in diffusers/PEFT, kohya or LyCORIS naming)
// as adapter name (1 to 128 letters, digits, '_', '-' or '.'), replacing an adapter of that name.
// Requests then pick it through Params.Loras or the default stack (SetDefaultLoras) without
// reloading anything; requests that use no adapter still give the base model's pixels. A missing
// file is ErrIO; a bad name, a file that is not safetensors or one made for another model is
// ErrInvalidArg; a remote pipeline (NewRemote) is ErrUnsupported. Safe to call while other
// goroutines generate.
func (p *Pipeline) LoadLora(name, path string, opts ...LoraOption) error {
	var flags C.uint32_t
	for _, o := range opts {
		o(&flags)
	}
	cname, err := cString("LoRA name", name)
	if err != nil {
		return err
	}
	defer free(cname)
	cpath, err := cString("LoRA path", path)
	if err != nil {
		return err
	}
	defer free(cpath)
	return p.withLocal(func(ptr *C.dg_pipeline_t) error {
		return takeError(C.dg_pipeline_lora_load(ptr, cname, cpath, flags))
	})
}

// UnloadLora unloads adapter name and takes it out of the default stack. A name that is not
// loaded is ErrInvalidArg listing the loaded ones.
func (p *Pipeline) UnloadLora(name string) error {
	cname, err := cString("LoRA name", name)
	if err != nil {
		return err
	}
	defer free(cname)
	return p.withLocal(func(ptr *C.dg_pipeline_t) error {
		return takeError(C.dg_pipeline_lora_unload(ptr, cname))
	})
}

// loraList is dg_pipeline_lora_list's JSON.
type loraList struct {
	Adapters     []LoraInfo `json:"adapters"`
	DefaultStack []struct {
		Name     string  `json:"name"`
		Strength float32 `json:"strength"`
	} `json:"default_stack"`
}

func (p *Pipeline) loraList() (*loraList, error) {
	var text string
	err := p.withLocal(func(ptr *C.dg_pipeline_t) error {
		var out *C.char
		if err := takeError(C.dg_pipeline_lora_list(ptr, &out)); err != nil {
			return err
		}
		text = C.GoString(out)
		C.dg_string_free(out)
		return nil
	})
	if err != nil {
		return nil, err
	}
	var list loraList
	if err := json.Unmarshal([]byte(text), &list); err != nil {
		return nil, &Error{Code: ErrPanic, Message: "dg_pipeline_lora_list gave malformed JSON: " + err.Error()}
	}
	return &list, nil
}

// Loras returns the loaded adapters, by name.
func (p *Pipeline) Loras() ([]LoraInfo, error) {
	list, err := p.loraList()
	if err != nil {
		return nil, err
	}
	return list.Adapters, nil
}

// DefaultLoras returns the pipeline's default stack (SetDefaultLoras), in order.
func (p *Pipeline) DefaultLoras() ([]Lora, error) {
	list, err := p.loraList()
	if err != nil {
		return nil, err
	}
	stack := make([]Lora, len(list.DefaultStack))
	for i, u := range list.DefaultStack {
		stack[i] = Lora{Name: u.Name, Strength: u.Strength}
	}
	return stack, nil
}

// formatStack writes a stack as the C API reads it ("a:0.8;b:-0.4").
func formatStack(stack []Lora) (string, error) {
	items := make([]string, len(stack))
	for i, u := range stack {
		if u.Name == "" || strings.ContainsAny(u.Name, ":;,") {
			return "", invalidArg("LoRA name %q must be 1 to 128 letters, digits, '_', '-' or '.'", u.Name)
		}
		if math.IsNaN(float64(u.Strength)) || math.IsInf(float64(u.Strength), 0) {
			return "", invalidArg("LoRA %q has strength %v; it must be a finite number", u.Name, u.Strength)
		}
		items[i] = u.Name + ":" + strconv.FormatFloat(float64(u.Strength), 'g', -1, 32)
	}
	return strings.Join(items, ";"), nil
}

// SetDefaultLoras sets the stack of the requests that name none (Params.Loras empty and
// Params.NoLoras false); no argument clears it. Every adapter must be loaded; at most 10, each
// once, with finite strengths, else ErrInvalidArg and the default stack is unchanged.
func (p *Pipeline) SetDefaultLoras(stack ...Lora) error {
	text, err := formatStack(stack)
	if err != nil {
		return err
	}
	ctext, err := cString("LoRA stack", text)
	if err != nil {
		return err
	}
	defer free(ctext)
	return p.withLocal(func(ptr *C.dg_pipeline_t) error {
		return takeError(C.dg_pipeline_lora_set_default(ptr, ctext))
	})
}

// applyLoras sets the request's stack: NoLoras empties it (overriding the default stack), then
// each of Loras is added (an adapter that is not loaded fails at generate time).
func (p *Params) applyLoras(cp *C.dg_params_t) error {
	if p.NoLoras {
		if err := takeError(C.dg_params_clear_loras(cp)); err != nil {
			return err
		}
	}
	for _, u := range p.Loras {
		cname, err := cString("LoRA name", u.Name)
		if err != nil {
			return err
		}
		err = takeError(C.dg_params_add_lora(cp, cname, C.float(u.Strength)))
		free(cname)
		if err != nil {
			return err
		}
	}
	return nil
}
