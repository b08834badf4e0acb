// Command caption runs a vision-language model through the Go binding: it captions images, answers
// a question about them (-prompt), or rewrites an instruction into a better prompt for an image
// generator (-enhance STYLE -instruction TEXT).
//
//	go run ./examples/caption -model ../../models/tiny-qwen2.5-vl -image ../../models/vlm-images/shapes_96x64.png
//	go run ./examples/caption -model ... -image a.png -image b.png -prompt "What is different?" -stream
//	go run ./examples/caption -model ... -image a.png -enhance qwen_image_edit -instruction "make the sky purple"
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"

	diffgentor "github.com/diffgentor/diffgentor/bindings/go"
)

// images collects repeated -image flags.
type images []string

func (i *images) String() string     { return strings.Join(*i, ",") }
func (i *images) Set(v string) error { *i = append(*i, v); return nil }

func main() {
	var paths images
	model := flag.String("model", "models/tiny-qwen2.5-vl", "VLM package directory")
	flag.Var(&paths, "image", "image file (PNG, JPEG or WebP); repeat for several")
	prompt := flag.String("prompt", "", "question or instruction (default: the model's caption prompt)")
	maxNew := flag.Int("max-new-tokens", 32, "most new tokens")
	temperature := flag.Float64("temperature", 0, "sampling temperature (0: greedy)")
	seed := flag.Uint64("seed", 0, "seed of sampled decoding")
	stream := flag.Bool("stream", false, "print tokens as they come")
	style := flag.String("enhance", "", "rewrite -instruction for this generator style: qwen_image_edit, flux2, glm_image or t2i")
	instruction := flag.String("instruction", "", "the instruction or prompt to enhance")
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
	vlm, err := diffgentor.LoadVLM(rt, *model)
	if err != nil {
		log.Fatal(err)
	}
	defer vlm.Close()
	info := vlm.Info()
	fmt.Fprintf(os.Stderr, "%s model, context %d tokens\n", info.Layout, info.ContextLength)

	params := diffgentor.VLMParams{
		MaxNewTokens: *maxNew,
		Temperature:  float32(*temperature),
		Seed:         *seed,
	}
	if *style != "" {
		// Prompt enhancement: the style's system prompt, the image (if any) and the instruction.
		params.Enhance = &diffgentor.Enhancement{Style: *style, Instruction: *instruction}
		if len(paths) > 0 {
			img := diffgentor.VLMImageFromFile(paths[0])
			params.Enhance.Image = &img
		}
	} else {
		// Captioning (no -prompt) or visual question answering: the images, then the text.
		for _, p := range paths {
			params.Images = append(params.Images, diffgentor.VLMImageFromFile(p))
		}
		params.Prompt = *prompt
		if params.Prompt == "" {
			params.Prompt = info.CaptionPrompt
		}
	}
	var onToken func(diffgentor.VLMToken) bool
	if *stream {
		onToken = func(t diffgentor.VLMToken) bool {
			fmt.Fprint(os.Stderr, t.Text)
			return true // false would cancel the request
		}
	}

	res, err := vlm.Generate(ctx, params, onToken)
	if *stream {
		fmt.Fprintln(os.Stderr)
	}
	var dgErr *diffgentor.Error
	switch {
	case errors.Is(err, diffgentor.ErrCancelled):
		log.Fatal("cancelled")
	case errors.As(err, &dgErr):
		log.Fatalf("error %d (%v): %s", int(dgErr.Code), dgErr.Code, dgErr.Message)
	case err != nil:
		log.Fatal(err)
	}
	if params.Enhance != nil {
		fmt.Printf("enhanced prompt: %q\n", res.EnhancedPrompt)
	} else {
		fmt.Printf("answer: %q\n", res.Text)
	}
	fmt.Printf("token ids: %v\n", res.TokenIDs)
	fmt.Printf("%d prompt tokens, %d new, finish %s, first token after %v, %.1f tokens/s\n",
		res.PromptTokens, len(res.TokenIDs), res.FinishReason, res.Timings.FirstToken, res.Timings.TokensPerSecond)
}
