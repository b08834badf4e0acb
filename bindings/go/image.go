package diffgentor

import (
	"image"
	"image/color"
)

// Image is one generated picture: 8-bit RGB, rows top to bottom, no padding. It implements
// image.Image (every pixel is opaque, its color model is color.RGBAModel), so image/png,
// image/jpeg and image/draw take it as is; RGB gives the raw bytes for byte-exact comparison.
// It is an ordinary Go value, independent of the Pipeline and Runtime that made it.
type Image struct {
	// Pix holds the pixels: Rect.Dy() rows of Stride bytes, 3 bytes (R, G, B) per pixel.
	Pix []uint8
	// Stride is the distance in bytes between vertically adjacent pixels (3 * width).
	Stride int
	// Rect is the image's bounds, with its origin at (0, 0).
	Rect image.Rectangle
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
