package diffgentor

/*
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <diffgentor.h>

extern bool dgGoVLMToken(int64_t token_id, char *text, size_t text_len, uint32_t index,
                         uintptr_t handle);

// Fields of dg_vlm_token_t are read only when the library's struct_size covers them.
static bool dg_go_vlm_token(const dg_vlm_token_t *t, void *user_data) {
	const char *text = "";
	size_t len = 0;
	if (t->struct_size >= offsetof(dg_vlm_token_t, text_len) + sizeof(size_t)) {
		text = t->text;
		len = t->text_len;
	}
	return dgGoVLMToken(t->token_id, (char *)text, len, t->index, (uintptr_t)user_data);
}

// handle 0: no token callback. The handle travels as an integer so that Go never turns a number
// into a pointer.
static dg_error_t *dg_go_vlm_generate(const dg_vlm_t *vlm, const dg_vlm_params_t *params,
                                      uintptr_t handle, const dg_cancel_token_t *cancel,
                                      dg_vlm_result_t **out) {
	return dg_vlm_generate(vlm, params, handle ? dg_go_vlm_token : NULL, (void *)handle, cancel,
	                       out);
}
*/
import "C"

import (
	"context"
	"encoding/json"
	"image"
	"runtime"
	"runtime/cgo"
	"sort"
	"strconv"
	"sync"
	"time"
	"unsafe"
)

// VLM is a loaded vision-language model: it captions images, answers questions about them and
// rewrites prompts (prompt enhancement). It is safe for concurrent use: many goroutines may call
// Generate at once (the weights are shared; each request has its own cache and sampler). Close it
// when done (a finalizer is only a safety net).
type VLM struct {
	// mu is held for reading by every Generate and for writing by Close, so the model is never
	// freed while a request runs on it.
	mu   sync.RWMutex
	ptr  *C.dg_vlm_t
	info VLMInfo
}

// VLMInfo describes a loaded model (dg_vlm_info).
type VLMInfo struct {
	// Layout is the export layout: "onnxruntime-genai", "transformers.js" or
	// "optimum vision-encoder-decoder".
	Layout string `json:"layout"`
	// ContextLength is the most tokens, prompt and answer, one sequence may have.
	ContextLength int `json:"context_length"`
	// EOSIDs are the end-of-sequence token ids.
	EOSIDs []int64 `json:"eos_ids"`
	// Chat is true when the model reads a conversation through its chat template; false for a
	// captioner, which reads one image and takes text other than the default caption prompt as
	// the beginning of its caption.
	Chat bool `json:"chat"`
	// CaptionPrompt is the prompt Caption (and `dg caption`) asks for a caption with.
	CaptionPrompt string `json:"caption_prompt"`
}

// LoadVLM loads the vision-language model package in directory dir on rt (the same as
// rt.LoadVLM(dir)). The layout is told from the files: onnxruntime-genai (Qwen2.5-VL style),
// transformers.js or optimum vision-encoder-decoder; a directory that matches none is ErrModel
// listing the graphs found.
func LoadVLM(rt *Runtime, dir string) (*VLM, error) {
	if rt == nil {
		return nil, &Error{Code: ErrNullArg, Message: "LoadVLM: nil Runtime"}
	}
	return rt.LoadVLM(dir)
}

// LoadVLM loads the vision-language model package in directory dir on this runtime (see the
// function LoadVLM).
func (r *Runtime) LoadVLM(dir string) (*VLM, error) {
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
	var ptr *C.dg_vlm_t
	if err := takeError(C.dg_vlm_load(r.ptr, cdir, &ptr)); err != nil {
		return nil, err
	}
	v := &VLM{ptr: ptr}
	// The library writes this JSON itself; a failure to parse it would be a library bug, and
	// leaves the zero VLMInfo.
	_ = json.Unmarshal([]byte(C.GoString(C.dg_vlm_info(ptr))), &v.info)
	runtime.SetFinalizer(v, func(v *VLM) { v.Close() })
	return v, nil
}

// Info describes the model (layout, context length, end-of-sequence ids, chat or captioner). It
// works on a closed VLM too.
func (v *VLM) Info() VLMInfo {
	info := v.info
	info.EOSIDs = append([]int64(nil), v.info.EOSIDs...)
	return info
}

// Close frees the model. It waits for running Generate calls to finish, is idempotent and
// always returns nil; later calls return an error matching ErrClosed.
func (v *VLM) Close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.ptr != nil {
		C.dg_vlm_free(v.ptr)
		v.ptr = nil
		runtime.SetFinalizer(v, nil)
	}
	return nil
}

// VLMImage is an image for a VLM request, given one of three ways: decoded pixels
// (VLMImageFromPixels, VLMImageFromImage), the bytes of a PNG, JPEG or WebP file
// (VLMImageFromBytes: the library decodes them) or a file path (VLMImageFromFile).
type VLMImage struct {
	pixels *Pixels
	data   []byte
	path   string
	kind   int
}

const (
	vlmImagePixels = iota + 1
	vlmImageBytes
	vlmImageFile
)

// VLMImageFromPixels uses a caller's pixel buffer (laid out as for Params.InitImage; a
// generated *Image through PixelsFromImage). The buffer is copied when the request starts.
func VLMImageFromPixels(px *Pixels) VLMImage { return VLMImage{pixels: px, kind: vlmImagePixels} }

// VLMImageFromImage uses any image.Image (see PixelsFromImage): a generated *Image, or one
// decoded with image/png or image/jpeg.
func VLMImageFromImage(img image.Image) VLMImage { return VLMImageFromPixels(PixelsFromImage(img)) }

// VLMImageFromBytes uses the contents of a PNG, JPEG or WebP file (an upload, an HTTP body),
// decoded by the library as RGB (alpha dropped); anything else is ErrInvalidArg.
func VLMImageFromBytes(data []byte) VLMImage { return VLMImage{data: data, kind: vlmImageBytes} }

// VLMImageFromFile reads the PNG, JPEG or WebP file at path when the request starts: a file that
// cannot be read is ErrIO, one that is no such image ErrInvalidArg.
func VLMImageFromFile(path string) VLMImage { return VLMImage{path: path, kind: vlmImageFile} }

// VLMPart is one part of a message: text, or an image when Image is set.
type VLMPart struct {
	Text  string
	Image *VLMImage
}

// TextPart is a text part.
func TextPart(text string) VLMPart { return VLMPart{Text: text} }

// ImagePart is an image part.
func ImagePart(img VLMImage) VLMPart { return VLMPart{Image: &img} }

// VLMMessage is one message of a conversation: a role ("user", "system", "assistant") and its
// parts in the order the model reads them.
type VLMMessage struct {
	Role  string
	Parts []VLMPart
}

// Enhancement asks the model to rewrite Instruction (an edit instruction or a text-to-image
// prompt) into a better prompt for a generator of Style: "qwen_image_edit" (one precise edit
// instruction), "flux2" (a dense scene description), "glm_image" (a structured description, text
// quoted) or "t2i" (any text-to-image model). Image, if set, is the picture the instruction is
// about. The answer's EnhancedPrompt is the rewritten prompt.
type Enhancement struct {
	Style       string
	Instruction string
	Image       *VLMImage
}

// VLMParams describe one VLM request. The conversation is Messages followed, when Prompt or Images
// are set, by one user message of Images then Prompt (the usual captioning or question request);
// or, when Enhance is set (and nothing of the conversation is), a prompt-enhancement request.
// Zero values of the settings mean the library's defaults.
type VLMParams struct {
	// Messages is the conversation so far (system, user and assistant turns).
	Messages []VLMMessage
	// Images and Prompt form the last user message: the images first, then the text.
	Images []VLMImage
	Prompt string
	// System, when not empty, is a system message put first, replacing any other (the "system"
	// key; for an enhancement it replaces the style's system prompt).
	System string
	// Enhance makes the request a prompt enhancement (dg_vlm_params_new_enhance).
	Enhance *Enhancement

	// MaxNewTokens limits the answer (1..32768; 0: 128, or 256 for an enhancement).
	MaxNewTokens int
	// Temperature 0 (the default) is greedy decoding; above 0 tokens are sampled.
	Temperature float32
	// TopK keeps the k most likely tokens when sampling (0: off).
	TopK int
	// TopP keeps the most likely tokens up to this probability when sampling (0: the default, 1 = off).
	TopP float32
	// RepetitionPenalty above 1 discourages repeating tokens (0: the default, 1 = off).
	RepetitionPenalty float32
	// Seed makes sampling reproducible (greedy decoding ignores it).
	Seed uint64
	// Stop strings end the answer, which stops before the one found (at most 16).
	Stop []string
	// Extra sets any key of dg_vlm_params_set, after the fields above (so it wins), in sorted
	// key order: "max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty",
	// "seed", "system", "stop". An unknown key or bad value is ErrInvalidArg naming it.
	Extra map[string]string
}

// VLMToken is one new token, for the token callback.
type VLMToken struct {
	// ID is the token id.
	ID int64
	// Text is the text this token completes; often "" (a token inside a UTF-8 character, a special
	// token, text held back because it may begin a stop string). The texts add up to the answer.
	Text string
	// Index counts the new tokens so far, this one included (1 for the first).
	Index int
}

// VLMTimings says where the time of one request went.
type VLMTimings struct {
	// Preprocess: chat template, tokenizer and image preprocessing.
	Preprocess time.Duration
	// Vision: the vision encoder.
	Vision time.Duration
	// FirstToken: from the start of the request to the first new token.
	FirstToken time.Duration
	// Decode: from the first new token to the last.
	Decode time.Duration
	Total  time.Duration
	// TokensPerSecond is the decoding speed after the first token (0 for fewer than two tokens).
	TokensPerSecond float64
}

// VLMResult is the answer of one request.
type VLMResult struct {
	// Text is the answer, special tokens skipped, cut before a stop string.
	Text string
	// TokenIDs are the new tokens (an end-of-sequence token that ended generation included).
	TokenIDs []int64
	// PromptTokens counts the prompt's tokens, image tokens included.
	PromptTokens int
	// FinishReason is "stop" (an end-of-sequence token or a stop string) or "length"
	// (MaxNewTokens or the model's context).
	FinishReason string
	Timings      VLMTimings
	// EnhancedPrompt is Text read as a prompt for a generator: whitespace, a code fence, a
	// "Prompt:" label and wrapping quotes removed ("" when nothing is left). It is what an
	// enhancement request wants.
	EnhancedPrompt string
}

// vlmTokenState is what the C trampoline's user_data (a cgo.Handle) refers to; it is used only on
// the goroutine that called Generate, during the cgo call.
type vlmTokenState struct {
	fn          func(VLMToken) bool
	ctx         context.Context
	ctxStopped  bool
	userStopped bool
	panicked    bool
	panicValue  any
}

func (st *vlmTokenState) token(t VLMToken) (goOn bool) {
	if st.panicked {
		return false
	}
	if st.fn != nil {
		// A panic must not unwind through the library's frames: keep it, cancel the request, and
		// let Generate re-raise it once the C call has returned.
		defer func() {
			if v := recover(); v != nil {
				st.panicked, st.panicValue = true, v
				goOn = false
			}
		}()
		if !st.fn(t) {
			st.userStopped = true
			return false
		}
	}
	if st.ctx.Err() != nil {
		st.ctxStopped = true
		return false
	}
	return true
}

// Generate runs one request and returns the answer. onToken (may be nil) is called with every new
// token on the calling goroutine, never after Generate returns; returning false cancels the request,
// and a panic inside it cancels the request and is re-raised once the library has returned.
// Cancelling ctx stops the request before its next token; the error then matches both ErrCancelled
// and ctx.Err(). A request the model cannot take (no message, an image smaller than one patch, a
// prompt longer than the context) is ErrInvalidArg.
func (v *VLM) Generate(ctx context.Context, params VLMParams, onToken func(VLMToken) bool) (*VLMResult, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	if err := ctx.Err(); err != nil {
		return nil, &Error{Code: ErrCancelled, Message: "request cancelled by its context before it started", cause: err}
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	if v.ptr == nil {
		return nil, closedError("VLM")
	}
	cp, err := params.build()
	if err != nil {
		return nil, err
	}
	defer C.dg_vlm_params_free(cp)

	var token *C.dg_cancel_token_t
	if err := takeError(C.dg_cancel_token_new(&token)); err != nil {
		return nil, err
	}
	// The watcher raises the token when ctx is done; it ends before Generate returns (and before
	// the token is freed), whatever happens.
	stop := make(chan struct{})
	watcherDone := make(chan struct{})
	watcherRaised := false
	if done := ctx.Done(); done != nil {
		go func() {
			defer close(watcherDone)
			select {
			case <-done:
				watcherRaised = true
				C.dg_cancel_token_cancel(token)
			case <-stop:
			}
		}()
	} else {
		close(watcherDone)
	}

	var handle C.uintptr_t
	var st *vlmTokenState
	if onToken != nil || ctx.Done() != nil {
		st = &vlmTokenState{fn: onToken, ctx: ctx}
		h := cgo.NewHandle(st)
		defer h.Delete()
		handle = C.uintptr_t(h)
	}
	var out *C.dg_vlm_result_t
	cerr := C.dg_go_vlm_generate(v.ptr, cp, handle, token, &out)
	close(stop)
	<-watcherDone // after this, watcherRaised is safe to read
	C.dg_cancel_token_free(token)
	runtime.KeepAlive(v)
	defer C.dg_vlm_result_free(out)

	if st != nil && st.panicked {
		_ = takeError(cerr)
		panic(st.panicValue)
	}
	if cerr != nil {
		err := takeError(cerr).(*Error)
		userStopped := st != nil && st.userStopped
		ctxStopped := (st != nil && st.ctxStopped) || watcherRaised
		if err.Code == ErrCancelled && !userStopped && ctxStopped {
			err.cause = ctx.Err()
		}
		return nil, err
	}
	return takeVLMResult(out), nil
}

// Caption describes the images with the model's default caption prompt (Info().CaptionPrompt) and
// at most 128 new tokens, greedily, and returns the caption.
func (v *VLM) Caption(ctx context.Context, images ...VLMImage) (string, error) {
	res, err := v.Generate(ctx, VLMParams{Images: images, Prompt: v.info.CaptionPrompt}, nil)
	if err != nil {
		return "", err
	}
	return res.Text, nil
}

// Enhance rewrites instruction into a better prompt for a generator of style (see Enhancement),
// reading image when it is not nil, and returns the rewritten prompt (VLMResult.EnhancedPrompt).
// An answer with nothing left once cleaned is ErrInvalidArg.
func (v *VLM) Enhance(ctx context.Context, style, instruction string, image *VLMImage) (string, error) {
	res, err := v.Generate(ctx, VLMParams{Enhance: &Enhancement{Style: style, Instruction: instruction, Image: image}}, nil)
	if err != nil {
		return "", err
	}
	if res.EnhancedPrompt == "" {
		return "", invalidArg("the model's answer %q holds no prompt", res.Text)
	}
	return res.EnhancedPrompt, nil
}

// takeVLMResult copies a C result into Go memory (the caller frees it).
func takeVLMResult(out *C.dg_vlm_result_t) *VLMResult {
	var textLen, idsLen C.size_t
	text := C.dg_vlm_result_text(out, &textLen)
	ids := C.dg_vlm_result_token_ids(out, &idsLen)
	res := &VLMResult{
		Text:           C.GoStringN(text, C.int(textLen)),
		PromptTokens:   int(C.dg_vlm_result_prompt_tokens(out)),
		FinishReason:   C.GoString(C.dg_vlm_result_finish_reason(out)),
		EnhancedPrompt: C.GoString(C.dg_vlm_result_enhanced_prompt(out)),
		TokenIDs:       make([]int64, int(idsLen)),
	}
	if idsLen > 0 {
		for i, id := range unsafe.Slice((*C.int64_t)(unsafe.Pointer(ids)), int(idsLen)) {
			res.TokenIDs[i] = int64(id)
		}
	}
	var t struct {
		Preprocess      float64 `json:"preprocess_s"`
		Vision          float64 `json:"vision_s"`
		FirstToken      float64 `json:"first_token_s"`
		Decode          float64 `json:"decode_s"`
		Total           float64 `json:"total_s"`
		TokensPerSecond float64 `json:"tokens_per_second"`
	}
	if json.Unmarshal([]byte(C.GoString(C.dg_vlm_result_timings(out))), &t) == nil {
		d := func(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
		res.Timings = VLMTimings{Preprocess: d(t.Preprocess), Vision: d(t.Vision), FirstToken: d(t.FirstToken),
			Decode: d(t.Decode), Total: d(t.Total), TokensPerSecond: t.TokensPerSecond}
	}
	return res
}

// build makes the C params; the caller frees them.
func (p *VLMParams) build() (*C.dg_vlm_params_t, error) {
	var cp *C.dg_vlm_params_t
	if p.Enhance != nil {
		if len(p.Messages) > 0 || len(p.Images) > 0 || p.Prompt != "" {
			return nil, invalidArg("VLMParams.Enhance takes no Messages, Images or Prompt: the style makes the conversation")
		}
		style, err := cString("enhancement style", p.Enhance.Style)
		if err != nil {
			return nil, err
		}
		defer free(style)
		instruction, err := cString("enhancement instruction", p.Enhance.Instruction)
		if err != nil {
			return nil, err
		}
		defer free(instruction)
		if err := takeError(C.dg_vlm_params_new_enhance(style, instruction, &cp)); err != nil {
			return nil, err
		}
		if p.Enhance.Image != nil {
			if err := addVLMImage(cp, "user", *p.Enhance.Image); err != nil {
				C.dg_vlm_params_free(cp)
				return nil, err
			}
		}
	} else if err := takeError(C.dg_vlm_params_new(&cp)); err != nil {
		return nil, err
	}
	if err := p.fill(cp); err != nil {
		C.dg_vlm_params_free(cp)
		return nil, err
	}
	return cp, nil
}

// fill adds the conversation and sets the settings.
func (p *VLMParams) fill(cp *C.dg_vlm_params_t) error {
	for _, m := range p.Messages {
		for _, part := range m.Parts {
			if err := addVLMPart(cp, m.Role, part); err != nil {
				return err
			}
		}
	}
	for _, img := range p.Images {
		if err := addVLMImage(cp, "user", img); err != nil {
			return err
		}
	}
	if p.Prompt != "" {
		if err := addVLMPart(cp, "user", TextPart(p.Prompt)); err != nil {
			return err
		}
	}
	set := func(key, value string) error { return setVLMKey(cp, key, value) }
	if p.System != "" {
		if err := set("system", p.System); err != nil {
			return err
		}
	}
	ints := []struct {
		key string
		v   int
	}{{"max_new_tokens", p.MaxNewTokens}, {"top_k", p.TopK}}
	for _, f := range ints {
		if f.v != 0 {
			if err := set(f.key, strconv.Itoa(f.v)); err != nil {
				return err
			}
		}
	}
	floats := []struct {
		key string
		v   float32
	}{{"temperature", p.Temperature}, {"top_p", p.TopP}, {"repetition_penalty", p.RepetitionPenalty}}
	for _, f := range floats {
		if f.v != 0 {
			if err := set(f.key, strconv.FormatFloat(float64(f.v), 'g', -1, 32)); err != nil {
				return err
			}
		}
	}
	if p.Seed != 0 {
		if err := set("seed", strconv.FormatUint(p.Seed, 10)); err != nil {
			return err
		}
	}
	for _, s := range p.Stop {
		if err := set("stop", s); err != nil {
			return err
		}
	}
	keys := make([]string, 0, len(p.Extra))
	for k := range p.Extra {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := set(k, p.Extra[k]); err != nil {
			return err
		}
	}
	return nil
}

func setVLMKey(cp *C.dg_vlm_params_t, key, value string) error {
	return withKeyValue("VLM parameter", key, value, func(ck, cv *C.char) *C.dg_error_t {
		return C.dg_vlm_params_set(cp, ck, cv)
	})
}

func addVLMPart(cp *C.dg_vlm_params_t, role string, part VLMPart) error {
	if part.Image != nil {
		return addVLMImage(cp, role, *part.Image)
	}
	crole, err := cString("message role", role)
	if err != nil {
		return err
	}
	defer free(crole)
	ctext, err := cString("message text", part.Text)
	if err != nil {
		return err
	}
	defer free(ctext)
	return takeError(C.dg_vlm_params_add_text(cp, crole, ctext))
}

func addVLMImage(cp *C.dg_vlm_params_t, role string, img VLMImage) error {
	crole, err := cString("message role", role)
	if err != nil {
		return err
	}
	defer free(crole)
	switch img.kind {
	case vlmImagePixels:
		if img.pixels == nil {
			return invalidArg("VLMImageFromPixels(nil): no image")
		}
		return setPixels("image", img.pixels, func(p *C.uint8_t, w, h, ch C.uint32_t, s C.size_t) *C.dg_error_t {
			return C.dg_vlm_params_add_image(cp, crole, p, w, h, ch, s)
		})
	case vlmImageBytes:
		// An empty slice still passes a valid pointer; the library refuses what is no image.
		var one [1]byte
		ptr := &one[0]
		if len(img.data) > 0 {
			ptr = &img.data[0]
		}
		return takeError(C.dg_vlm_params_add_image_encoded(cp, crole, (*C.uint8_t)(unsafe.Pointer(ptr)),
			C.size_t(len(img.data))))
	case vlmImageFile:
		cpath, err := cString("image path", img.path)
		if err != nil {
			return err
		}
		defer free(cpath)
		return takeError(C.dg_vlm_params_add_image_file(cp, crole, cpath))
	}
	return invalidArg("a zero VLMImage: make one with VLMImageFromFile, VLMImageFromBytes, VLMImageFromImage or VLMImageFromPixels")
}
