package diffgentor

// #include <stdlib.h>
// #include <diffgentor.h>
import "C"

import (
	"bytes"
	"image"
	"image/color"
	"math"
	"runtime"
	"unsafe"
)

// Image is one generated picture: 8-bit RGB, rows top to bottom, no padding. It implements
// image.Image (every pixel is opaque, its color model is color.RGBAModel), so image/png,
// image/jpeg and image/draw take it as is; RGB gives the raw bytes for byte-exact comparison.
// It is an ordinary Go value, independent of the Pipeline and Runtime that made it.
//
// An Image returned by Generate also keeps the library's copy of the request's images (freed
// when no Image of the request is reachable any more), which EncodePNG, EncodeJPEG, WritePNG,
// WriteJPEG and Channels use; an Image built in Go has none (those methods then fail with
// ErrNullArg; encode it with image/png or image/jpeg).
type Image struct {
	// Pix holds the pixels: Rect.Dy() rows of Stride bytes, 3 bytes (R, G, B) per pixel.
	Pix []uint8
	// Stride is the distance in bytes between vertically adjacent pixels (3 * width).
	Stride int
	// Rect is the image's bounds, with its origin at (0, 0).
	Rect image.Rectangle

	// lib is the library's image (nil for an Image built in Go); owner keeps it alive.
	lib   *C.dg_image_t
	owner *cImages
}

// cImages owns a C dg_images_t for the Images made from it; a finalizer frees it once none of
// them is reachable. Those Images hold Go copies of the pixels too, so the C memory kept is at
// most the Go memory the garbage collector sees (and paces itself by).
type cImages struct{ ptr *C.dg_images_t }

func newCImages(ptr *C.dg_images_t) *cImages {
	o := &cImages{ptr: ptr}
	runtime.SetFinalizer(o, func(o *cImages) { C.dg_images_free(o.ptr) })
	return o
}

// libImage returns the library's image after checking that m still shows its pixels (the
// library encodes its own copy, so a changed Pix must not be encoded silently).
func (m *Image) libImage() (*C.dg_image_t, error) {
	if m == nil || m.lib == nil {
		return nil, &Error{Code: ErrNullArg, Message: "the Image was not made by a Pipeline, so the library has no copy " +
			"of it to encode (use image/png or image/jpeg)"}
	}
	w, h := int(C.dg_image_width(m.lib)), int(C.dg_image_height(m.lib))
	stride := int(C.dg_image_stride(m.lib))
	same := m.Rect == image.Rect(0, 0, w, h) && m.Stride == stride && len(m.Pix) >= stride*h
	if same && stride*h > 0 {
		same = bytes.Equal(m.Pix[:stride*h], unsafe.Slice((*byte)(unsafe.Pointer(C.dg_image_pixels(m.lib))), stride*h))
	}
	if !same {
		return nil, invalidArg("the Image's pixels or bounds were changed after Generate; the library encodes only " +
			"the pixels it made (use image/png or image/jpeg)")
	}
	return m.lib, nil
}

// Channels returns the bytes per pixel of the library's image: 3 (RGB8), as for every Image.
func (m *Image) Channels() int {
	if m == nil || m.lib == nil {
		return 3
	}
	n := int(C.dg_image_channels(m.lib))
	runtime.KeepAlive(m.owner)
	return n
}

// jpegQuality converts a JPEG quality for C: values that do not fit a byte are refused here,
// 0 and 101..255 by the library (both ErrInvalidArg).
func jpegQuality(quality int) (C.uint8_t, error) {
	if quality < 0 || quality > math.MaxUint8 {
		return 0, invalidArg("JPEG quality %d is outside 1..100", quality)
	}
	return C.uint8_t(quality), nil
}

// takeBuffer copies an encoded buffer into Go memory and frees it; NULL gives nil.
func takeBuffer(buf *C.dg_buffer_t) []byte {
	if buf == nil {
		return nil
	}
	defer C.dg_buffer_free(buf)
	n := int(C.dg_buffer_len(buf))
	data := C.dg_buffer_data(buf)
	out := make([]byte, n)
	if n > 0 && data != nil {
		copy(out, unsafe.Slice((*byte)(unsafe.Pointer(data)), n))
	}
	return out
}

// encode runs one dg_image_encode_* call; the buffer is freed on every path.
func (m *Image) encode(enc func(img *C.dg_image_t, out **C.dg_buffer_t) *C.dg_error_t) ([]byte, error) {
	lib, err := m.libImage()
	if err != nil {
		return nil, err
	}
	var buf *C.dg_buffer_t
	cerr := enc(lib, &buf)
	runtime.KeepAlive(m.owner)
	data := takeBuffer(buf) // also when the call failed (then buf is NULL and this is a no-op)
	if err := takeError(cerr); err != nil {
		return nil, err
	}
	return data, nil
}

// EncodePNG encodes the image as PNG with the library (dg_image_encode_png) and returns the
// bytes (Go memory). See Image for the images it accepts.
func (m *Image) EncodePNG() ([]byte, error) {
	return m.encode(func(img *C.dg_image_t, out **C.dg_buffer_t) *C.dg_error_t {
		return C.dg_image_encode_png(img, out)
	})
}

// EncodeJPEG encodes the image as JPEG at quality 1..100 with the library
// (dg_image_encode_jpeg); another quality is ErrInvalidArg.
func (m *Image) EncodeJPEG(quality int) ([]byte, error) {
	q, err := jpegQuality(quality)
	if err != nil {
		return nil, err
	}
	return m.encode(func(img *C.dg_image_t, out **C.dg_buffer_t) *C.dg_error_t {
		return C.dg_image_encode_jpeg(img, q, out)
	})
}

// write runs one dg_image_write_* call with path.
func (m *Image) write(path string, w func(img *C.dg_image_t, path *C.char) *C.dg_error_t) error {
	lib, err := m.libImage()
	if err != nil {
		return err
	}
	cpath, err := cString("path", path)
	if err != nil {
		return err
	}
	defer free(cpath)
	err = takeError(w(lib, cpath))
	runtime.KeepAlive(m.owner)
	return err
}

// WritePNG writes the image as a PNG file at path with the library (dg_image_write_png),
// atomically: parent directories are created and readers never see a partial file. A failure
// to write is ErrIO.
func (m *Image) WritePNG(path string) error {
	return m.write(path, func(img *C.dg_image_t, p *C.char) *C.dg_error_t { return C.dg_image_write_png(img, p) })
}

// WriteJPEG writes the image as a JPEG file at path, quality 1..100 (else ErrInvalidArg),
// atomically like WritePNG (dg_image_write_jpeg).
func (m *Image) WriteJPEG(path string, quality int) error {
	q, err := jpegQuality(quality)
	if err != nil {
		return err
	}
	return m.write(path, func(img *C.dg_image_t, p *C.char) *C.dg_error_t {
		return C.dg_image_write_jpeg(img, p, q)
	})
}

// ColorModel returns color.RGBAModel.
func (m *Image) ColorModel() color.Model { return color.RGBAModel }

// Bounds returns m.Rect.
func (m *Image) Bounds() image.Rectangle { return m.Rect }

// At returns the pixel at (x, y) as a color.RGBA (zero outside the bounds).
func (m *Image) At(x, y int) color.Color { return m.RGBAAt(x, y) }

// RGBAAt returns the pixel at (x, y), with alpha 255 (zero outside the bounds).
func (m *Image) RGBAAt(x, y int) color.RGBA {
	if !(image.Point{x, y}.In(m.Rect)) {
		return color.RGBA{}
	}
	i := (y-m.Rect.Min.Y)*m.Stride + (x-m.Rect.Min.X)*3
	s := m.Pix[i : i+3 : i+3]
	return color.RGBA{s[0], s[1], s[2], 0xff}
}

// Opaque reports true: generated images have no alpha (image/png then writes RGB).
func (m *Image) Opaque() bool { return true }

// RGB returns the raw pixels: width*height*3 bytes, RGB, row-major, top row first. The slice
// is the image's own storage, not a copy.
func (m *Image) RGB() []byte { return m.Pix }

// Width returns the width in pixels.
func (m *Image) Width() int { return m.Rect.Dx() }

// Height returns the height in pixels.
func (m *Image) Height() int { return m.Rect.Dy() }
