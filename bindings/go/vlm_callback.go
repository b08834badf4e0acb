package diffgentor

// This file's preamble is copied into _cgo_export.h, so it only declares.

// #include <diffgentor.h>
import "C"

import "runtime/cgo"

// dgGoVLMToken is called by the C trampoline dg_go_vlm_token (vlm.go) with the handle passed as
// user_data. Go values never cross into C: only the handle's number does.
//
//export dgGoVLMToken
func dgGoVLMToken(tokenID C.int64_t, text *C.char, textLen C.size_t, index C.uint32_t, handle C.uintptr_t) C.bool {
	st := cgo.Handle(handle).Value().(*vlmTokenState)
	return C.bool(st.token(VLMToken{ID: int64(tokenID), Text: C.GoStringN(text, C.int(textLen)), Index: int(index)}))
}
