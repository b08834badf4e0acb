package diffgentor

// #include <stdlib.h>
// #include <diffgentor.h>
import "C"

import (
	"image"
	"image/color"
	"math"
	"unsafe"
)

// Pixels is an 8-bit image handed to the library: the init image of an edit or an inpainting
// mask (Params.InitImage, Params.Mask). Pix holds Height rows of Stride bytes, each Width pixels
// of Channels bytes: 1 (grey), 3 (RGB) or 4 (RGBA; alpha is ignored). Bytes past the
// Width*Channels of a row (padding) are never read.
type Pixels struct {
	Pix           []byte
	Width, Height int
	// Channels is 1, 3 or 4 (anything else is ErrInvalidArg).
	Channels int
	// Stride is the distance in bytes between the starts of two rows; 0 means Width*Channels.
	Stride int
}

// PixelsFromImage describes img as Pixels, for Params.InitImage and Params.Mask. An *Image (a
// generated picture), an opaque *image.RGBA, an *image.NRGBA and an *image.Gray are used as they
// are, sharing img's memory (read at Generate time); any other image is converted to packed RGB
// (straight, not premultiplied, colours; alpha dropped). nil gives nil (no image).
func PixelsFromImage(img image.Image) *Pixels {
	if img == nil {
		return nil
	}
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	switch m := img.(type) {
	case *Image:
		if m.Stride >= 3*w {
			return &Pixels{Pix: m.Pix, Width: w, Height: h, Channels: 3, Stride: m.Stride}
		}
	case *image.RGBA:
		if m.Opaque() { // premultiplied equals straight only when every pixel is opaque
			return &Pixels{Pix: m.Pix, Width: w, Height: h, Channels: 4, Stride: m.Stride}
		}
	case *image.NRGBA:
		return &Pixels{Pix: m.Pix, Width: w, Height: h, Channels: 4, Stride: m.Stride}
	case *image.Gray:
		return &Pixels{Pix: m.Pix, Width: w, Height: h, Channels: 1, Stride: m.Stride}
	}
	pix := make([]byte, 3*w*h)
	i := 0
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			c := color.NRGBAModel.Convert(img.At(x, y)).(color.NRGBA)
			pix[i], pix[i+1], pix[i+2] = c.R, c.G, c.B
			i += 3
		}
	}
	return &Pixels{Pix: pix, Width: w, Height: h, Channels: 3, Stride: 3 * w}
}

// clone copies the bytes the library reads, so the caller's buffer may change afterwards. px
// passed layout.
func (px *Pixels) clone() *Pixels {
	c := *px
	_, need, _ := px.layout("")
	c.Pix = append([]byte(nil), px.Pix[:need]...)
	return &c
}

// layout checks that every value fits its C type and that Pix holds the bytes the library reads,
// stride * (height - 1) + width * channels (as the C API); it returns the stride (Stride, or
// Width*Channels when 0) and that byte count.
func (px *Pixels) layout(what string) (stride, need uint64, err error) {
	for _, f := range []struct {
		name string
		v    int
	}{{"width", px.Width}, {"height", px.Height}, {"channels", px.Channels}, {"stride", px.Stride}} {
		if f.v < 0 || uint64(f.v) > math.MaxUint32 {
			return 0, 0, invalidArg("%s %s %d is out of range", what, f.name, f.v)
		}
	}
	row := uint64(px.Width) * uint64(px.Channels)
	stride = uint64(px.Stride)
	if stride == 0 {
		stride = row
	}
	rows := uint64(0)
	if px.Height > 0 {
		rows = uint64(px.Height) - 1
	}
	need = stride*rows + row // every factor < 2^32: no overflow
	if uint64(len(px.Pix)) < need {
		return 0, 0, invalidArg("%s buffer holds %d bytes, but %dx%d pixels of %d channels with stride %d need %d",
			what, len(px.Pix), px.Width, px.Height, px.Channels, stride, need)
	}
	return stride, need, nil
}

// setPixels calls dg_params_set_init_image or dg_params_set_mask (set) with px; nil px leaves
// the params unchanged. Go checks only what keeps the C call memory-safe (every value fits its C
// type, Pix holds the bytes the library reads); the library checks the rest (channels, stride,
// sizes) and its error is returned as is.
func setPixels(what string, px *Pixels, set func(pixels *C.uint8_t, w, h, ch C.uint32_t, stride C.size_t) *C.dg_error_t) error {
	if px == nil {
		return nil
	}
	stride, _, err := px.layout(what)
	if err != nil {
		return err
	}
	// A zero-length Pix must still be a non-NULL pointer (NULL would clear the image); the
	// library rejects the size before reading anything.
	var one [1]byte
	ptr := &one[0]
	if len(px.Pix) > 0 {
		ptr = &px.Pix[0]
	}
	return takeError(set((*C.uint8_t)(unsafe.Pointer(ptr)), C.uint32_t(px.Width), C.uint32_t(px.Height),
		C.uint32_t(px.Channels), C.size_t(stride)))
}

func setInitImage(cp *C.dg_params_t, px *Pixels) error {
	return setPixels("init image", px, func(p *C.uint8_t, w, h, ch C.uint32_t, s C.size_t) *C.dg_error_t {
		return C.dg_params_set_init_image(cp, p, w, h, ch, s)
	})
}

func setMask(cp *C.dg_params_t, px *Pixels) error {
	return setPixels("mask", px, func(p *C.uint8_t, w, h, ch C.uint32_t, s C.size_t) *C.dg_error_t {
		return C.dg_params_set_mask(cp, p, w, h, ch, s)
	})
}

func setStrength(cp *C.dg_params_t, s float64) error {
	return takeError(C.dg_params_set_strength(cp, C.double(s)))
}

func setImageGuidanceScale(cp *C.dg_params_t, s float32) error {
	return takeError(C.dg_params_set_image_guidance_scale(cp, C.float(s)))
}

func setPlan(cp *C.dg_params_t, json string) error {
	cs, err := cString("plan", json)
	if err != nil {
		return err
	}
	defer free(cs)
	return takeError(C.dg_params_set_plan(cp, cs))
}

// check runs one setter on scratch C parameters, so that a setter method reports the library's
// own error at once (as the C setters do) rather than at Generate time.
func check(set func(cp *C.dg_params_t) error) error {
	var cp *C.dg_params_t
	if err := takeError(C.dg_params_new(&cp)); err != nil {
		return err
	}
	defer C.dg_params_free(cp)
	return set(cp)
}

// applyEdit sets the editing fields (init image, mask, strength, image guidance scale, plan).
func (p *Params) applyEdit(cp *C.dg_params_t) error {
	if err := setInitImage(cp, p.InitImage); err != nil {
		return err
	}
	if err := setMask(cp, p.Mask); err != nil {
		return err
	}
	if p.Strength != 0 {
		if err := setStrength(cp, p.Strength); err != nil {
			return err
		}
	}
	if p.ImageGuidanceScale != 0 {
		if err := setImageGuidanceScale(cp, p.ImageGuidanceScale); err != nil {
			return err
		}
	}
	if p.Plan != "" {
		if err := setPlan(cp, p.Plan); err != nil {
			return err
		}
	}
	return nil
}

// SetInitImage sets Params.InitImage to a copy of a caller's pixel buffer: height rows of
// stride bytes, each width pixels of channels bytes (1 grey, 3 RGB, 4 RGBA with alpha ignored);
// stride 0 means width*channels. The buffer is checked at once by the library
// (dg_params_set_init_image): channels other than 1, 3 or 4, a stride shorter than a row, a side
// outside 1..16384 or a buffer too short for the layout is ErrInvalidArg, and p is left
// unchanged. Whether the size matches the request is checked by Generate.
func (p *Params) SetInitImage(pix []byte, width, height, channels, stride int) error {
	px := &Pixels{Pix: pix, Width: width, Height: height, Channels: channels, Stride: stride}
	if err := check(func(cp *C.dg_params_t) error { return setInitImage(cp, px) }); err != nil {
		return err
	}
	p.InitImage = px.clone()
	return nil
}

// SetInitImageFromImage sets Params.InitImage to a copy of img (see PixelsFromImage), checked as
// by SetInitImage; nil clears it.
func (p *Params) SetInitImageFromImage(img image.Image) error {
	if img == nil {
		p.InitImage = nil
		return nil
	}
	px := PixelsFromImage(img)
	return p.SetInitImage(px.Pix, px.Width, px.Height, px.Channels, px.Stride)
}

// SetMask sets Params.Mask, the inpainting mask, to a copy of a caller's pixel buffer laid out as
// for SetInitImage: pixels whose luma is >= 128 (white) are repainted, the others kept. It is
// checked at once like SetInitImage (dg_params_set_mask); that it has the init image's size is
// checked by Generate (ErrInvalidArg).
func (p *Params) SetMask(pix []byte, width, height, channels, stride int) error {
	px := &Pixels{Pix: pix, Width: width, Height: height, Channels: channels, Stride: stride}
	if err := check(func(cp *C.dg_params_t) error { return setMask(cp, px) }); err != nil {
		return err
	}
	p.Mask = px.clone()
	return nil
}

// SetMaskFromImage sets Params.Mask to a copy of img (see PixelsFromImage; an *image.Gray is the
// natural mask), checked as by SetMask; nil clears it.
func (p *Params) SetMaskFromImage(img image.Image) error {
	if img == nil {
		p.Mask = nil
		return nil
	}
	px := PixelsFromImage(img)
	return p.SetMask(px.Pix, px.Width, px.Height, px.Channels, px.Stride)
}

// SetStrength sets Params.Strength after the library checked it (dg_params_set_strength): a
// value outside (0, 1], or NaN, is ErrInvalidArg and leaves p unchanged.
func (p *Params) SetStrength(strength float64) error {
	if err := check(func(cp *C.dg_params_t) error { return setStrength(cp, strength) }); err != nil {
		return err
	}
	p.Strength = strength
	return nil
}

// SetImageGuidanceScale sets Params.ImageGuidanceScale after the library checked it
// (dg_params_set_image_guidance_scale).
func (p *Params) SetImageGuidanceScale(scale float32) error {
	if err := check(func(cp *C.dg_params_t) error { return setImageGuidanceScale(cp, scale) }); err != nil {
		return err
	}
	p.ImageGuidanceScale = scale
	return nil
}

// SetPlan sets Params.Plan after the library parsed and checked the plan JSON
// (dg_params_set_plan; docs/editing.md): malformed JSON, an unknown field, no stage or too many
// stages is ErrInvalidArg and leaves p unchanged. "" clears the plan.
func (p *Params) SetPlan(json string) error {
	if json != "" {
		if err := check(func(cp *C.dg_params_t) error { return setPlan(cp, json) }); err != nil {
			return err
		}
	}
	p.Plan = json
	return nil
}
