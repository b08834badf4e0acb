package diffgentor_test

import (
	"bytes"
	"context"
	"image"
	"image/jpeg"
	"image/png"
	"os"
	"path/filepath"
	"sync"
	"testing"

	diffgentor "github.com/diffgentor/diffgentor/bindings/go"
)

// EncodePNG decodes (image/png) to exactly the image's pixels; EncodeJPEG is a JPEG; the files
// WritePNG and WriteJPEG write hold the same bytes; bad qualities and paths fail with their codes.
func TestEncodeAndWrite(t *testing.T) {
	p := loadPipeline(t, "tiny-sd")
	img := generateOne(t, p, foxParams())
	if img.Channels() != 3 {
		t.Errorf("Channels() = %d, want 3", img.Channels())
	}

	pngBytes, err := img.EncodePNG()
	if err != nil {
		t.Fatal(err)
	}
	dec, err := png.Decode(bytes.NewReader(pngBytes))
	if err != nil {
		t.Fatalf("EncodePNG's bytes do not decode: %v", err)
	}
	if dec.Bounds() != img.Bounds() {
		t.Fatalf("decoded PNG is %v, want %v", dec.Bounds(), img.Bounds())
	}
	if !bytes.Equal(packedRGB(dec), img.RGB()) {
		t.Error("EncodePNG's pixels differ from the image's")
	}

	jpegBytes, err := img.EncodeJPEG(90)
	if err != nil {
		t.Fatal(err)
	}
	if len(jpegBytes) < 4 || jpegBytes[0] != 0xFF || jpegBytes[1] != 0xD8 || !bytes.HasSuffix(jpegBytes, []byte{0xFF, 0xD9}) {
		t.Fatalf("EncodeJPEG gave %d bytes not framed FFD8..FFD9", len(jpegBytes))
	}
	if cfg, err := jpeg.DecodeConfig(bytes.NewReader(jpegBytes)); err != nil || cfg.Width != 64 || cfg.Height != 64 {
		t.Errorf("EncodeJPEG: %+v, %v; want a 64x64 JPEG", cfg, err)
	}
	low, err := img.EncodeJPEG(1)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(low, jpegBytes) {
		t.Error("JPEG qualities 1 and 90 gave the same bytes")
	}
	for _, q := range []int{0, 101, 255, -1, 256, 1000} {
		_, err := img.EncodeJPEG(q)
		wantCode(t, err, diffgentor.ErrInvalidArg)
		wantCode(t, img.WriteJPEG(filepath.Join(t.TempDir(), "q.jpg"), q), diffgentor.ErrInvalidArg)
	}

	dir := t.TempDir()
	pngPath := filepath.Join(dir, "nested", "deeper", "fox.png")
	if err := img.WritePNG(pngPath); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(pngPath); err != nil || !bytes.Equal(got, pngBytes) {
		t.Errorf("WritePNG's file differs from EncodePNG's bytes (%v)", err)
	}
	jpegPath := filepath.Join(dir, "fox.jpg")
	if err := img.WriteJPEG(jpegPath, 90); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(jpegPath); err != nil || !bytes.Equal(got, jpegBytes) {
		t.Errorf("WriteJPEG's file differs from EncodeJPEG's bytes (%v)", err)
	}
	// A path under a regular file cannot be written.
	wantCode(t, img.WritePNG(filepath.Join(pngPath, "x.png")), diffgentor.ErrIO)
	wantCode(t, img.WriteJPEG(filepath.Join(pngPath, "x.jpg"), 90), diffgentor.ErrIO)
	wantCode(t, img.WritePNG("a\x00b.png"), diffgentor.ErrInvalidArg, "path", "NUL")

	// Images built in Go, or whose pixels changed, have nothing the library could encode.
	var zero diffgentor.Image
	_, err = zero.EncodePNG()
	wantCode(t, err, diffgentor.ErrNullArg, "not made by a Pipeline")
	wantCode(t, (&diffgentor.Image{}).WritePNG(filepath.Join(dir, "never.png")), diffgentor.ErrNullArg)
	if zero.Channels() != 3 {
		t.Errorf("Channels() of a Go-built Image = %d, want 3", zero.Channels())
	}
	changed := *img
	changed.Pix = append([]byte(nil), img.Pix...)
	changed.Pix[0] ^= 0xFF
	_, err = changed.EncodePNG()
	wantCode(t, err, diffgentor.ErrInvalidArg, "changed after Generate")
	sub := *img
	sub.Rect = image.Rect(0, 0, 32, 32)
	wantCode(t, sub.WriteJPEG(filepath.Join(dir, "sub.jpg"), 90), diffgentor.ErrInvalidArg, "changed after Generate")
	if _, err := os.Stat(filepath.Join(dir, "never.png")); !os.IsNotExist(err) {
		t.Errorf("a failed write left a file: %v", err)
	}
}

// Images of one request may be encoded from many goroutines at once, and each image of a batch
// encodes its own pixels; they stay encodable after the pipeline is closed.
func TestEncodeConcurrent(t *testing.T) {
	p := loadPipeline(t, "digits")
	res, err := p.GenerateResult(context.Background(), diffgentor.Params{Prompt: "a handwritten digit 3", Steps: 2,
		NumImages: 3, Seed: diffgentor.Uint64(3)})
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	var wg sync.WaitGroup
	errs := make([]error, 3*4)
	for i := range errs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			img := res.Images[i%3]
			data, err := img.EncodePNG()
			if err == nil {
				var dec image.Image
				if dec, err = png.Decode(bytes.NewReader(data)); err == nil && !bytes.Equal(packedRGB(dec), img.RGB()) {
					err = os.ErrInvalid
				}
			}
			errs[i] = err
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("goroutine %d: %v", i, err)
		}
	}
}

// WithRuntimeOption reaches dg_runtime_options_set: a known key works (a pipeline loaded with two
// sessions per graph draws the same pixels), an unknown key or a bad value fails NewRuntime.
func TestRuntimeOption(t *testing.T) {
	rt, err := diffgentor.NewRuntime(append(runtimeOptions(),
		diffgentor.WithRuntimeOption("sessions_per_graph", "2"),
		diffgentor.WithRuntimeOption("no_spinning", "yes"),
		diffgentor.WithRuntimeOption("optimization", "all"))...)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	p, err := rt.LoadPipeline(modelDir("tiny-sd"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	got := generateOne(t, p, foxParams())
	want := generateOne(t, loadPipeline(t, "tiny-sd"), foxParams())
	if !bytes.Equal(got.RGB(), want.RGB()) {
		t.Error("two sessions per graph gave different pixels")
	}

	_, err = diffgentor.NewRuntime(diffgentor.WithRuntimeOption("no_such_option", "1"))
	wantCode(t, err, diffgentor.ErrInvalidArg, "no_such_option", "sessions_per_graph")
	_, err = diffgentor.NewRuntime(diffgentor.WithRuntimeOption("sessions_per_graph", "many"))
	wantCode(t, err, diffgentor.ErrInvalidArg, "sessions_per_graph", "many")
	_, err = diffgentor.NewRuntime(diffgentor.WithRuntimeOption("sessions_per_graph", "0"))
	wantCode(t, err, diffgentor.ErrInvalidArg, "sessions_per_graph")
	_, err = diffgentor.NewRuntime(diffgentor.WithRuntimeOption("intra\x00threads", "1"))
	wantCode(t, err, diffgentor.ErrInvalidArg, "NUL")
	// Typed and keyed options combine.
	rt2, err := diffgentor.NewRuntime(diffgentor.WithExecutionProvider("cpu"),
		diffgentor.WithRuntimeOption("execution_provider", "cpu"), diffgentor.WithRuntimeOption("intra_threads", "1"))
	if err != nil {
		t.Fatal(err)
	}
	rt2.Close()
}
