//go:build !diffgentor_pkgconfig

package diffgentor

// Default linking: -ldiffgentor, with the header and library found through the compiler's
// default paths (an install under /usr or /usr/local) or through CGO_CFLAGS/CGO_LDFLAGS (an
// in-tree build: see README.md). Build with -tags diffgentor_pkgconfig to ask pkg-config instead.

// #cgo LDFLAGS: -ldiffgentor
import "C"
