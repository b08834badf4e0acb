package diffgentor_test

import (
	"bytes"
	"context"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"testing"

	diffgentor "github.com/diffgentor/diffgentor/bindings/go"
)

const editSize = 64

// editImage is tests/golden/edit/image_64x64.png decoded by image/png (8-bit RGB: an opaque
// *image.RGBA), the init image `make c-test` gives tests/c/edit.c and `dg edit`.
func editImage(t *testing.T) image.Image {
	t.Helper()
	return goldenEditPNG(t, "image_64x64.png")
}

// editMask is tests/golden/edit/mask_64x64.png decoded by image/png (8-bit grey: an
// *image.Gray), the mask `make c-test` gives tests/c/edit.c and `dg edit --mask`.
func editMask(t *testing.T) image.Image {
	t.Helper()
	return goldenEditPNG(t, "mask_64x64.png")
}

// goldenEditPNG decodes a 64x64 PNG of tests/golden/edit/.
func goldenEditPNG(t *testing.T, name string) image.Image {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot, "tests", "golden", "edit", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	if img.Bounds() != image.Rect(0, 0, editSize, editSize) {
		t.Fatalf("%s is %v, want 64x64", name, img.Bounds())
	}
	return img
}

// packedRGB is img as width*height*3 bytes.
func packedRGB(img image.Image) []byte {
	b := img.Bounds()
	out := make([]byte, 0, 3*b.Dx()*b.Dy())
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			c := color.NRGBAModel.Convert(img.At(x, y)).(color.NRGBA)
			out = append(out, c.R, c.G, c.B)
		}
	}
	return out
}

// editParams is tests/c/edit.c's request (and the Makefile's `dg edit`): img2img at strength 0.5.
func editParams(init *diffgentor.Pixels) diffgentor.Params {
	return diffgentor.Params{Prompt: "a red fox", Seed: diffgentor.Uint64(5), Steps: 6, Scheduler: "euler_a",
		Strength: 0.5, InitImage: init}
}

// The img2img request of tests/c/edit.c; its pixels go to DG_EDIT_RGB, which test.sh compares
// with `dg edit`'s for the same request. The init image as the decoded *image.RGBA (4 channels),
// as a packed RGB buffer and as a converted *image.NRGBA64 gives the same bytes.
func TestImg2Img(t *testing.T) {
	p := loadPipeline(t, "tiny-sd")
	src := editImage(t)
	res, err := p.GenerateResult(context.Background(), editParams(diffgentor.PixelsFromImage(src)))
	if err != nil {
		t.Fatal(err)
	}
	img := res.Images[0]
	if img.Width() != editSize || img.Height() != editSize || res.Seed != 5 {
		t.Fatalf("%dx%d seed %d; want 64x64 (the init image's size), seed 5", img.Width(), img.Height(), res.Seed)
	}
	writeEnvRGB(t, "DG_EDIT_RGB", img)
	if bytes.Equal(img.RGB(), packedRGB(src)) {
		t.Error("img2img returned the init image unchanged")
	}

	// The same pixels as a packed RGB buffer through the setter (copied: changing the buffer
	// afterwards changes nothing).
	rgb := packedRGB(src)
	params := editParams(nil)
	if err := params.SetInitImage(rgb, editSize, editSize, 3, 0); err != nil {
		t.Fatal(err)
	}
	for i := range rgb {
		rgb[i] = 0
	}
	if again := generateOne(t, p, params); !bytes.Equal(again.RGB(), img.RGB()) {
		t.Error("the init image as packed RGB gave different pixels than as *image.RGBA")
	}
	// Through SetInitImageFromImage with a non-fast-path image type (converted to RGB).
	params = editParams(nil)
	if err := params.SetInitImageFromImage(toNRGBA64(src)); err != nil {
		t.Fatal(err)
	}
	if again := generateOne(t, p, params); !bytes.Equal(again.RGB(), img.RGB()) {
		t.Error("the init image as *image.NRGBA64 gave different pixels")
	}
	// A different strength changes the result; the default (0.8) too.
	params = editParams(diffgentor.PixelsFromImage(src))
	if err := params.SetStrength(0.9); err != nil {
		t.Fatal(err)
	}
	if other := generateOne(t, p, params); bytes.Equal(other.RGB(), img.RGB()) {
		t.Error("strength 0.9 gave the same pixels as 0.5")
	}
	if err := params.SetInitImageFromImage(nil); err != nil || params.InitImage != nil {
		t.Errorf("SetInitImageFromImage(nil): %v, InitImage %v", err, params.InitImage)
	}
}

func toNRGBA64(img image.Image) *image.NRGBA64 {
	b := img.Bounds()
	out := image.NewNRGBA64(b)
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			out.Set(x, y, img.At(x, y))
		}
	}
	return out
}

// centreMask is a grey mask whose centre square (16..48) is white, in a buffer with a padded
// stride whose padding bytes (0xAB) must be ignored.
func centreMask() (pix []byte, stride int) {
	stride = editSize + 7
	pix = bytes.Repeat([]byte{0xAB}, stride*editSize)
	for y := 0; y < editSize; y++ {
		for x := 0; x < editSize; x++ {
			v := byte(0)
			if x >= 16 && x < 48 && y >= 16 && y < 48 {
				v = 255
			}
			pix[y*stride+x] = v
		}
	}
	return pix, stride
}

// Inpainting with a grey mask: the result differs from plain img2img, and the same mask as an
// *image.Gray (no padding) gives the same bytes.
func TestInpaint(t *testing.T) {
	p := loadPipeline(t, "tiny-sd")
	src := diffgentor.PixelsFromImage(editImage(t))
	plain := generateOne(t, p, editParams(src))

	mask, stride := centreMask()
	params := editParams(src)
	if err := params.SetMask(mask, editSize, editSize, 1, stride); err != nil {
		t.Fatal(err)
	}
	inpainted := generateOne(t, p, params)
	if inpainted.Width() != editSize || inpainted.Height() != editSize {
		t.Fatalf("inpainted image is %dx%d", inpainted.Width(), inpainted.Height())
	}
	if bytes.Equal(inpainted.RGB(), plain.RGB()) {
		t.Error("inpainting gave the same pixels as img2img")
	}

	gray := image.NewGray(image.Rect(0, 0, editSize, editSize))
	for y := 0; y < editSize; y++ {
		copy(gray.Pix[y*gray.Stride:], mask[y*stride:y*stride+editSize])
	}
	params = editParams(src)
	params.Mask = diffgentor.PixelsFromImage(gray)
	if again := generateOne(t, p, params); !bytes.Equal(again.RGB(), inpainted.RGB()) {
		t.Error("the mask as *image.Gray gave different pixels than the padded buffer")
	}
	params = editParams(src)
	if err := params.SetMaskFromImage(gray); err != nil {
		t.Fatal(err)
	}
	if again := generateOne(t, p, params); !bytes.Equal(again.RGB(), inpainted.RGB()) {
		t.Error("SetMaskFromImage gave different pixels than the padded buffer")
	}
}

// The img2img request of tests/c/edit.c plus tests/golden/edit/mask_64x64.png as an *image.Gray on
// the inpainting package (9-channel UNet); its pixels go to DG_INPAINT_RGB, which test.sh compares
// with `dg edit --mask`'s for the same request.
func TestInpaintPackage(t *testing.T) {
	p := loadPipeline(t, "tiny-sd-inpaint")
	mask := editMask(t)
	if _, ok := mask.(*image.Gray); !ok {
		t.Fatalf("mask decodes to %T, want *image.Gray", mask)
	}
	params := editParams(diffgentor.PixelsFromImage(editImage(t)))
	params.Mask = diffgentor.PixelsFromImage(mask)
	img := generateOne(t, p, params)
	if img.Width() != editSize || img.Height() != editSize {
		t.Fatalf("inpainted image is %dx%d, want 64x64", img.Width(), img.Height())
	}
	writeEnvRGB(t, "DG_INPAINT_RGB", img)
}

const testPlan = `{"stages": [{"width": 64, "height": 64, "steps": 2},
	{"width": 96, "height": 96, "steps": 2, "strength": 0.5}]}`

// A two-stage plan: text-to-image at 64x64, then img2img upscaled to 96x96; progress reports
// the stages.
func TestPlan(t *testing.T) {
	p := loadPipeline(t, "tiny-sd")
	params := diffgentor.Params{Prompt: "a red fox", Seed: diffgentor.Uint64(1)}
	if err := params.SetPlan(testPlan); err != nil {
		t.Fatal(err)
	}
	stages := map[int]int{}
	params.OnProgress = func(pi diffgentor.ProgressInfo) bool {
		if pi.Stages != 2 {
			t.Errorf("progress reports %d stages, want 2", pi.Stages)
		}
		stages[pi.Stage]++
		return true
	}
	img := generateOne(t, p, params)
	if img.Width() != 96 || img.Height() != 96 {
		t.Errorf("plan gave %dx%d, want 96x96 (its last stage)", img.Width(), img.Height())
	}
	if stages[1] == 0 || stages[2] == 0 {
		t.Errorf("progress by stage: %v, want both stages", stages)
	}
	// The same plan through the field gives the same pixels.
	again := generateOne(t, p, diffgentor.Params{Prompt: "a red fox", Seed: diffgentor.Uint64(1), Plan: testPlan})
	if !bytes.Equal(again.RGB(), img.RGB()) {
		t.Error("Params.Plan and SetPlan gave different pixels")
	}
	// A request-level strength would apply to stage 1, which has no init image: refused.
	_, err := p.Generate(context.Background(), diffgentor.Params{Prompt: "a red fox", Plan: testPlan, Strength: 0.5})
	wantCode(t, err, diffgentor.ErrInvalidArg, "strength needs an init image")
	if err := params.SetPlan(""); err != nil || params.Plan != "" {
		t.Errorf("SetPlan(\"\"): %v, Plan %q", err, params.Plan)
	}
}

// InstructPix2Pix's image guidance scale is accepted (the tiny-sd package is not an
// InstructPix2Pix one, which leaves it unused).
func TestImageGuidanceScale(t *testing.T) {
	params := diffgentor.Params{}
	if err := params.SetImageGuidanceScale(1.2); err != nil || params.ImageGuidanceScale != 1.2 {
		t.Fatalf("SetImageGuidanceScale(1.2): %v, field %v", err, params.ImageGuidanceScale)
	}
	p := loadPipeline(t, "tiny-sd")
	params = editParams(diffgentor.PixelsFromImage(editImage(t)))
	params.Steps = 2
	params.ImageGuidanceScale = 2
	generateOne(t, p, params)
}

func TestEditErrors(t *testing.T) {
	ctx := context.Background()
	rgb := packedRGB(editImage(t))
	var params diffgentor.Params

	// Setters check at once; a refused value leaves the params unchanged.
	for _, s := range []float64{0, 1.5, -0.5, math.NaN()} {
		err := params.SetStrength(s)
		wantCode(t, err, diffgentor.ErrInvalidArg, "strength")
		if params.Strength != 0 {
			t.Errorf("SetStrength(%v) failed but set Strength to %v", s, params.Strength)
		}
	}
	wantCode(t, params.SetStrength(0), diffgentor.ErrInvalidArg, "strength must be in (0, 1]")
	wantCode(t, params.SetStrength(1.5), diffgentor.ErrInvalidArg, "strength must be in (0, 1]")
	if err := params.SetStrength(1); err != nil || params.Strength != 1 {
		t.Errorf("SetStrength(1): %v", err)
	}
	wantCode(t, params.SetPlan(`{"stages": []}`), diffgentor.ErrInvalidArg, "between 1 and")
	wantCode(t, params.SetPlan(`{"stages": [{"width": 64, "height": 64, "x": 1}]}`), diffgentor.ErrInvalidArg, "unknown field")
	wantCode(t, params.SetPlan("not json"), diffgentor.ErrInvalidArg)
	wantCode(t, params.SetPlan("{\"stages\xff\": []}"), diffgentor.ErrInvalidArg, "UTF-8")
	wantCode(t, params.SetPlan("{\x00}"), diffgentor.ErrInvalidArg, "plan", "NUL")
	if params.Plan != "" {
		t.Errorf("a refused plan was kept: %q", params.Plan)
	}
	wantCode(t, params.SetInitImage(rgb, editSize, editSize, 2, editSize*3), diffgentor.ErrInvalidArg, "channels must be 1, 3 or 4")
	wantCode(t, params.SetInitImage(rgb, editSize, editSize, 3, editSize*3-1), diffgentor.ErrInvalidArg, "stride")
	wantCode(t, params.SetInitImage(rgb, 0, editSize, 3, editSize*3), diffgentor.ErrInvalidArg, "image width 0 is outside 1..=16384")
	wantCode(t, params.SetInitImage(rgb[:100], editSize, editSize, 3, 0), diffgentor.ErrInvalidArg, "init image buffer holds 100 bytes")
	wantCode(t, params.SetInitImage(nil, editSize, editSize, 3, 0), diffgentor.ErrInvalidArg, "init image buffer holds 0 bytes")
	wantCode(t, params.SetInitImage(rgb, -1, editSize, 3, 0), diffgentor.ErrInvalidArg, "init image width -1 is out of range")
	wantCode(t, params.SetInitImage(rgb, editSize, 100000, 3, editSize*3), diffgentor.ErrInvalidArg, "init image buffer")
	wantCode(t, params.SetMask(rgb, editSize, editSize, 2, editSize*3), diffgentor.ErrInvalidArg, "channels must be 1, 3 or 4")
	wantCode(t, params.SetMask(rgb[:10], editSize, editSize, 1, 0), diffgentor.ErrInvalidArg, "mask buffer holds 10 bytes")
	if params.InitImage != nil || params.Mask != nil {
		t.Error("a refused image was kept")
	}

	// Fields are checked by Generate, with the same errors.
	p := loadPipeline(t, "tiny-sd")
	init := &diffgentor.Pixels{Pix: rgb, Width: editSize, Height: editSize, Channels: 3}
	for _, s := range []float64{1.5, -1} {
		pr := editParams(init)
		pr.Strength = s
		_, err := p.Generate(ctx, pr)
		wantCode(t, err, diffgentor.ErrInvalidArg, "strength must be in (0, 1]")
	}
	_, err := p.Generate(ctx, diffgentor.Params{Steps: 1, Plan: "{bad json"})
	wantCode(t, err, diffgentor.ErrInvalidArg)
	_, err = p.Generate(ctx, diffgentor.Params{Steps: 1, InitImage: &diffgentor.Pixels{Pix: rgb[:5], Width: editSize, Height: editSize, Channels: 3}})
	wantCode(t, err, diffgentor.ErrInvalidArg, "init image buffer holds 5 bytes")

	// A mask of the wrong size, a size other than the init image's, a mask without an image.
	pr := editParams(init)
	small := image.NewGray(image.Rect(0, 0, 32, 32))
	pr.Mask = diffgentor.PixelsFromImage(small)
	_, err = p.Generate(ctx, pr)
	wantCode(t, err, diffgentor.ErrInvalidArg, "mask")
	pr = editParams(init)
	pr.Width, pr.Height = 128, 64
	_, err = p.Generate(ctx, pr)
	wantCode(t, err, diffgentor.ErrInvalidArg, "init image is 64x64 but the request is 128x64")
	mask, stride := centreMask()
	_, err = p.Generate(ctx, diffgentor.Params{Steps: 1, Mask: &diffgentor.Pixels{Pix: mask, Width: editSize, Height: editSize, Channels: 1, Stride: stride}})
	wantCode(t, err, diffgentor.ErrInvalidArg, "a mask needs the image")
}
