package diffgentor

/*
#include <stddef.h>
#include <stdint.h>
#include <diffgentor.h>

extern bool dgGoProgress(uint32_t step, uint32_t total, uint32_t stage, uint32_t stages,
                         double elapsed, uintptr_t handle);

// Fields appended to dg_progress_t are read only when the library's struct_size covers them (a
// library older than the header reports 1 of 1 stages).
static bool dg_go_progress(const dg_progress_t *p, void *user_data) {
	double elapsed = 0.0;
	uint32_t stage = 1, stages = 1;
	if (p->struct_size >= offsetof(dg_progress_t, elapsed_seconds) + sizeof(double))
		elapsed = p->elapsed_seconds;
	if (p->struct_size >= offsetof(dg_progress_t, stages) + sizeof(uint32_t)) {
		stage = p->stage;
		stages = p->stages;
	}
	return dgGoProgress(p->step, p->total, stage, stages, elapsed, (uintptr_t)user_data);
}

// handle 0: no progress callback. The handle travels as an integer so that Go never turns a
// number into a pointer.
static dg_error_t *dg_go_generate(const dg_pipeline_t *p, const dg_params_t *params,
                                  uintptr_t handle, const dg_cancel_token_t *cancel,
                                  dg_images_t **out) {
	return dg_pipeline_generate(p, params, handle ? dg_go_progress : NULL, (void *)handle,
	                            cancel, out);
}
*/
import "C"

import (
	"context"
	"image"
	"runtime"
	"runtime/cgo"
	"sync"
	"sync/atomic"
	"unsafe"
)

// Pipeline draws images: a model package loaded on a Runtime (Runtime.LoadPipeline) or a remote
// image service (NewRemote); Kind tells which. It is safe for concurrent use: many goroutines may
// call Generate at once (weights and connections are shared; each request has its own scheduler
// and noise, so a seed gives the same image whatever runs beside it). Close it when done (a
// finalizer is only a safety net).
type Pipeline struct {
	// mu is held for reading by every Generate and for writing by Close, so the pipeline is
	// never freed while a request runs on it.
	mu  sync.RWMutex
	ptr *C.dg_pipeline_t
}

// Result is what one request made: its images, the seed it used (the one set, or the random
// one drawn when Params.Seed was nil) and what the generator reported besides (a remote service's
// model, revised prompts and ignored fields).
type Result struct {
	Images   []*Image
	Seed     uint64
	Metadata Metadata
}

// Close frees the pipeline. It waits for running Generate calls to finish, is idempotent and
// always returns nil; later calls return an error matching ErrClosed.
func (p *Pipeline) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ptr != nil {
		C.dg_pipeline_free(p.ptr)
		p.ptr = nil
		runtime.SetFinalizer(p, nil)
	}
	return nil
}

// Generate runs one text-to-image request and returns its images, each an *Image.
// Cancelling ctx stops the request before its next denoising step (or before decoding; a remote
// request before its next attempt); the error then matches both ErrCancelled and ctx.Err()
// (context.Canceled or context.DeadlineExceeded). Params.Progress returning false also cancels
// (ErrCancelled only).
func (p *Pipeline) Generate(ctx context.Context, params Params) ([]image.Image, error) {
	res, err := p.GenerateResult(ctx, params)
	if err != nil {
		return nil, err
	}
	imgs := make([]image.Image, len(res.Images))
	for i, m := range res.Images {
		imgs[i] = m
	}
	return imgs, nil
}

// activeWatchers counts running context watchers (checked by the tests: none outlives its
// Generate call).
var activeWatchers atomic.Int32

// testHookTokenRaised, when set (by the tests, before Generate), runs after the watcher raised
// the token.
var testHookTokenRaised func()

// GenerateResult is Generate returning the concrete images and the seed used.
func (p *Pipeline) GenerateResult(ctx context.Context, params Params) (*Result, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	if err := ctx.Err(); err != nil {
		return nil, &Error{Code: ErrCancelled, Message: "request cancelled by its context before it started", cause: err}
	}
	if params.Progress != nil && params.OnProgress != nil {
		return nil, invalidArg("set Params.Progress or Params.OnProgress, not both")
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.ptr == nil {
		return nil, closedError("Pipeline")
	}
	cp, err := params.build()
	if err != nil {
		return nil, err
	}
	defer C.dg_params_free(cp)

	var token *C.dg_cancel_token_t
	if err := takeError(C.dg_cancel_token_new(&token)); err != nil {
		return nil, err
	}
	// The watcher raises the token when ctx is done; it ends before Generate returns (and before
	// the token is freed), whatever happens.
	var watcherRaised atomic.Bool
	stop := make(chan struct{})
	watcherDone := make(chan struct{})
	if done := ctx.Done(); done != nil {
		activeWatchers.Add(1)
		go func() {
			defer close(watcherDone)
			defer activeWatchers.Add(-1)
			select {
			case <-done:
				watcherRaised.Store(true)
				C.dg_cancel_token_cancel(token)
				if testHookTokenRaised != nil {
					testHookTokenRaised()
				}
			case <-stop:
			}
		}()
	} else {
		close(watcherDone)
	}

	// The trampoline is installed for a progress func and for a cancellable ctx: it also checks
	// ctx after every step, so a cancel from inside the progress func stops the next step
	// deterministically.
	var handle C.uintptr_t
	var st *progressState
	if params.Progress != nil || params.OnProgress != nil || ctx.Done() != nil {
		st = &progressState{fn: params.Progress, fnInfo: params.OnProgress, ctx: ctx}
		h := cgo.NewHandle(st)
		defer h.Delete()
		handle = C.uintptr_t(h)
	}

	var out *C.dg_images_t
	cerr := C.dg_go_generate(p.ptr, cp, handle, token, &out)
	close(stop)
	<-watcherDone
	C.dg_cancel_token_free(token)
	runtime.KeepAlive(p)

	if st != nil && st.panicked {
		C.dg_images_free(out)
		_ = takeError(cerr)
		panic(st.panicValue)
	}
	if cerr != nil {
		err := takeError(cerr).(*Error)
		userStopped := st != nil && st.userStopped
		ctxStopped := (st != nil && st.ctxStopped) || watcherRaised.Load()
		if err.Code == ErrCancelled && !userStopped && ctxStopped {
			err.cause = ctx.Err()
		}
		return nil, err
	}
	// The C images stay alive for the Images' EncodePNG/WritePNG/... (freed by a finalizer once
	// no Image of this request is reachable).
	owner := newCImages(out)

	res := &Result{
		Seed:     uint64(C.dg_images_seed(out)),
		Metadata: parseMetadata(C.GoString(C.dg_images_metadata(out))),
	}
	n := int(C.dg_images_count(out))
	res.Images = make([]*Image, n)
	for i := 0; i < n; i++ {
		ci := C.dg_images_get(out, C.size_t(i))
		w, h := int(C.dg_image_width(ci)), int(C.dg_image_height(ci))
		stride := int(C.dg_image_stride(ci))
		pix := make([]byte, stride*h)
		if len(pix) > 0 {
			copy(pix, unsafe.Slice((*byte)(unsafe.Pointer(C.dg_image_pixels(ci))), len(pix)))
		}
		res.Images[i] = &Image{Pix: pix, Stride: stride, Rect: image.Rect(0, 0, w, h), lib: ci, owner: owner}
	}
	runtime.KeepAlive(owner)
	return res, nil
}
