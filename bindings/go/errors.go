package diffgentor

// #include <diffgentor.h>
import "C"

import (
	"errors"
	"fmt"
)

// ErrorCode is the stable numeric class of an error: the C API's dg_error_code_t (DG_ERROR_*),
// whose values are never renumbered. Each code is itself an error, a sentinel for errors.Is:
//
//	if errors.Is(err, diffgentor.ErrCancelled) { ... }
type ErrorCode int

// The error codes, equal to the C API's DG_ERROR_* values.
const (
	// ErrNullArg (DG_ERROR_NULL_ARG): a required handle was missing; in Go, a closed Runtime
	// or Pipeline (such errors also match ErrClosed).
	ErrNullArg ErrorCode = C.DG_ERROR_NULL_ARG
	// ErrInvalidArg (DG_ERROR_INVALID_ARG): a bad value: unknown Params.Extra key (named in
	// the message), unparsable value, a size the model rejects, steps outside 1..1000, ...
	ErrInvalidArg ErrorCode = C.DG_ERROR_INVALID_ARG
	// ErrIO (DG_ERROR_IO): reading or writing a file failed.
	ErrIO ErrorCode = C.DG_ERROR_IO
	// ErrModel (DG_ERROR_MODEL): the model directory is missing or malformed.
	ErrModel ErrorCode = C.DG_ERROR_MODEL
	// ErrUnsupported (DG_ERROR_UNSUPPORTED): a feature diffgentor does not implement.
	ErrUnsupported ErrorCode = C.DG_ERROR_UNSUPPORTED
	// ErrEPUnavailable (DG_ERROR_EP_UNAVAILABLE): the execution provider cannot be used.
	ErrEPUnavailable ErrorCode = C.DG_ERROR_EP_UNAVAILABLE
	// ErrCancelled (DG_ERROR_CANCELLED): the request was cancelled by its context or by its
	// progress function.
	ErrCancelled ErrorCode = C.DG_ERROR_CANCELLED
	// ErrBackend (DG_ERROR_BACKEND): ONNX Runtime failed to load or to run.
	ErrBackend ErrorCode = C.DG_ERROR_BACKEND
	// ErrPanic (DG_ERROR_PANIC): a bug inside diffgentor; the library stays usable.
	ErrPanic ErrorCode = C.DG_ERROR_PANIC
	// ErrRemote (DG_ERROR_REMOTE): a remote service (NewRemote) answered with an error, sent
	// something unusable, or could not be reached; the message keeps the service's HTTP status,
	// error type and message (never the API key).
	ErrRemote ErrorCode = C.DG_ERROR_REMOTE
	// ErrRateLimited (DG_ERROR_RATE_LIMITED): a remote service still refused for rate or quota
	// after the retries, or the key's quota is exhausted.
	ErrRateLimited ErrorCode = C.DG_ERROR_RATE_LIMITED
	// ErrTimeout (DG_ERROR_TIMEOUT): a remote call did not finish within its timeout
	// (WithTimeout), retries included.
	ErrTimeout ErrorCode = C.DG_ERROR_TIMEOUT
	// ErrRefused (DG_ERROR_REFUSED): a remote service's safety or moderation system blocked the
	// prompt or the image.
	ErrRefused ErrorCode = C.DG_ERROR_REFUSED
)

var codeNames = map[ErrorCode][2]string{
	ErrNullArg:       {"DG_ERROR_NULL_ARG", "null argument"},
	ErrInvalidArg:    {"DG_ERROR_INVALID_ARG", "invalid argument"},
	ErrIO:            {"DG_ERROR_IO", "I/O error"},
	ErrModel:         {"DG_ERROR_MODEL", "model error"},
	ErrUnsupported:   {"DG_ERROR_UNSUPPORTED", "unsupported"},
	ErrEPUnavailable: {"DG_ERROR_EP_UNAVAILABLE", "execution provider unavailable"},
	ErrCancelled:     {"DG_ERROR_CANCELLED", "cancelled"},
	ErrBackend:       {"DG_ERROR_BACKEND", "backend error"},
	ErrPanic:         {"DG_ERROR_PANIC", "panic inside diffgentor"},
	ErrRemote:        {"DG_ERROR_REMOTE", "remote service error"},
	ErrRateLimited:   {"DG_ERROR_RATE_LIMITED", "rate limited by the remote service"},
	ErrTimeout:       {"DG_ERROR_TIMEOUT", "remote call timed out"},
	ErrRefused:       {"DG_ERROR_REFUSED", "refused by the remote service"},
}

// String returns the C name of the code, e.g. "DG_ERROR_CANCELLED".
func (c ErrorCode) String() string {
	if n, ok := codeNames[c]; ok {
		return n[0]
	}
	return fmt.Sprintf("DG_ERROR(%d)", int(c))
}

// Error describes the code, so that the code can serve as a sentinel error.
func (c ErrorCode) Error() string {
	if n, ok := codeNames[c]; ok {
		return "diffgentor: " + n[1]
	}
	return fmt.Sprintf("diffgentor: error code %d", int(c))
}

// ErrClosed is matched (errors.Is) by the error of any call on a closed Runtime or Pipeline;
// that error is an *Error with code ErrNullArg.
var ErrClosed = errors.New("diffgentor: use of a closed handle")

// Error is every error the binding returns: the numeric code and the library's message.
// errors.Is(err, code) compares codes; errors.As(err, &e) with e *Error gives both fields.
// A request cancelled through its context also unwraps to the context's error, so
// errors.Is(err, context.Canceled) or context.DeadlineExceeded holds as well.
type Error struct {
	Code    ErrorCode
	Message string
	cause   error
}

func (e *Error) Error() string {
	return fmt.Sprintf("diffgentor: %s (%s)", e.Message, e.Code.String())
}

// Is reports whether target is e's code, or an *Error with the same code (and, when the
// target's Message is set, the same message).
func (e *Error) Is(target error) bool {
	switch t := target.(type) {
	case ErrorCode:
		return e.Code == t
	case *Error:
		return t != nil && e.Code == t.Code && (t.Message == "" || t.Message == e.Message)
	}
	return false
}

// Unwrap returns the cause: the context's error for a request its context cancelled,
// ErrClosed for a call on a closed handle, else nil.
func (e *Error) Unwrap() error { return e.cause }

// takeError converts and frees a C error; nil for NULL.
func takeError(e *C.dg_error_t) error {
	if e == nil {
		return nil
	}
	err := &Error{Code: ErrorCode(C.dg_error_code(e)), Message: C.GoString(C.dg_error_message(e))}
	C.dg_error_free(e)
	return err
}

func invalidArg(format string, args ...any) error {
	return &Error{Code: ErrInvalidArg, Message: fmt.Sprintf(format, args...)}
}

func closedError(what string) error {
	return &Error{Code: ErrNullArg, Message: what + " is closed", cause: ErrClosed}
}
