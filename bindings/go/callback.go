package diffgentor

// This file's preamble is copied into _cgo_export.h, so it only declares.

// #include <diffgentor.h>
import "C"

import (
	"context"
	"runtime/cgo"
	"time"
)

// progressState is what the C trampoline's user_data (a cgo.Handle) refers to. It is only used
// on the goroutine that called Generate: the library calls the trampoline on the generating
// thread, during the cgo call.
type progressState struct {
	fn          ProgressFunc
	fnInfo      func(ProgressInfo) bool
	ctx         context.Context
	ctxStopped  bool // the trampoline cancelled because ctx was done
	panicked    bool
	panicValue  any
	userStopped bool // fn returned false
}

// dgGoProgress is called by the C trampoline dg_go_progress (pipeline.go) with the handle
// passed as user_data; it calls whichever of Params.Progress and Params.OnProgress is set. Go values never cross into C: only the handle's number does.
//
//export dgGoProgress
func dgGoProgress(step, total, stage, stages C.uint32_t, elapsed C.double, handle C.uintptr_t) (goOn C.bool) {
	st := cgo.Handle(handle).Value().(*progressState)
	if st.panicked {
		return false
	}
	if st.fn != nil || st.fnInfo != nil {
		// A panic must not unwind through the library's frames: keep it, cancel the request,
		// and let Generate re-raise it once the C call has returned.
		defer func() {
			if v := recover(); v != nil {
				st.panicked, st.panicValue = true, v
				goOn = false
			}
		}()
		d := time.Duration(float64(elapsed) * float64(time.Second))
		var keepGoing bool
		if st.fn != nil {
			keepGoing = st.fn(int(step), int(total), d)
		} else {
			keepGoing = st.fnInfo(ProgressInfo{Step: int(step), Total: int(total), Stage: int(stage),
				Stages: int(stages), Elapsed: d})
		}
		if !keepGoing {
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
