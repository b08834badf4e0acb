package diffgentor_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	diffgentor "github.com/diffgentor/diffgentor/bindings/go"
)

func ExampleRuntime_LoadPipeline() {
	// ONNX Runtime is found through DG_ORT_DYLIB_PATH (or WithORTLibrary).
	rt, err := diffgentor.NewRuntime()
	if err != nil {
		log.Fatal(err)
	}
	defer rt.Close()

	pipe, err := rt.LoadPipeline("../../models/digits")
	if err != nil {
		log.Fatal(err)
	}
	defer pipe.Close()

	res, err := pipe.GenerateResult(context.Background(), diffgentor.Params{
		Prompt:        "a handwritten digit 3",
		Seed:          diffgentor.Uint64(3),
		Steps:         10,
		GuidanceScale: 3,
	})
	if err != nil {
		log.Fatal(err)
	}
	img := res.Images[0]
	fmt.Printf("%d image(s), %dx%d, %d RGB bytes, seed %d\n",
		len(res.Images), img.Width(), img.Height(), len(img.RGB()), res.Seed)
	// Output: 1 image(s), 16x16, 768 RGB bytes, seed 3
}

func ExampleParams_progress() {
	rt, err := diffgentor.NewRuntime()
	if err != nil {
		log.Fatal(err)
	}
	defer rt.Close()
	pipe, err := rt.LoadPipeline("../../models/digits")
	if err != nil {
		log.Fatal(err)
	}
	defer pipe.Close()

	_, err = pipe.Generate(context.Background(), diffgentor.Params{
		Prompt: "a handwritten digit 3",
		Steps:  5,
		Progress: func(step, total int, _ time.Duration) bool {
			fmt.Printf("step %d/%d\n", step, total)
			return step < 2 // false cancels the request
		},
	})
	fmt.Println(errors.Is(err, diffgentor.ErrCancelled))
	// Output:
	// step 1/5
	// step 2/5
	// true
}
