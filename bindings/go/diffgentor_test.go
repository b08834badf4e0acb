package diffgentor_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/png"
	"strings"
	"sync"
	"testing"
	"time"

	diffgentor "github.com/diffgentor/diffgentor/bindings/go"
)

// foxParams is the shared cross-binding request: everything else default (64x64, guidance 7.5).
func foxParams() diffgentor.Params {
	return diffgentor.Params{Prompt: "a red fox", Seed: diffgentor.Uint64(42), Steps: 3, Scheduler: "euler"}
}

func loadPipeline(t *testing.T, model string) *diffgentor.Pipeline {
	t.Helper()
	p, err := testRuntime.LoadPipeline(modelDir(model))
	if err != nil {
		t.Fatalf("LoadPipeline(%s): %v", model, err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func generateOne(t *testing.T, p *diffgentor.Pipeline, params diffgentor.Params) *diffgentor.Image {
	t.Helper()
	res, err := p.GenerateResult(context.Background(), params)
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	if len(res.Images) != 1 {
		t.Fatalf("got %d images, want 1", len(res.Images))
	}
	return res.Images[0]
}

// wantCode checks that err is a *diffgentor.Error with code, whose message contains each of
// parts, and that errors.Is matches the code's sentinel.
func wantCode(t *testing.T, err error, code diffgentor.ErrorCode, parts ...string) {
	t.Helper()
	var de *diffgentor.Error
	if !errors.As(err, &de) {
		t.Fatalf("got error %v (%T), want a *diffgentor.Error with %v", err, err, code)
	}
	if de.Code != code || !errors.Is(err, code) {
		t.Fatalf("got %v (code %d), want %v (code %d)", err, int(de.Code), code, int(code))
	}
	for _, part := range parts {
		if !strings.Contains(de.Message, part) {
			t.Errorf("message %q does not contain %q", de.Message, part)
		}
	}
}

func TestVersion(t *testing.T) {
	if got := diffgentor.Version(); got != diffgentor.HeaderVersion {
		t.Errorf("Version() = %q, header says %q", got, diffgentor.HeaderVersion)
	}
	if got, want := fmt.Sprint(diffgentor.ABIVersion()), strings.SplitN(diffgentor.HeaderVersion, ".", 2)[0]; got != want {
		t.Errorf("ABIVersion() = %s, want %s", got, want)
	}
}

func TestFox(t *testing.T) {
	p := loadPipeline(t, "tiny-sd")
	var steps []int
	var last time.Duration
	params := foxParams()
	params.Progress = func(step, total int, elapsed time.Duration) bool {
		if total != 3 {
			t.Errorf("progress total = %d, want 3", total)
		}
		if elapsed < last {
			t.Errorf("elapsed went backwards: %v after %v", elapsed, last)
		}
		last = elapsed
		steps = append(steps, step)
		return true
	}
	res, err := p.GenerateResult(context.Background(), params)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(steps) != "[1 2 3]" {
		t.Errorf("progress steps = %v, want [1 2 3]", steps)
	}
	if res.Seed != 42 || len(res.Images) != 1 {
		t.Fatalf("seed %d, %d images; want 42, 1", res.Seed, len(res.Images))
	}
	img := res.Images[0]
	if img.Bounds() != image.Rect(0, 0, 64, 64) || len(img.RGB()) != 64*64*3 || img.Stride != 64*3 {
		t.Fatalf("bounds %v, %d bytes, stride %d; want 64x64 RGB", img.Bounds(), len(img.RGB()), img.Stride)
	}
	writeEnvRGB(t, "DG_FOX_RGB", img)

	// The same request again (through Generate) gives the same bytes.
	imgs, err := p.Generate(context.Background(), foxParams())
	if err != nil {
		t.Fatal(err)
	}
	if again := imgs[0].(*diffgentor.Image); !bytes.Equal(again.RGB(), img.RGB()) {
		t.Error("a second fox request gave different pixels")
	}

	// image.Image view: At agrees with the raw bytes, and a PNG round trip keeps every pixel.
	c := img.RGBAAt(5, 7)
	if i := 7*img.Stride + 5*3; c.R != img.Pix[i] || c.G != img.Pix[i+1] || c.B != img.Pix[i+2] || c.A != 255 {
		t.Errorf("RGBAAt(5, 7) = %v, bytes %v", c, img.Pix[i:i+3])
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	dec, err := png.Decode(&buf)
	if err != nil {
		t.Fatal(err)
	}
	for y := 0; y < 64; y++ {
		for x := 0; x < 64; x++ {
			r1, g1, b1, a1 := dec.At(x, y).RGBA()
			r2, g2, b2, a2 := img.At(x, y).RGBA()
			if r1 != r2 || g1 != g2 || b1 != b2 || a1 != a2 {
				t.Fatalf("PNG round trip differs at (%d, %d)", x, y)
			}
		}
	}
}

// Eight goroutines generate on one pipeline at once; each image equals a sequential run.
func TestConcurrentGenerate(t *testing.T) {
	p := loadPipeline(t, "tiny-sd")
	const n = 8
	params := func(seed uint64) diffgentor.Params {
		pr := foxParams()
		pr.Seed = diffgentor.Uint64(seed)
		return pr
	}
	want := make([][]byte, n)
	for i := range want {
		want[i] = generateOne(t, p, params(uint64(i))).RGB()
	}
	got := make([][]byte, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			imgs, err := p.Generate(context.Background(), params(uint64(i)))
			if err == nil {
				got[i] = imgs[0].(*diffgentor.Image).RGB()
			}
			errs[i] = err
		}(i)
	}
	close(start)
	wg.Wait()
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			t.Errorf("seed %d: %v", i, errs[i])
		} else if !bytes.Equal(got[i], want[i]) {
			t.Errorf("seed %d: concurrent pixels differ from the sequential run", i)
		}
	}
	if bytes.Equal(want[0], want[1]) {
		t.Error("seeds 0 and 1 gave the same image")
	}
}

func TestRandomSeedIsReported(t *testing.T) {
	p := loadPipeline(t, "digits")
	res, err := p.GenerateResult(context.Background(), diffgentor.Params{Prompt: "a handwritten digit 5", Steps: 2, NumImages: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Images) != 2 {
		t.Fatalf("got %d images, want 2", len(res.Images))
	}
	again, err := p.GenerateResult(context.Background(), diffgentor.Params{
		Prompt: "a handwritten digit 5", Steps: 2, NumImages: 2, Seed: diffgentor.Uint64(res.Seed),
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range res.Images {
		if !bytes.Equal(res.Images[i].RGB(), again.Images[i].RGB()) {
			t.Errorf("image %d: re-running with the reported seed %d gave different pixels", i, res.Seed)
		}
	}
}

func TestParamsFields(t *testing.T) {
	p := loadPipeline(t, "tiny-sd")
	img := generateOne(t, p, diffgentor.Params{
		Prompt: "a red fox", NegativePrompt: "blurry", Steps: 1, GuidanceScale: 1, Width: 32, Height: 48,
		Seed: diffgentor.Uint64(1), Scheduler: "ddim", Eta: 0.5,
		Extra: map[string]string{"rng": "fast", "scheduler.timestep_spacing": "trailing"},
	})
	if img.Width() != 32 || img.Height() != 48 {
		t.Errorf("size %dx%d, want 32x48", img.Width(), img.Height())
	}
	// Extra is applied last: it overrides the typed fields.
	img = generateOne(t, p, diffgentor.Params{Steps: 1, Width: 32, Seed: diffgentor.Uint64(1),
		Extra: map[string]string{"width": "48", "height": "32"}})
	if img.Width() != 48 || img.Height() != 32 {
		t.Errorf("size %dx%d, want 48x32", img.Width(), img.Height())
	}
}

func TestErrors(t *testing.T) {
	ctx := context.Background()
	_, err := testRuntime.LoadPipeline(modelDir("no-such-model"))
	wantCode(t, err, diffgentor.ErrModel, "no-such-model")

	p := loadPipeline(t, "tiny-sd")
	_, err = p.Generate(ctx, diffgentor.Params{Steps: 1, Extra: map[string]string{"no_such_key": "1"}})
	wantCode(t, err, diffgentor.ErrInvalidArg, "no_such_key")
	_, err = p.Generate(ctx, diffgentor.Params{Steps: 1, Extra: map[string]string{"steps": "many"}})
	wantCode(t, err, diffgentor.ErrInvalidArg, "steps", "many")
	_, err = p.Generate(ctx, diffgentor.Params{Steps: 1, Width: 65})
	wantCode(t, err, diffgentor.ErrInvalidArg)
	_, err = p.Generate(ctx, diffgentor.Params{Steps: 1001})
	wantCode(t, err, diffgentor.ErrInvalidArg)
	_, err = p.Generate(ctx, diffgentor.Params{Steps: -1})
	wantCode(t, err, diffgentor.ErrInvalidArg, "steps")
	_, err = p.Generate(ctx, diffgentor.Params{Steps: 1, Scheduler: "no-such-scheduler"})
	wantCode(t, err, diffgentor.ErrInvalidArg)
	_, err = p.Generate(ctx, diffgentor.Params{Prompt: "a\x00b"})
	wantCode(t, err, diffgentor.ErrInvalidArg, "prompt", "NUL")

	_, err = diffgentor.NewRuntime(diffgentor.WithExecutionProvider("cuda"))
	wantCode(t, err, diffgentor.ErrEPUnavailable, "cuda")
	_, err = diffgentor.NewRuntime(diffgentor.WithExecutionProvider("no-such-ep"))
	wantCode(t, err, diffgentor.ErrInvalidArg)
	_, err = diffgentor.NewRuntime(diffgentor.WithIntraThreads(-1))
	wantCode(t, err, diffgentor.ErrInvalidArg)
	rt, err := diffgentor.NewRuntime(diffgentor.WithExecutionProvider("cuda"), diffgentor.WithCPUFallback(true))
	if err != nil {
		t.Errorf("cuda with CPU fallback: %v", err)
	} else {
		rt.Close()
	}

	// Sentinels and the error text.
	if errors.Is(err, diffgentor.ErrModel) {
		t.Error("nil matched ErrModel")
	}
	e := &diffgentor.Error{Code: diffgentor.ErrIO, Message: "boom"}
	if !errors.Is(fmt.Errorf("wrapped: %w", e), diffgentor.ErrIO) || errors.Is(e, diffgentor.ErrModel) {
		t.Error("errors.Is on a wrapped *Error does not compare codes")
	}
	if e.Error() != "diffgentor: boom (DG_ERROR_IO)" || int(diffgentor.ErrIO) != 3 || int(diffgentor.ErrPanic) != 9 {
		t.Errorf("unexpected text or codes: %q", e.Error())
	}
}

func TestClose(t *testing.T) {
	rt, err := diffgentor.NewRuntime(runtimeOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	p, err := rt.LoadPipeline(modelDir("digits"))
	if err != nil {
		t.Fatal(err)
	}
	// Closing the runtime first is fine: the pipeline keeps what it needs.
	if rt.Close() != nil || rt.Close() != nil {
		t.Fatal("Runtime.Close returned an error")
	}
	_, err = rt.LoadPipeline(modelDir("digits"))
	wantCode(t, err, diffgentor.ErrNullArg, "closed")
	if !errors.Is(err, diffgentor.ErrClosed) {
		t.Errorf("LoadPipeline after Close: %v does not match ErrClosed", err)
	}
	if _, err := p.Generate(context.Background(), diffgentor.Params{Steps: 1, Seed: diffgentor.Uint64(1)}); err != nil {
		t.Fatalf("Generate after the runtime was closed: %v", err)
	}
	if p.Close() != nil || p.Close() != nil {
		t.Fatal("Pipeline.Close returned an error")
	}
	_, err = p.Generate(context.Background(), diffgentor.Params{Steps: 1})
	if !errors.Is(err, diffgentor.ErrClosed) || !errors.Is(err, diffgentor.ErrNullArg) {
		t.Errorf("Generate after Close: %v", err)
	}
}

func TestCancelByProgress(t *testing.T) {
	p := loadPipeline(t, "tiny-sd")
	calls := 0
	params := foxParams()
	params.Progress = func(step, total int, _ time.Duration) bool {
		calls++
		return step < 1
	}
	_, err := p.Generate(context.Background(), params)
	wantCode(t, err, diffgentor.ErrCancelled)
	if errors.Is(err, context.Canceled) {
		t.Error("a cancel by the progress func matched context.Canceled")
	}
	if calls != 1 {
		t.Errorf("progress called %d times after returning false at step 1", calls)
	}
}

func TestCancelByContext(t *testing.T) {
	p := loadPipeline(t, "tiny-sd")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var steps []int
	params := foxParams()
	params.Progress = func(step, total int, _ time.Duration) bool {
		steps = append(steps, step)
		if step == 1 {
			cancel() // mid-generation; the request stops before step 2
		}
		return true
	}
	_, err := p.Generate(ctx, params)
	wantCode(t, err, diffgentor.ErrCancelled)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("%v does not match context.Canceled", err)
	}
	if fmt.Sprint(steps) != "[1]" {
		t.Errorf("steps run: %v, want [1]", steps)
	}

	// A context already done: nothing runs.
	_, err = p.Generate(ctx, foxParams())
	wantCode(t, err, diffgentor.ErrCancelled)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("%v does not match context.Canceled", err)
	}

	// A deadline: DeadlineExceeded.
	dctx, dcancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer dcancel()
	_, err = p.Generate(dctx, foxParams())
	if !errors.Is(err, diffgentor.ErrCancelled) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("expired deadline: %v", err)
	}

	// The pipeline still works after cancellations.
	generateOne(t, p, diffgentor.Params{Steps: 1, Seed: diffgentor.Uint64(0)})
}

func TestProgressPanicIsReraised(t *testing.T) {
	p := loadPipeline(t, "digits")
	func() {
		defer func() {
			if v := recover(); v != "boom" {
				t.Errorf("recovered %v, want boom", v)
			}
		}()
		_, _ = p.Generate(context.Background(), diffgentor.Params{Steps: 3, Progress: func(int, int, time.Duration) bool {
			panic("boom")
		}})
		t.Error("Generate did not re-raise the progress func's panic")
	}()
	// The pipeline is not left locked and still works.
	generateOne(t, p, diffgentor.Params{Steps: 1, Seed: diffgentor.Uint64(0)})
	if p.Close() != nil {
		t.Error("Close after a panic failed")
	}
}
