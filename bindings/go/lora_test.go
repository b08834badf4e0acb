package diffgentor_test

import (
	"bytes"
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"testing"

	diffgentor "github.com/diffgentor/diffgentor/bindings/go"
)

func loraFile(name string) string { return filepath.Join(repoRoot, "models", "lora", name) }

// foxWith is the shared fox request with a LoRA stack.
func foxWith(stack ...diffgentor.Lora) diffgentor.Params {
	p := foxParams()
	p.Loras = stack
	return p
}

// The fox request with sd_a at 0.8 (written to DG_LORA_RGB: test.sh compares it with
// tests/c/lora.c's pixels), the default stack, NoLoras, and unloading back to the base pixels.
func TestLora(t *testing.T) {
	p := loadPipeline(t, "tiny-sd")
	base := generateOne(t, p, foxParams()).RGB()
	if infos, err := p.Loras(); err != nil || len(infos) != 0 {
		t.Fatalf("a fresh pipeline lists %v, %v", infos, err)
	}
	if err := p.LoadLora("a", loraFile("sd_a.safetensors")); err != nil {
		t.Fatal(err)
	}
	if err := p.LoadLora("te", loraFile("sd_te.safetensors"), diffgentor.AllowPartial()); err != nil {
		t.Fatal(err)
	}
	infos, err := p.Loras()
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 2 || infos[0].Name != "a" || infos[1].Name != "te" {
		t.Fatalf("Loras() = %+v, want a and te", infos)
	}
	a := infos[0]
	if a.Path != loraFile("sd_a.safetensors") || a.Format != "diffusers" || a.Layers["unet"] != 40 ||
		a.Unmatched != 0 || a.DefaultStrength != nil {
		t.Errorf("adapter a: %+v", a)
	}
	if infos[1].Layers["text_encoder"] != 20 {
		t.Errorf("adapter te: %+v", infos[1])
	}
	if !bytes.Equal(generateOne(t, p, foxParams()).RGB(), base) {
		t.Error("loaded but unused adapters changed the pixels")
	}

	img := generateOne(t, p, foxWith(diffgentor.Lora{Name: "a", Strength: 0.8}))
	with := img.RGB()
	if bytes.Equal(with, base) {
		t.Fatal("the stack a:0.8 did not change the pixels")
	}
	writeEnvRGB(t, "DG_LORA_RGB", img)
	keyed := foxParams()
	keyed.Extra = map[string]string{"loras": "a:0.8"}
	if !bytes.Equal(generateOne(t, p, keyed).RGB(), with) {
		t.Error(`Extra{"loras": "a:0.8"} differs from Loras`)
	}

	// The default stack applies to requests naming none; NoLoras opts out.
	if err := p.SetDefaultLoras(diffgentor.Lora{Name: "a", Strength: 0.8}); err != nil {
		t.Fatal(err)
	}
	stack, err := p.DefaultLoras()
	if err != nil || len(stack) != 1 || stack[0] != (diffgentor.Lora{Name: "a", Strength: 0.8}) {
		t.Errorf("DefaultLoras() = %v, %v", stack, err)
	}
	infos, _ = p.Loras()
	if infos[0].DefaultStrength == nil || *infos[0].DefaultStrength != 0.8 || infos[1].DefaultStrength != nil {
		t.Errorf("default strengths: %+v", infos)
	}
	if !bytes.Equal(generateOne(t, p, foxParams()).RGB(), with) {
		t.Error("the default stack a:0.8 differs from Loras")
	}
	none := foxParams()
	none.NoLoras = true
	if !bytes.Equal(generateOne(t, p, none).RGB(), base) {
		t.Error("NoLoras did not override the default stack")
	}
	both := foxWith(diffgentor.Lora{Name: "a", Strength: 0.8}, diffgentor.Lora{Name: "te", Strength: 1})
	if bytes.Equal(generateOne(t, p, both).RGB(), with) {
		t.Error("the text-encoder adapter changed nothing")
	}
	if err := p.SetDefaultLoras(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(generateOne(t, p, foxParams()).RGB(), base) {
		t.Error("SetDefaultLoras() did not clear the default stack")
	}

	// Unloading: the base pixels again, and the name is unknown from then on.
	for _, name := range []string{"a", "te"} {
		if err := p.UnloadLora(name); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(generateOne(t, p, foxParams()).RGB(), base) {
		t.Error("after unloading, the pixels are not the base ones")
	}
	_, err = p.Generate(context.Background(), foxWith(diffgentor.Lora{Name: "a", Strength: 0.8}))
	wantCode(t, err, diffgentor.ErrInvalidArg, "`a`", "loaded: none")
	wantCode(t, p.UnloadLora("a"), diffgentor.ErrInvalidArg, "`a`")
}

func TestLoraErrors(t *testing.T) {
	ctx := context.Background()
	p := loadPipeline(t, "tiny-sd")
	wantCode(t, p.LoadLora("x", loraFile("no-such.safetensors")), diffgentor.ErrIO, "no-such.safetensors")
	notSafetensors := filepath.Join(t.TempDir(), "image.safetensors")
	if err := os.WriteFile(notSafetensors, []byte("\x89PNG\r\n\x1a\nnot a LoRA"), 0o644); err != nil {
		t.Fatal(err)
	}
	wantCode(t, p.LoadLora("x", notSafetensors), diffgentor.ErrInvalidArg, "image.safetensors")
	wantCode(t, p.LoadLora("bad name", loraFile("sd_a.safetensors")), diffgentor.ErrInvalidArg, "bad name")
	wantCode(t, p.LoadLora("a\x00b", loraFile("sd_a.safetensors")), diffgentor.ErrInvalidArg, "NUL")
	if infos, err := p.Loras(); err != nil || len(infos) != 0 {
		t.Fatalf("failed loads left %v, %v", infos, err)
	}
	if err := p.LoadLora("a", loraFile("sd_a.safetensors")); err != nil {
		t.Fatal(err)
	}
	for _, s := range []float32{float32(math.NaN()), float32(math.Inf(1))} {
		_, err := p.Generate(ctx, foxWith(diffgentor.Lora{Name: "a", Strength: s}))
		wantCode(t, err, diffgentor.ErrInvalidArg, "finite")
		wantCode(t, p.SetDefaultLoras(diffgentor.Lora{Name: "a", Strength: s}), diffgentor.ErrInvalidArg, "finite")
	}
	_, err := p.Generate(ctx, foxWith(diffgentor.Lora{Name: "a", Strength: 1}, diffgentor.Lora{Name: "a", Strength: 1}))
	wantCode(t, err, diffgentor.ErrInvalidArg, "twice")
	_, err = p.Generate(ctx, foxWith(diffgentor.Lora{Name: "ghost", Strength: 1}))
	wantCode(t, err, diffgentor.ErrInvalidArg, "ghost", "loaded: a")
	wantCode(t, p.SetDefaultLoras(diffgentor.Lora{Name: "ghost", Strength: 1}), diffgentor.ErrInvalidArg, "ghost")
	wantCode(t, p.SetDefaultLoras(diffgentor.Lora{Name: "a;b", Strength: 1}), diffgentor.ErrInvalidArg, "a;b")

	// Remote pipelines have no adapters (nothing is sent).
	remote, err := diffgentor.NewRemote("openai", diffgentor.WithBaseURL("http://127.0.0.1:9/v1"), diffgentor.WithAPIKey("sk-test"))
	if err != nil {
		t.Fatal(err)
	}
	defer remote.Close()
	wantCode(t, remote.LoadLora("a", loraFile("sd_a.safetensors")), diffgentor.ErrUnsupported, "openai")
	wantCode(t, remote.UnloadLora("a"), diffgentor.ErrUnsupported, "openai")
	_, err = remote.Loras()
	wantCode(t, err, diffgentor.ErrUnsupported, "openai")
	_, err = remote.DefaultLoras()
	wantCode(t, err, diffgentor.ErrUnsupported, "openai")
	wantCode(t, remote.SetDefaultLoras(), diffgentor.ErrUnsupported, "openai")

	// A closed pipeline.
	p.Close()
	for _, err := range []error{p.LoadLora("a", loraFile("sd_a.safetensors")), p.UnloadLora("a"), p.SetDefaultLoras()} {
		if !errors.Is(err, diffgentor.ErrClosed) {
			t.Errorf("LoRA call on a closed pipeline: %v", err)
		}
	}
	if _, err := p.Loras(); !errors.Is(err, diffgentor.ErrClosed) {
		t.Errorf("Loras on a closed pipeline: %v", err)
	}
}
