//go:build diffgentor_pkgconfig

package diffgentor

// Linking through pkg-config (diffgentor.pc, installed by `make install`): build with
// -tags diffgentor_pkgconfig and PKG_CONFIG_PATH pointing at <prefix>/lib/pkgconfig.

// #cgo pkg-config: diffgentor
import "C"
