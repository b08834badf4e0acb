package diffgentor_test

import (
	"context"
	"encoding/json"
	"errors"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"

	diffgentor "github.com/diffgentor/diffgentor/bindings/go"
)

// vlmCase is one greedy case of models/vlm-goldens.json: transformers' generate(do_sample=False)
// on the tiny Qwen2.5-VL.
type vlmCase struct {
	Name         string   `json:"name"`
	Images       []string `json:"images"`
	Prompt       string   `json:"prompt"`
	MaxNewTokens int      `json:"max_new_tokens"`
	InputIDs     []int64  `json:"input_ids"`
	ExpectedIDs  []int64  `json:"expected_ids"`
	ExpectedText string   `json:"expected_text"`
	StoppedAtEOS bool     `json:"stopped_at_eos"`
}

func vlmGolden(t *testing.T, name string) vlmCase {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "models", "vlm-goldens.json"))
	if err != nil {
		t.Fatal(err)
	}
	var goldens struct {
		Cases []vlmCase `json:"cases"`
	}
	if err := json.Unmarshal(data, &goldens); err != nil {
		t.Fatal(err)
	}
	for _, c := range goldens.Cases {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no golden case %q", name)
	return vlmCase{}
}

var (
	vlmOnce   sync.Once
	sharedVLM *diffgentor.VLM
	vlmErr    error
)

// testVLM is the tiny Qwen2.5-VL (onnxruntime-genai layout), loaded once for the tests.
func testVLM(t *testing.T) *diffgentor.VLM {
	t.Helper()
	vlmOnce.Do(func() { sharedVLM, vlmErr = diffgentor.LoadVLM(testRuntime, modelDir("tiny-qwen2.5-vl")) })
	if vlmErr != nil {
		t.Fatal(vlmErr)
	}
	return sharedVLM
}

func vlmImagePath(rel string) string { return filepath.Join(repoRoot, "models", rel) }

func checkGolden(t *testing.T, c vlmCase, res *diffgentor.VLMResult) {
	t.Helper()
	if !reflect.DeepEqual(res.TokenIDs, c.ExpectedIDs) {
		t.Errorf("%s: token ids %v, transformers %v", c.Name, res.TokenIDs, c.ExpectedIDs)
	}
	if res.Text != c.ExpectedText {
		t.Errorf("%s: text %q, transformers %q", c.Name, res.Text, c.ExpectedText)
	}
	if res.PromptTokens != len(c.InputIDs) {
		t.Errorf("%s: %d prompt tokens, transformers %d", c.Name, res.PromptTokens, len(c.InputIDs))
	}
	want := "length"
	if c.StoppedAtEOS {
		want = "stop"
	}
	if res.FinishReason != want {
		t.Errorf("%s: finish reason %q, want %q", c.Name, res.FinishReason, want)
	}
}

func TestVLMCaptionEqualsTransformers(t *testing.T) {
	vlm := testVLM(t)
	info := vlm.Info()
	if info.Layout != "onnxruntime-genai" || !info.Chat || info.ContextLength < 1024 || len(info.EOSIDs) != 2 ||
		!strings.HasPrefix(info.CaptionPrompt, "Describe this image") {
		t.Errorf("Info() = %+v", info)
	}
	c := vlmGolden(t, "image_96x64")
	res, err := vlm.Generate(context.Background(), diffgentor.VLMParams{
		Images:       []diffgentor.VLMImage{diffgentor.VLMImageFromFile(vlmImagePath(c.Images[0]))},
		Prompt:       c.Prompt,
		MaxNewTokens: c.MaxNewTokens,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, c, res)
	if res.Timings.Total <= 0 || res.Timings.Total < res.Timings.FirstToken {
		t.Errorf("timings %+v", res.Timings)
	}
}

// Two images in one prompt, one as file bytes and one decoded by image/png, through Messages.
func TestVLMTwoImagesEqualTransformers(t *testing.T) {
	vlm := testVLM(t)
	c := vlmGolden(t, "two_images")
	data, err := os.ReadFile(vlmImagePath(c.Images[0]))
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(vlmImagePath(c.Images[1]))
	if err != nil {
		t.Fatal(err)
	}
	decoded, err := png.Decode(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	res, err := vlm.Generate(context.Background(), diffgentor.VLMParams{
		Messages: []diffgentor.VLMMessage{{Role: "user", Parts: []diffgentor.VLMPart{
			diffgentor.ImagePart(diffgentor.VLMImageFromBytes(data)),
			diffgentor.ImagePart(diffgentor.VLMImageFromImage(decoded)),
			diffgentor.TextPart(c.Prompt),
		}}},
		Extra: map[string]string{"max_new_tokens": "16"},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, c, res)
}

func TestVLMStreamingSeesEveryTokenAndCancels(t *testing.T) {
	vlm := testVLM(t)
	c := vlmGolden(t, "text_only")
	params := diffgentor.VLMParams{Prompt: c.Prompt, MaxNewTokens: c.MaxNewTokens}
	var ids []int64
	var text strings.Builder
	res, err := vlm.Generate(context.Background(), params, func(tok diffgentor.VLMToken) bool {
		ids = append(ids, tok.ID)
		text.WriteString(tok.Text)
		if tok.Index != len(ids) {
			t.Errorf("token %d has index %d", len(ids), tok.Index)
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, c, res)
	if !reflect.DeepEqual(ids, c.ExpectedIDs) || text.String() != res.Text {
		t.Errorf("streamed %v %q, answer %v %q", ids, text.String(), res.TokenIDs, res.Text)
	}

	// Returning false at the third token cancels.
	calls := 0
	_, err = vlm.Generate(context.Background(), params, func(diffgentor.VLMToken) bool {
		calls++
		return calls < 3
	})
	if !errors.Is(err, diffgentor.ErrCancelled) || errors.Is(err, context.Canceled) || calls != 3 {
		t.Errorf("callback cancel: err %v after %d calls", err, calls)
	}

	// Cancelling the context (here from the callback) stops before the next token.
	ctx, cancel := context.WithCancel(context.Background())
	calls = 0
	_, err = vlm.Generate(ctx, params, func(diffgentor.VLMToken) bool {
		calls++
		if calls == 2 {
			cancel()
		}
		return true
	})
	if !errors.Is(err, diffgentor.ErrCancelled) || !errors.Is(err, context.Canceled) || calls != 2 {
		t.Errorf("context cancel: err %v after %d calls", err, calls)
	}
	// An already cancelled context runs nothing.
	if _, err := vlm.Generate(ctx, params, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v", err)
	}

	// A panic in the callback cancels the request and comes out of Generate.
	func() {
		defer func() {
			if v := recover(); v != "boom" {
				t.Errorf("recovered %v, want the callback's panic", v)
			}
		}()
		_, _ = vlm.Generate(context.Background(), params, func(diffgentor.VLMToken) bool { panic("boom") })
		t.Error("Generate returned instead of panicking")
	}()
	// The model is fine afterwards.
	res, err = vlm.Generate(context.Background(), params, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, c, res)
}

func TestVLMBadKeysAndRequests(t *testing.T) {
	vlm := testVLM(t)
	ctx := context.Background()
	check := func(what string, params diffgentor.VLMParams, code diffgentor.ErrorCode, words ...string) {
		t.Helper()
		_, err := vlm.Generate(ctx, params, nil)
		var e *diffgentor.Error
		if !errors.As(err, &e) || e.Code != code {
			t.Errorf("%s: got %v, want %v", what, err, code)
			return
		}
		for _, w := range words {
			if !strings.Contains(e.Message, w) {
				t.Errorf("%s: %q lacks %q", what, e.Message, w)
			}
		}
	}
	check("unknown key", diffgentor.VLMParams{Prompt: "hi", Extra: map[string]string{"max_tokens": "8"}},
		diffgentor.ErrInvalidArg, "max_tokens", "max_new_tokens", "repetition_penalty")
	check("bad value", diffgentor.VLMParams{Prompt: "hi", Extra: map[string]string{"top_p": "1.5"}},
		diffgentor.ErrInvalidArg, "top_p", "1.5")
	check("negative temperature", diffgentor.VLMParams{Prompt: "hi", Temperature: -1},
		diffgentor.ErrInvalidArg, "temperature", "-1")
	check("too many tokens", diffgentor.VLMParams{Prompt: "hi", MaxNewTokens: 40000},
		diffgentor.ErrInvalidArg, "max_new_tokens", "40000")
	check("NUL in a prompt", diffgentor.VLMParams{Prompt: "a\x00b"}, diffgentor.ErrInvalidArg, "NUL")
	check("no message", diffgentor.VLMParams{}, diffgentor.ErrInvalidArg, "message")
	check("missing file", diffgentor.VLMParams{Prompt: "hi",
		Images: []diffgentor.VLMImage{diffgentor.VLMImageFromFile("/nonexistent/x.png")}},
		diffgentor.ErrIO, "/nonexistent/x.png")
	check("not an image", diffgentor.VLMParams{Prompt: "hi",
		Images: []diffgentor.VLMImage{diffgentor.VLMImageFromBytes([]byte("hello"))}}, diffgentor.ErrInvalidArg)
	check("zero image", diffgentor.VLMParams{Prompt: "hi", Images: []diffgentor.VLMImage{{}}},
		diffgentor.ErrInvalidArg, "VLMImageFromFile")
	check("smaller than a patch", diffgentor.VLMParams{Prompt: "hi",
		Images: []diffgentor.VLMImage{diffgentor.VLMImageFromFile(vlmImagePath("vlm-images/tiny_10x10.png"))}},
		diffgentor.ErrInvalidArg, "14")
	check("unknown style", diffgentor.VLMParams{Enhance: &diffgentor.Enhancement{Style: "sdxl", Instruction: "x"}},
		diffgentor.ErrInvalidArg, "sdxl", "qwen_image_edit")
	check("enhancement with a prompt", diffgentor.VLMParams{Prompt: "x",
		Enhance: &diffgentor.Enhancement{Style: "t2i", Instruction: "x"}}, diffgentor.ErrInvalidArg, "Enhance")
}

func TestVLMEnhance(t *testing.T) {
	vlm := testVLM(t)
	img := diffgentor.VLMImageFromFile(vlmImagePath("vlm-images/square_80x80.png"))
	res, err := vlm.Generate(context.Background(), diffgentor.VLMParams{
		Enhance:      &diffgentor.Enhancement{Style: "qwen_image_edit", Instruction: "make the square blue", Image: &img},
		MaxNewTokens: 24,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.TokenIDs) == 0 || res.EnhancedPrompt != strings.TrimSpace(res.EnhancedPrompt) {
		t.Errorf("enhancement answer %+v", res)
	}
	// Enhance is that request with the default length, returning the cleaned prompt.
	img2 := diffgentor.VLMImageFromFile(vlmImagePath("vlm-images/square_80x80.png"))
	full, err := vlm.Generate(context.Background(), diffgentor.VLMParams{
		Enhance: &diffgentor.Enhancement{Style: "flux2", Instruction: "a red fox", Image: &img2},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	prompt, err := vlm.Enhance(context.Background(), "flux2", "a red fox", &img2)
	switch {
	case full.EnhancedPrompt == "" && !errors.Is(err, diffgentor.ErrInvalidArg):
		t.Errorf("an answer with no prompt in it: %q, %v", prompt, err)
	case full.EnhancedPrompt != "" && (err != nil || prompt != full.EnhancedPrompt):
		t.Errorf("Enhance gave %q (%v), Generate %q", prompt, err, full.EnhancedPrompt)
	}
}

func TestVLMConcurrentAndClosed(t *testing.T) {
	vlm, err := testRuntime.LoadVLM(modelDir("tiny-qwen2.5-vl-tfjs"))
	if err != nil {
		t.Fatal(err)
	}
	if vlm.Info().Layout != "transformers.js" {
		t.Errorf("layout %q", vlm.Info().Layout)
	}
	var wg sync.WaitGroup
	for _, name := range []string{"image_96x64", "image_80x80", "text_only", "two_images"} {
		c := vlmGolden(t, name)
		wg.Add(1)
		go func() {
			defer wg.Done()
			params := diffgentor.VLMParams{Prompt: c.Prompt, MaxNewTokens: c.MaxNewTokens}
			for _, img := range c.Images {
				params.Images = append(params.Images, diffgentor.VLMImageFromFile(vlmImagePath(img)))
			}
			res, err := vlm.Generate(context.Background(), params, nil)
			if err != nil {
				t.Error(err)
				return
			}
			checkGolden(t, c, res)
		}()
	}
	wg.Wait()
	vlm.Close()
	vlm.Close()
	if _, err := vlm.Generate(context.Background(), diffgentor.VLMParams{Prompt: "hi"}, nil); !errors.Is(err, diffgentor.ErrClosed) {
		t.Errorf("closed VLM: %v", err)
	}
	if _, err := diffgentor.LoadVLM(testRuntime, "/nonexistent/model"); !errors.Is(err, diffgentor.ErrModel) && !errors.Is(err, diffgentor.ErrIO) {
		t.Errorf("missing model: %v", err)
	}
}

// examples/caption builds and runs: a caption request equal to the golden case, then an enhancement.
func TestVLMCaptionExample(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the example")
	}
	bin := filepath.Join(t.TempDir(), "caption")
	build := exec.Command("go", "build", "-o", bin, "./examples/caption")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./examples/caption: %v\n%s", err, out)
	}
	c := vlmGolden(t, "image_96x64")
	model := modelDir("tiny-qwen2.5-vl")
	out, err := exec.Command(bin, "-model", model, "-image", vlmImagePath(c.Images[0]), "-prompt", c.Prompt,
		"-max-new-tokens", "16", "-stream").Output()
	if err != nil {
		t.Fatalf("caption example: %v", err)
	}
	ids := make([]string, len(c.ExpectedIDs))
	for i, id := range c.ExpectedIDs {
		ids[i] = strconv.FormatInt(id, 10)
	}
	if want := "token ids: [" + strings.Join(ids, " ") + "]"; !strings.Contains(string(out), want) {
		t.Errorf("the example printed\n%s\nwithout %q", out, want)
	}
	out, err = exec.Command(bin, "-model", model, "-image", vlmImagePath(c.Images[0]), "-enhance", "qwen_image_edit",
		"-instruction", "make the circle blue").Output()
	if err != nil || !strings.Contains(string(out), "enhanced prompt: ") {
		t.Errorf("enhancement example: %v\n%s", err, out)
	}
}
