/* Editing through the C API: img2img from a caller's pixel buffer, and inpainting on an inpainting
 * package with the same request plus a mask (the pixels of each must equal `dg edit`'s, and
 * `dg edit --mask`'s, for the same request, compared by the Makefile), latent-blend inpainting with
 * a grey mask buffer, a progressive plan, and every error of the editing setters.
 *
 * usage: edit MODEL_DIR INIT.rgb OUT.rgb INPAINT_MODEL_DIR MASK.rgb INPAINT_OUT.rgb
 * (INIT.rgb, MASK.rgb: 64x64 raw RGB; MODEL_DIR: models/tiny-sd; INPAINT_MODEL_DIR:
 * models/tiny-sd-inpaint) */
#include "common.h"

#include <math.h>

enum { SIZE = 64 };

static dg_params_t *edit_params(const uint8_t *rgb) {
    dg_params_t *p = NULL;
    CHECK_OK(dg_params_new(&p));
    CHECK_OK(dg_params_set_prompt(p, "a red fox"));
    CHECK_OK(dg_params_set_seed(p, 5));
    CHECK_OK(dg_params_set_steps(p, 6));
    CHECK_OK(dg_params_set_scheduler(p, "euler_a"));
    CHECK_OK(dg_params_set_strength(p, 0.5));
    CHECK_OK(dg_params_set_init_image(p, rgb, SIZE, SIZE, 3, SIZE * 3));
    return p;
}

/* Runs p (then frees it) and writes the image's packed RGB to out: the bytes the Makefile compares. */
static void generate_to_file(const dg_pipeline_t *pipe, dg_params_t *p, const char *out) {
    dg_images_t *imgs = NULL;
    CHECK_OK(dg_pipeline_generate(pipe, p, NULL, NULL, NULL, &imgs));
    dg_params_free(p);
    const dg_image_t *img = dg_images_get(imgs, 0);
    CHECK(dg_image_width(img) == SIZE && dg_image_height(img) == SIZE, "output takes the init size");
    size_t len = 0;
    uint8_t *packed = packed_rgb(img, &len);
    CHECK(packed != NULL && write_file(out, packed, len) == 0, "cannot write %s", out);
    free(packed);
    dg_images_free(imgs);
}

static void test_img2img(const dg_pipeline_t *pipe, const uint8_t *rgb, const char *out) {
    generate_to_file(pipe, edit_params(rgb), out);
}

/* The img2img request plus a mask (packed RGB, as png2rgb writes the grey PNG) on an inpainting
 * package (9-channel UNet): `dg edit --mask`'s request. */
static void test_inpaint_package(dg_runtime_t *rt, const char *model, const uint8_t *rgb,
                                 const uint8_t *mask, const char *out) {
    dg_pipeline_t *pipe = NULL;
    CHECK_OK(dg_pipeline_load(rt, model, &pipe));
    dg_params_t *p = edit_params(rgb);
    CHECK_OK(dg_params_set_mask(p, mask, SIZE, SIZE, 3, SIZE * 3));
    generate_to_file(pipe, p, out);
    dg_pipeline_free(pipe);
}

/* A grey mask (1 channel) with a padded stride: only the centre square is repainted, so the
 * result differs from plain img2img there and stays close to the source outside. */
static void test_inpaint_and_plan(const dg_pipeline_t *pipe, const uint8_t *rgb) {
    enum { STRIDE = SIZE + 7 };
    static uint8_t mask[STRIDE * SIZE];
    memset(mask, 0xAB, sizeof mask); /* padding bytes must be ignored */
    for (int y = 0; y < SIZE; y++) {
        for (int x = 0; x < SIZE; x++) {
            mask[y * STRIDE + x] = (x >= 16 && x < 48 && y >= 16 && y < 48) ? 255 : 0;
        }
    }
    dg_params_t *p = edit_params(rgb);
    CHECK_OK(dg_params_set_mask(p, mask, SIZE, SIZE, 1, STRIDE));
    dg_images_t *imgs = NULL;
    CHECK_OK(dg_pipeline_generate(pipe, p, NULL, NULL, NULL, &imgs));
    CHECK(dg_images_count(imgs) == 1, "one inpainted image");
    dg_images_free(imgs);

    /* NULL clears the mask and the init image; a plan then runs text-to-image and upscales. */
    CHECK_OK(dg_params_set_mask(p, NULL, 0, 0, 0, 0));
    CHECK_OK(dg_params_set_init_image(p, NULL, 0, 0, 0, 0));
    CHECK_OK(dg_params_set(p, "strength", "0.5"));
    CHECK_OK(dg_params_set_plan(p, "{\"stages\": [{\"width\": 64, \"height\": 64, \"steps\": 2},"
                                   " {\"width\": 96, \"height\": 96, \"steps\": 2,"
                                   " \"strength\": 0.5}]}"));
    /* The request-level strength would apply to stage 1 without an init image: refused. */
    EXPECT_ERROR(dg_pipeline_generate(pipe, p, NULL, NULL, NULL, &imgs), DG_ERROR_INVALID_ARG,
                 "strength needs an init image");
    dg_params_free(p);
    CHECK_OK(dg_params_new(&p));
    CHECK_OK(dg_params_set_prompt(p, "a red fox"));
    CHECK_OK(dg_params_set_plan(p, "{\"stages\": [{\"width\": 64, \"height\": 64, \"steps\": 2},"
                                   " {\"width\": 96, \"height\": 96, \"steps\": 2,"
                                   " \"strength\": 0.5}]}"));
    imgs = NULL;
    CHECK_OK(dg_pipeline_generate(pipe, p, NULL, NULL, NULL, &imgs));
    CHECK(dg_image_width(dg_images_get(imgs, 0)) == 96, "the plan's last stage sets the size");
    dg_images_free(imgs);
    dg_params_free(p);
}

static void test_setter_errors(const dg_pipeline_t *pipe, const uint8_t *rgb) {
    dg_params_t *p = NULL;
    CHECK_OK(dg_params_new(&p));
    EXPECT_ERROR(dg_params_set_init_image(NULL, rgb, SIZE, SIZE, 3, SIZE * 3), DG_ERROR_NULL_ARG, "p");
    EXPECT_ERROR(dg_params_set_init_image(p, rgb, SIZE, SIZE, 2, SIZE * 3), DG_ERROR_INVALID_ARG,
                 "channels must be 1, 3 or 4");
    EXPECT_ERROR(dg_params_set_init_image(p, rgb, SIZE, SIZE, 3, SIZE * 3 - 1), DG_ERROR_INVALID_ARG,
                 "stride");
    EXPECT_ERROR(dg_params_set_init_image(p, rgb, 0, SIZE, 3, SIZE * 3), DG_ERROR_INVALID_ARG,
                 "image width 0 is outside 1..=16384");
    /* Sides beyond the limit are refused before anything is read from the buffer. */
    EXPECT_ERROR(dg_params_set_init_image(p, rgb, SIZE, 100000, 3, SIZE * 3), DG_ERROR_INVALID_ARG,
                 "image height 100000 is outside 1..=16384");
    EXPECT_ERROR(dg_params_set_mask(NULL, rgb, SIZE, SIZE, 3, SIZE * 3), DG_ERROR_NULL_ARG, "p");
    EXPECT_ERROR(dg_params_set_strength(p, 0.0), DG_ERROR_INVALID_ARG, "strength must be in (0, 1]");
    EXPECT_ERROR(dg_params_set_strength(p, 1.5), DG_ERROR_INVALID_ARG, "strength must be in (0, 1]");
    EXPECT_ERROR(dg_params_set_strength(p, NAN), DG_ERROR_INVALID_ARG, "strength");
    EXPECT_ERROR(dg_params_set_image_guidance_scale(NULL, 1.5f), DG_ERROR_NULL_ARG, "p");
    EXPECT_ERROR(dg_params_set_plan(p, "{\"stages\": []}"), DG_ERROR_INVALID_ARG, "between 1 and");
    EXPECT_ERROR(dg_params_set_plan(p, "{\"stages\": [{\"width\": 64, \"height\": 64, \"x\": 1}]}"),
                 DG_ERROR_INVALID_ARG, "unknown field");
    EXPECT_ERROR(dg_params_set_plan(p, "{\"stages\xff\": []}"), DG_ERROR_INVALID_ARG, "UTF-8");
    EXPECT_ERROR(dg_params_set(p, "strength", "half"), DG_ERROR_INVALID_ARG, "half");

    /* Checked at generate time: sizes against the request, a mask without an image. */
    CHECK_OK(dg_params_set_init_image(p, rgb, SIZE, SIZE, 3, SIZE * 3));
    CHECK_OK(dg_params_set_size(p, 128, 64));
    dg_images_t *imgs = (dg_images_t *)&imgs;
    EXPECT_ERROR(dg_pipeline_generate(pipe, p, NULL, NULL, NULL, &imgs), DG_ERROR_INVALID_ARG,
                 "init image is 64x64 but the request is 128x64");
    CHECK(imgs == (dg_images_t *)&imgs, "out-param untouched on error");
    CHECK_OK(dg_params_set_init_image(p, NULL, 0, 0, 0, 0));
    CHECK_OK(dg_params_set_mask(p, rgb, SIZE, SIZE, 3, SIZE * 3));
    EXPECT_ERROR(dg_pipeline_generate(pipe, p, NULL, NULL, NULL, &imgs), DG_ERROR_INVALID_ARG,
                 "a mask needs the image");
    dg_params_free(p);
}

/* A 64x64 raw RGB file, or NULL after saying why. */
static uint8_t *read_rgb(const char *path) {
    size_t len = 0;
    uint8_t *rgb = read_file(path, &len);
    if (rgb == NULL || len != SIZE * SIZE * 3) {
        fprintf(stderr, "edit: %s must hold 64x64 RGB pixels\n", path);
        free(rgb);
        return NULL;
    }
    return rgb;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: edit MODEL_DIR INIT.rgb OUT.rgb INPAINT_MODEL_DIR MASK.rgb INPAINT_OUT.rgb\n");
        return 2;
    }
    uint8_t *rgb = read_rgb(argv[2]), *mask = read_rgb(argv[5]);
    if (rgb == NULL || mask == NULL) {
        free(rgb);
        free(mask);
        return 2;
    }
    dg_runtime_t *rt = test_runtime();
    dg_pipeline_t *pipe = NULL;
    CHECK_OK(dg_pipeline_load(rt, argv[1], &pipe));
    test_img2img(pipe, rgb, argv[3]);
    test_inpaint_and_plan(pipe, rgb);
    test_setter_errors(pipe, rgb);
    dg_pipeline_free(pipe);
    test_inpaint_package(rt, argv[4], rgb, mask, argv[6]);
    dg_runtime_free(rt);
    free(rgb);
    free(mask);
    return test_result("edit");
}
