package diffgentor

// #include <stdlib.h>
// #include <diffgentor.h>
import "C"

import (
	"sort"
	"strconv"
	"time"
)

// ProgressFunc is called after every denoising step with the steps done so far (1..total), the
// steps in the request and the time since the request started. Returning false cancels the
// request (Generate then fails with ErrCancelled). It runs on the goroutine that called
// Generate, never after Generate returns. A panic inside it cancels the request and is
// re-raised by Generate once the library has returned.
type ProgressFunc func(step, total int, elapsed time.Duration) bool

// ProgressInfo is one progress report, for Params.OnProgress.
type ProgressInfo struct {
	// Step is the denoising steps finished so far (1..Total); remote pipelines report once per
	// image received, Step counting the images.
	Step, Total int
	// Stage is the plan stage running (1-based) of Stages; 1 of 1 for a request without a plan.
	Stage, Stages int
	// Elapsed is the time since the request started.
	Elapsed time.Duration
}

// Params describes one request: text-to-image, or an edit when InitImage is set (img2img;
// inpainting with a Mask; instruction editing with an InstructPix2Pix package), optionally run as
// a progressive Plan. The zero value of a field means the library's default (diffusers'
// defaults): empty prompt, 50 steps, guidance 7.5, the package's size and scheduler, one image,
// eta 0, a random seed (reported by Result.Seed), no init image, no plan.
//
// The Set* methods (SetInitImage, SetMask, SetStrength, SetPlan, ...) fill the editing fields
// after the library has checked the value, so a bad one fails at once; fields set directly are
// checked by Generate, with the same errors.
type Params struct {
	Prompt string
	// NegativePrompt is used for the unconditional pass ("" means none).
	NegativePrompt string
	// Steps is the number of denoising steps (1..1000, checked at generate time).
	Steps int
	// GuidanceScale is the classifier-free guidance scale. 0 means the default 7.5; a value
	// <= 1 (use 1) disables the unconditional pass.
	GuidanceScale float32
	// Width and Height are the output size in pixels: positive multiples of the package's VAE
	// factor (usually 8), checked at generate time.
	Width, Height int
	// Seed makes the request reproducible; nil draws a random one. See Uint64.
	Seed *uint64
	// NumImages is how many images one request makes (1..64).
	NumImages int
	// Scheduler is a diffgentor name ("euler", "ddim", "pndm", ...) or a diffusers class name.
	Scheduler string
	// Eta is the DDIM eta (0 by default).
	Eta float32
	// Extra sets any parameter by its string key, applied after the fields above (so it wins),
	// e.g. {"rng": "fast", "scheduler.timestep_spacing": "trailing"}. Keys: prompt,
	// negative_prompt, steps, guidance_scale, width, height, seed, num_images, scheduler, eta,
	// rng, best_effort, strength, image_guidance_scale, plan, loras ("a:0.8;b:-0.4", replacing
	// Loras), lora_prompt_tags ("true": <lora:name:strength> tags in the prompt join the stack) and
	// scheduler.<diffusers_key>. An unknown key is ErrInvalidArg naming the key.
	Extra map[string]string
	// InitImage is the source image of img2img, inpainting and instruction editing (nil: none,
	// text-to-image). It must have the output size; Width and Height left at 0 are taken from
	// it. Its bytes are read (and copied by the library) when Generate starts. See
	// PixelsFromImage, SetInitImage and SetInitImageFromImage.
	InitImage *Pixels
	// Mask makes the edit an inpainting: pixels whose luma is >= 128 (white) are repainted, the
	// rest kept. It needs InitImage and must have its size (else Generate fails with
	// ErrInvalidArg). See SetMask and SetMaskFromImage.
	Mask *Pixels
	// Strength is how much of the init image is re-noised, in (0, 1]; 0 means the default (0.8
	// for img2img, 1.0 for inpainting, as diffusers). A value outside (0, 1] is ErrInvalidArg.
	Strength float64
	// ImageGuidanceScale is InstructPix2Pix's image guidance scale; 0 means the default 1.5. It
	// is used when >= 1 and GuidanceScale is > 1.
	ImageGuidanceScale float32
	// Plan is a progressive plan as JSON text (docs/editing.md), e.g. a stage at 64x64 and an
	// upscaling img2img stage at 96x96; "" means none. Malformed or invalid JSON is
	// ErrInvalidArg. Progress then reports the stage (ProgressInfo.Stage of Stages).
	Plan string
	// BestEffort lets a remote pipeline (NewRemote) leave out the fields its service cannot
	// honour (a negative prompt, a seed, a scheduler, ...) and list them in
	// Result.Metadata.Ignored, instead of failing with ErrUnsupported. Local pipelines honour
	// every field anyway. (The "best_effort" key of Extra.)
	BestEffort bool
	// Loras is the request's LoRA stack, in order: adapters loaded with Pipeline.LoadLora and
	// their strengths. Empty means the pipeline's default stack (Pipeline.SetDefaultLoras) unless
	// NoLoras is set. A non-finite strength, an empty name, a name twice or more than 10 adapters
	// is ErrInvalidArg; a name that is not loaded is ErrInvalidArg from Generate, listing the
	// loaded ones.
	Loras []Lora
	// NoLoras runs the request without the pipeline's default stack (only Loras apply, if any):
	// with Loras empty, the base model's pixels.
	NoLoras bool
	// Progress, when set, is called after every denoising step.
	Progress ProgressFunc
	// OnProgress is Progress with the whole report (plan stage included); set one or the
	// other (both is ErrInvalidArg).
	OnProgress func(ProgressInfo) bool
}

// Uint64 returns a pointer to v, for Params.Seed: Params{Seed: diffgentor.Uint64(42)}.
func Uint64(v uint64) *uint64 { return &v }

func checkCount(what string, v int) (C.uint32_t, error) {
	if v < 0 || uint64(v) > 0xFFFFFFFF {
		return 0, invalidArg("%s %d is out of range", what, v)
	}
	return C.uint32_t(v), nil
}

// build makes the C parameters; the caller frees them with dg_params_free.
func (p *Params) build() (*C.dg_params_t, error) {
	var cp *C.dg_params_t
	if err := takeError(C.dg_params_new(&cp)); err != nil {
		return nil, err
	}
	if err := p.apply(cp); err != nil {
		C.dg_params_free(cp)
		return nil, err
	}
	return cp, nil
}

func setKey(cp *C.dg_params_t, key, value string) error {
	return withKeyValue("parameter", key, value, func(ck, cv *C.char) *C.dg_error_t {
		return C.dg_params_set(cp, ck, cv)
	})
}

// withKeyValue passes key and value as C strings to a string-keyed setter (`what` names them in
// errors: "parameter", "VLM parameter") and turns its answer into an error.
func withKeyValue(what, key, value string, set func(ck, cv *C.char) *C.dg_error_t) error {
	ck, err := cString(what+" key", key)
	if err != nil {
		return err
	}
	defer free(ck)
	cv, err := cString("value of "+what+" "+strconv.Quote(key), value)
	if err != nil {
		return err
	}
	defer free(cv)
	return takeError(set(ck, cv))
}

func (p *Params) apply(cp *C.dg_params_t) error {
	if p.Prompt != "" {
		cs, err := cString("prompt", p.Prompt)
		if err != nil {
			return err
		}
		err = takeError(C.dg_params_set_prompt(cp, cs))
		free(cs)
		if err != nil {
			return err
		}
	}
	if p.NegativePrompt != "" {
		cs, err := cString("negative prompt", p.NegativePrompt)
		if err != nil {
			return err
		}
		err = takeError(C.dg_params_set_negative_prompt(cp, cs))
		free(cs)
		if err != nil {
			return err
		}
	}
	steps, err := checkCount("steps", p.Steps)
	if err != nil {
		return err
	}
	if steps != 0 {
		if err := takeError(C.dg_params_set_steps(cp, steps)); err != nil {
			return err
		}
	}
	if p.GuidanceScale != 0 {
		if err := takeError(C.dg_params_set_guidance_scale(cp, C.float(p.GuidanceScale))); err != nil {
			return err
		}
	}
	w, err := checkCount("width", p.Width)
	if err != nil {
		return err
	}
	h, err := checkCount("height", p.Height)
	if err != nil {
		return err
	}
	switch {
	case w != 0 && h != 0:
		if err := takeError(C.dg_params_set_size(cp, w, h)); err != nil {
			return err
		}
	case w != 0:
		if err := setKey(cp, "width", strconv.Itoa(p.Width)); err != nil {
			return err
		}
	case h != 0:
		if err := setKey(cp, "height", strconv.Itoa(p.Height)); err != nil {
			return err
		}
	}
	if p.Seed != nil {
		if err := takeError(C.dg_params_set_seed(cp, C.uint64_t(*p.Seed))); err != nil {
			return err
		}
	}
	n, err := checkCount("number of images", p.NumImages)
	if err != nil {
		return err
	}
	if n != 0 {
		if err := takeError(C.dg_params_set_num_images(cp, n)); err != nil {
			return err
		}
	}
	if p.Scheduler != "" {
		cs, err := cString("scheduler", p.Scheduler)
		if err != nil {
			return err
		}
		err = takeError(C.dg_params_set_scheduler(cp, cs))
		free(cs)
		if err != nil {
			return err
		}
	}
	if p.Eta != 0 {
		if err := setKey(cp, "eta", strconv.FormatFloat(float64(p.Eta), 'g', -1, 32)); err != nil {
			return err
		}
	}
	if p.BestEffort {
		if err := setKey(cp, "best_effort", "true"); err != nil {
			return err
		}
	}
	if err := p.applyEdit(cp); err != nil {
		return err
	}
	if err := p.applyLoras(cp); err != nil {
		return err
	}
	keys := make([]string, 0, len(p.Extra))
	for k := range p.Extra {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := setKey(cp, k, p.Extra[k]); err != nil {
			return err
		}
	}
	return nil
}
