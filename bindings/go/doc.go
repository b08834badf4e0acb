// Package diffgentor is the Go binding of diffgentor, an embeddable image-generation runtime
// (Stable Diffusion ONNX packages on ONNX Runtime), over its C API (include/diffgentor.h) with
// cgo.
//
// A Runtime loads ONNX Runtime; a Pipeline is a model package loaded on it; Pipeline.Generate
// runs one request described by Params and returns image.Image values (each an *Image, whose
// RGB method gives the raw RGB8 bytes):
//
//	rt, err := diffgentor.NewRuntime()
//	...
//	defer rt.Close()
//	pipe, err := rt.LoadPipeline("models/digits")
//	...
//	defer pipe.Close()
//	imgs, err := pipe.Generate(ctx, diffgentor.Params{Prompt: "a handwritten digit 3", Seed: diffgentor.Uint64(3)})
//
// Setting Params.InitImage (see PixelsFromImage) makes the request an edit: img2img, inpainting
// with Params.Mask, or a progressive Params.Plan. A generated *Image encodes itself with the
// library (EncodePNG, EncodeJPEG, WritePNG, WriteJPEG).
//
// NewRemote makes a Pipeline that sends requests to a remote image service ("openai" or
// "gemini") instead; it is used the same way, and Pipeline.Kind tells the two apart.
//
// LoadVLM loads a vision-language model package (captioning, visual question answering, prompt
// enhancement); VLM.Generate runs one conversation described by VLMParams, streaming tokens to a
// callback. See docs/vlm.md.
//
// Errors are *Error values carrying the C API's numeric code; errors.Is(err, ErrCancelled) and
// the other ErrorCode sentinels compare codes. Cancelling the context stops a request before its
// next denoising step (errors.Is(err, context.Canceled) then holds too). Runtime and Pipeline are
// safe for concurrent use; Close frees them deterministically, finalizers are a safety net.
package diffgentor
