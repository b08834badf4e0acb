// Command digits generates "a handwritten digit 3" with the models/digits test package and
// writes it as a PNG.
//
//	go run ./examples/digits -model ../../models/digits -out digit3.png
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"image/png"
	"log"
	"os"
	"os/signal"
	"time"

	diffgentor "github.com/diffgentor/diffgentor/bindings/go"
)

func main() {
	model := flag.String("model", "models/digits", "model package directory")
	out := flag.String("out", "digit3.png", "PNG file to write")
	prompt := flag.String("prompt", "a handwritten digit 3", "prompt")
	seed := flag.Uint64("seed", 3, "seed")
	steps := flag.Int("steps", 20, "denoising steps")
	flag.Parse()
	log.SetFlags(0)

	// Ctrl-C cancels the request through the context.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	rt, err := diffgentor.NewRuntime() // ONNX Runtime from DG_ORT_DYLIB_PATH or the usual places
	if err != nil {
		log.Fatal(err)
	}
	defer rt.Close()
	pipe, err := rt.LoadPipeline(*model)
	if err != nil {
		log.Fatal(err)
	}
	defer pipe.Close()

	imgs, err := pipe.Generate(ctx, diffgentor.Params{
		Prompt:        *prompt,
		Seed:          diffgentor.Uint64(*seed),
		Steps:         *steps,
		GuidanceScale: 3,
		Progress: func(step, total int, elapsed time.Duration) bool {
			fmt.Fprintf(os.Stderr, "\rstep %d/%d (%v)", step, total, elapsed.Round(time.Millisecond))
			return true
		},
	})
	fmt.Fprintln(os.Stderr)
	var dgErr *diffgentor.Error
	switch {
	case errors.Is(err, diffgentor.ErrCancelled):
		log.Fatal("cancelled")
	case errors.As(err, &dgErr):
		log.Fatalf("error %d (%v): %s", int(dgErr.Code), dgErr.Code, dgErr.Message)
	case err != nil:
		log.Fatal(err)
	}

	f, err := os.Create(*out)
	if err != nil {
		log.Fatal(err)
	}
	if err := png.Encode(f, imgs[0]); err != nil {
		log.Fatal(err)
	}
	if err := f.Close(); err != nil {
		log.Fatal(err)
	}
	b := imgs[0].Bounds()
	fmt.Printf("wrote %s (%dx%d)\n", *out, b.Dx(), b.Dy())
}
