/* Every error path of the C API: NULL handles, NULL out-params (left untouched), NULL strings,
 * invalid UTF-8, unknown keys, unparsable values, values the model rejects at generate time,
 * a missing model, an unavailable execution provider, bad JPEG quality, getters and _free on NULL.
 *
 * usage: errors MODEL_DIR SCRATCH_DIR   (MODEL_DIR: models/tiny-sd; SCRATCH_DIR must exist) */
#include "common.h"

#include <math.h>
#include <stdint.h>
#include <sys/stat.h>

/* Out-params are pre-set to this address; an error must leave them exactly so. */
static char sentinel_storage;
#define SENTINEL ((void *)&sentinel_storage)
#define CHECK_UNTOUCHED(ptr) CHECK((void *)(ptr) == SENTINEL, "out-param %s was written on error", #ptr)

static const char BAD_UTF8[] = "a red \xff\xfe fox"; /* 0xff never occurs in UTF-8 */

static const char *model_dir;
static const char *scratch_dir;

static void test_error_accessors(void) {
    CHECK(dg_error_code(NULL) == 0, "dg_error_code(NULL) = %d, expected 0", (int)dg_error_code(NULL));
    const char *m = dg_error_message(NULL);
    CHECK(m != NULL && m[0] == '\0', "dg_error_message(NULL) should be \"\"");
    dg_error_free(NULL);

    /* Two errors alive at once are independent objects; freeing one keeps the other. */
    dg_error_t *a = dg_params_new(NULL);
    dg_error_t *b = dg_runtime_options_new(NULL);
    CHECK(a != NULL && b != NULL && a != b, "two failing calls should return two distinct errors");
    if (a != NULL && b != NULL) {
        dg_error_free(a);
        a = NULL;
        CHECK(dg_error_code(b) == DG_ERROR_NULL_ARG, "second error changed after freeing the first");
        CHECK(dg_error_message(b)[0] != '\0', "second error's message is empty");
    }
    dg_error_free(a);
    dg_error_free(b);
}

static void test_free_null(void) {
    dg_error_free(NULL);
    dg_runtime_options_free(NULL);
    dg_runtime_free(NULL);
    dg_pipeline_free(NULL);
    dg_params_free(NULL);
    dg_cancel_token_free(NULL);
    dg_cancel_token_cancel(NULL);
    dg_images_free(NULL);
    dg_buffer_free(NULL);
}

static void test_getters_on_null(void) {
    CHECK(dg_images_count(NULL) == 0, "dg_images_count(NULL) != 0");
    CHECK(dg_images_get(NULL, 0) == NULL, "dg_images_get(NULL, 0) != NULL");
    CHECK(dg_images_seed(NULL) == 0, "dg_images_seed(NULL) != 0");
    CHECK(dg_image_width(NULL) == 0, "dg_image_width(NULL) != 0");
    CHECK(dg_image_height(NULL) == 0, "dg_image_height(NULL) != 0");
    CHECK(dg_image_channels(NULL) == 0, "dg_image_channels(NULL) != 0");
    CHECK(dg_image_stride(NULL) == 0, "dg_image_stride(NULL) != 0");
    CHECK(dg_image_pixels(NULL) == NULL, "dg_image_pixels(NULL) != NULL");
    CHECK(dg_buffer_data(NULL) == NULL, "dg_buffer_data(NULL) != NULL");
    CHECK(dg_buffer_len(NULL) == 0, "dg_buffer_len(NULL) != 0");
}

static void test_runtime_options(void) {
    dg_runtime_options_t *opts = SENTINEL;
    EXPECT_ERROR(dg_runtime_options_new(NULL), DG_ERROR_NULL_ARG, "out");

    EXPECT_ERROR(dg_runtime_options_set_ort_library(NULL, "libonnxruntime.so"), DG_ERROR_NULL_ARG, "opts");
    EXPECT_ERROR(dg_runtime_options_set_execution_provider(NULL, "cpu"), DG_ERROR_NULL_ARG, "opts");
    EXPECT_ERROR(dg_runtime_options_set_allow_cpu_fallback(NULL, true), DG_ERROR_NULL_ARG, "opts");
    EXPECT_ERROR(dg_runtime_options_set_intra_threads(NULL, 1), DG_ERROR_NULL_ARG, "opts");
    EXPECT_ERROR(dg_runtime_options_set_tensorrt_fp16(NULL, true), DG_ERROR_NULL_ARG, "opts");
    EXPECT_ERROR(dg_runtime_options_set_tensorrt_engine_cache(NULL, "/tmp"), DG_ERROR_NULL_ARG, "opts");

    CHECK_OK(dg_runtime_options_new(&opts));
    CHECK(opts != NULL && opts != SENTINEL, "dg_runtime_options_new did not write *out");
    EXPECT_ERROR(dg_runtime_options_set_ort_library(opts, NULL), DG_ERROR_NULL_ARG, "path");
    EXPECT_ERROR(dg_runtime_options_set_execution_provider(opts, NULL), DG_ERROR_NULL_ARG, "ep");
    EXPECT_ERROR(dg_runtime_options_set_execution_provider(opts, BAD_UTF8), DG_ERROR_INVALID_ARG, "ep");
    EXPECT_ERROR(dg_runtime_options_set_tensorrt_engine_cache(opts, NULL), DG_ERROR_NULL_ARG, "dir");

    /* An unknown provider name is rejected when set or at the latest when the runtime is made. */
    dg_error_t *err = dg_runtime_options_set_execution_provider(opts, "no_such_ep");
    if (err == NULL) {
        dg_runtime_t *rt = SENTINEL;
        err = dg_runtime_new(opts, &rt);
        CHECK_UNTOUCHED(rt);
    }
    EXPECT_ERROR(err, DG_ERROR_INVALID_ARG, "no_such_ep");

    /* The setters that must succeed. */
    CHECK_OK(dg_runtime_options_set_allow_cpu_fallback(opts, false));
    CHECK_OK(dg_runtime_options_set_intra_threads(opts, 0));
    CHECK_OK(dg_runtime_options_set_tensorrt_fp16(opts, true));
    CHECK_OK(dg_runtime_options_set_tensorrt_engine_cache(opts, scratch_dir));

    /* This machine's ONNX Runtime is CPU-only: CUDA cannot register, no fallback was allowed. */
    CHECK_OK(dg_runtime_options_set_execution_provider(opts, "cuda"));
    dg_runtime_t *rt = SENTINEL;
    EXPECT_ERROR(dg_runtime_new(opts, &rt), DG_ERROR_EP_UNAVAILABLE, "cuda");
    CHECK_UNTOUCHED(rt);
    CHECK_OK(dg_runtime_options_set_execution_provider(opts, "cuda:1"));
    EXPECT_ERROR(dg_runtime_new(opts, &rt), DG_ERROR_EP_UNAVAILABLE, "cuda");
    CHECK_UNTOUCHED(rt);

    /* With fallback allowed, the same options give a working (CPU) runtime. */
    CHECK_OK(dg_runtime_options_set_allow_cpu_fallback(opts, true));
    CHECK_OK(dg_runtime_new(opts, &rt));
    CHECK(rt != NULL && rt != SENTINEL, "dg_runtime_new did not write *out");
    dg_runtime_free(rt);

    EXPECT_ERROR(dg_runtime_new(opts, NULL), DG_ERROR_NULL_ARG, "out");
    EXPECT_ERROR(dg_runtime_new(NULL, NULL), DG_ERROR_NULL_ARG, "out");
    dg_runtime_options_free(opts);
}

static void test_pipeline_load(const dg_runtime_t *rt) {
    dg_pipeline_t *pipe = SENTINEL;
    EXPECT_ERROR(dg_pipeline_load(NULL, model_dir, &pipe), DG_ERROR_NULL_ARG, "rt");
    CHECK_UNTOUCHED(pipe);
    EXPECT_ERROR(dg_pipeline_load(rt, NULL, &pipe), DG_ERROR_NULL_ARG, "model_dir");
    CHECK_UNTOUCHED(pipe);
    EXPECT_ERROR(dg_pipeline_load(rt, model_dir, NULL), DG_ERROR_NULL_ARG, "out");
    EXPECT_ERROR(dg_pipeline_load(rt, "models/no-such-model", &pipe), DG_ERROR_MODEL, "no-such-model");
    CHECK_UNTOUCHED(pipe);
    /* A directory that exists but holds no package: the error names the missing model_index.json. */
    EXPECT_ERROR(dg_pipeline_load(rt, scratch_dir, &pipe), DG_ERROR_MODEL, "model_index.json");
    CHECK_UNTOUCHED(pipe);
}

static void test_params_setters(void) {
    dg_params_t *p = SENTINEL;
    EXPECT_ERROR(dg_params_new(NULL), DG_ERROR_NULL_ARG, "out");

    EXPECT_ERROR(dg_params_set_prompt(NULL, "a red fox"), DG_ERROR_NULL_ARG, NULL);
    EXPECT_ERROR(dg_params_set_negative_prompt(NULL, "blurry"), DG_ERROR_NULL_ARG, NULL);
    EXPECT_ERROR(dg_params_set_steps(NULL, 3), DG_ERROR_NULL_ARG, NULL);
    EXPECT_ERROR(dg_params_set_guidance_scale(NULL, 7.5f), DG_ERROR_NULL_ARG, NULL);
    EXPECT_ERROR(dg_params_set_size(NULL, 64, 64), DG_ERROR_NULL_ARG, NULL);
    EXPECT_ERROR(dg_params_set_seed(NULL, 42), DG_ERROR_NULL_ARG, NULL);
    EXPECT_ERROR(dg_params_set_num_images(NULL, 1), DG_ERROR_NULL_ARG, NULL);
    EXPECT_ERROR(dg_params_set_scheduler(NULL, "euler"), DG_ERROR_NULL_ARG, NULL);
    EXPECT_ERROR(dg_params_set(NULL, "steps", "3"), DG_ERROR_NULL_ARG, NULL);

    CHECK_OK(dg_params_new(&p));
    CHECK(p != NULL && p != SENTINEL, "dg_params_new did not write *out");

    EXPECT_ERROR(dg_params_set_prompt(p, NULL), DG_ERROR_NULL_ARG, "prompt");
    EXPECT_ERROR(dg_params_set_prompt(p, BAD_UTF8), DG_ERROR_INVALID_ARG, "prompt");
    EXPECT_ERROR(dg_params_set_negative_prompt(p, BAD_UTF8), DG_ERROR_INVALID_ARG, "negative_prompt");
    CHECK_OK(dg_params_set_negative_prompt(p, NULL)); /* NULL clears it */
    EXPECT_ERROR(dg_params_set_scheduler(p, NULL), DG_ERROR_NULL_ARG, "name");
    EXPECT_ERROR(dg_params_set_scheduler(p, BAD_UTF8), DG_ERROR_INVALID_ARG, "name");

    EXPECT_ERROR(dg_params_set(p, NULL, "3"), DG_ERROR_NULL_ARG, "key");
    EXPECT_ERROR(dg_params_set(p, "steps", NULL), DG_ERROR_NULL_ARG, "value");
    EXPECT_ERROR(dg_params_set(p, BAD_UTF8, "3"), DG_ERROR_INVALID_ARG, "key");
    EXPECT_ERROR(dg_params_set(p, "prompt", BAD_UTF8), DG_ERROR_INVALID_ARG, "value");
    EXPECT_ERROR(dg_params_set(p, "no_such_key", "1"), DG_ERROR_INVALID_ARG, "no_such_key");
    EXPECT_ERROR(dg_params_set(p, "steps", "many"), DG_ERROR_INVALID_ARG, "many");
    EXPECT_ERROR(dg_params_set(p, "steps", "many"), DG_ERROR_INVALID_ARG, "steps");
    EXPECT_ERROR(dg_params_set(p, "width", "-8"), DG_ERROR_INVALID_ARG, "width");
    EXPECT_ERROR(dg_params_set(p, "seed", "0x2a!"), DG_ERROR_INVALID_ARG, "seed");
    EXPECT_ERROR(dg_params_set(p, "guidance_scale", "high"), DG_ERROR_INVALID_ARG, "guidance_scale");
    EXPECT_ERROR(dg_params_set(p, "rng", "dice"), DG_ERROR_INVALID_ARG, "dice");

    /* Valid strings, including non-ASCII UTF-8, are accepted. */
    CHECK_OK(dg_params_set_prompt(p, "un renard roux, \xe7\x8b\x90")); /* "…, 狐" */
    CHECK_OK(dg_params_set(p, "negative_prompt", "blurry"));
    CHECK_OK(dg_params_set(p, "guidance_scale", "7.5"));
    CHECK_OK(dg_params_set(p, "rng", "fast"));
    CHECK_OK(dg_params_set(p, "eta", "0"));
    CHECK_OK(dg_params_set(p, "scheduler.timestep_spacing", "trailing"));
    dg_params_free(p);
}

/* Params for a cheap 1-step request on the test model. */
static dg_params_t *small_params(void) {
    dg_params_t *p = NULL;
    CHECK_OK(dg_params_new(&p));
    CHECK_OK(dg_params_set_prompt(p, "a red fox"));
    CHECK_OK(dg_params_set_steps(p, 1));
    CHECK_OK(dg_params_set_seed(p, 1));
    return p;
}

/* A value the setter may reject at once or the pipeline at generate time: either way INVALID_ARG
 * naming the value's key, and no images. */
static void expect_invalid_now_or_at_generate(const char *file, int line, dg_error_t *set_err,
                                              const dg_pipeline_t *pipe, dg_params_t *p,
                                              const char *needle, const char *what) {
    if (set_err == NULL) {
        dg_images_t *imgs = SENTINEL;
        set_err = dg_pipeline_generate(pipe, p, NULL, NULL, NULL, &imgs);
        if ((void *)imgs != SENTINEL) {
            fprintf(stderr, "%s:%d: FAIL: %s: generate wrote *out on error\n", file, line, what);
            dg_test_failures++;
        }
    }
    expect_error_at(file, line, set_err, DG_ERROR_INVALID_ARG, needle, what);
}
#define EXPECT_INVALID_NOW_OR_AT_GENERATE(call, pipe, p, needle) \
    expect_invalid_now_or_at_generate(__FILE__, __LINE__, (call), (pipe), (p), (needle), #call)

static void test_generate_errors(const dg_pipeline_t *pipe) {
    dg_images_t *imgs = SENTINEL;
    dg_params_t *p = small_params();

    EXPECT_ERROR(dg_pipeline_generate(NULL, p, NULL, NULL, NULL, &imgs), DG_ERROR_NULL_ARG, NULL);
    CHECK_UNTOUCHED(imgs);
    EXPECT_ERROR(dg_pipeline_generate(pipe, NULL, NULL, NULL, NULL, &imgs), DG_ERROR_NULL_ARG, "params");
    CHECK_UNTOUCHED(imgs);
    EXPECT_ERROR(dg_pipeline_generate(pipe, p, NULL, NULL, NULL, NULL), DG_ERROR_NULL_ARG, "out");

    /* Sizes the UNet cannot run (tiny-sd needs multiples of 16: VAE factor 8 x 2 for its two
     * down blocks) fail at generate time. */
    CHECK_OK(dg_params_set_size(p, 60, 64));
    EXPECT_ERROR(dg_pipeline_generate(pipe, p, NULL, NULL, NULL, &imgs), DG_ERROR_INVALID_ARG, "width 60");
    CHECK_UNTOUCHED(imgs);
    CHECK_OK(dg_params_set_size(p, 64, 12));
    EXPECT_ERROR(dg_pipeline_generate(pipe, p, NULL, NULL, NULL, &imgs), DG_ERROR_INVALID_ARG, "height 12");
    CHECK_UNTOUCHED(imgs);
    CHECK_OK(dg_params_set(p, "width", "0"));
    CHECK_OK(dg_params_set(p, "height", "64"));
    EXPECT_ERROR(dg_pipeline_generate(pipe, p, NULL, NULL, NULL, &imgs), DG_ERROR_INVALID_ARG, "width 0");
    CHECK_UNTOUCHED(imgs);
    dg_params_free(p);

    p = small_params();
    EXPECT_INVALID_NOW_OR_AT_GENERATE(dg_params_set_steps(p, 0), pipe, p, "steps");
    dg_params_free(p);

    p = small_params();
    EXPECT_INVALID_NOW_OR_AT_GENERATE(dg_params_set(p, "steps", "0"), pipe, p, "steps");
    dg_params_free(p);

    p = small_params();
    EXPECT_INVALID_NOW_OR_AT_GENERATE(dg_params_set_num_images(p, 0), pipe, p, "num_images");
    dg_params_free(p);

    p = small_params();
    EXPECT_INVALID_NOW_OR_AT_GENERATE(dg_params_set_guidance_scale(p, (float)NAN), pipe, p, "guidance_scale");
    dg_params_free(p);

    p = small_params();
    EXPECT_INVALID_NOW_OR_AT_GENERATE(dg_params_set(p, "eta", "-1"), pipe, p, "eta");
    dg_params_free(p);

    p = small_params();
    EXPECT_INVALID_NOW_OR_AT_GENERATE(dg_params_set_scheduler(p, "no_such_scheduler"), pipe, p,
                                      "no_such_scheduler");
    dg_params_free(p);
}

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static void test_images(const dg_pipeline_t *pipe) {
    dg_params_t *p = small_params();
    dg_images_t *imgs = NULL;
    CHECK_OK(dg_pipeline_generate(pipe, p, NULL, NULL, NULL, &imgs));
    dg_params_free(p);
    CHECK(dg_images_count(imgs) == 1, "expected 1 image, got %zu", dg_images_count(imgs));
    CHECK(dg_images_get(imgs, 1) == NULL, "dg_images_get out of range should be NULL");
    CHECK(dg_images_get(imgs, SIZE_MAX) == NULL, "dg_images_get(SIZE_MAX) should be NULL");
    const dg_image_t *img = dg_images_get(imgs, 0);
    CHECK(img != NULL, "dg_images_get(imgs, 0) is NULL");
    if (img == NULL) {
        dg_images_free(imgs);
        return;
    }

    char path[4096];
    snprintf(path, sizeof path, "%s/errors-never-written.jpg", scratch_dir);
    EXPECT_ERROR(dg_image_write_png(NULL, path), DG_ERROR_NULL_ARG, "img");
    EXPECT_ERROR(dg_image_write_png(img, NULL), DG_ERROR_NULL_ARG, "path");
    EXPECT_ERROR(dg_image_write_jpeg(NULL, path, 90), DG_ERROR_NULL_ARG, "img");
    EXPECT_ERROR(dg_image_write_jpeg(img, NULL, 90), DG_ERROR_NULL_ARG, "path");
    EXPECT_ERROR(dg_image_write_jpeg(img, path, 0), DG_ERROR_INVALID_ARG, "quality");
    EXPECT_ERROR(dg_image_write_jpeg(img, path, 101), DG_ERROR_INVALID_ARG, "quality");
    CHECK(!file_exists(path), "a rejected JPEG write created %s", path);
    /* /dev/null is a file, so nothing can be created under it. */
    EXPECT_ERROR(dg_image_write_png(img, "/dev/null/x.png"), DG_ERROR_IO, "/dev/null");
    EXPECT_ERROR(dg_image_write_jpeg(img, "/dev/null/x.jpg", 90), DG_ERROR_IO, "/dev/null");

    dg_buffer_t *buf = SENTINEL;
    EXPECT_ERROR(dg_image_encode_png(NULL, &buf), DG_ERROR_NULL_ARG, "img");
    CHECK_UNTOUCHED(buf);
    EXPECT_ERROR(dg_image_encode_png(img, NULL), DG_ERROR_NULL_ARG, "out");
    EXPECT_ERROR(dg_image_encode_jpeg(NULL, 90, &buf), DG_ERROR_NULL_ARG, "img");
    CHECK_UNTOUCHED(buf);
    EXPECT_ERROR(dg_image_encode_jpeg(img, 90, NULL), DG_ERROR_NULL_ARG, "out");
    EXPECT_ERROR(dg_image_encode_jpeg(img, 0, &buf), DG_ERROR_INVALID_ARG, "quality");
    CHECK_UNTOUCHED(buf);
    EXPECT_ERROR(dg_image_encode_jpeg(img, 101, &buf), DG_ERROR_INVALID_ARG, "quality");
    CHECK_UNTOUCHED(buf);

    /* The success paths the errors above guard. */
    CHECK_OK(dg_image_encode_png(img, &buf));
    CHECK(dg_buffer_len(buf) > 8 && memcmp(dg_buffer_data(buf), "\x89PNG\r\n\x1a\n", 8) == 0,
          "dg_image_encode_png output is not a PNG");
    dg_buffer_free(buf);
    CHECK_OK(dg_image_encode_jpeg(img, 1, &buf));
    CHECK(dg_buffer_len(buf) > 3 && memcmp(dg_buffer_data(buf), "\xff\xd8\xff", 3) == 0,
          "dg_image_encode_jpeg output is not a JPEG");
    dg_buffer_free(buf);
    CHECK_OK(dg_image_encode_jpeg(img, 100, &buf));
    dg_buffer_free(buf);
    snprintf(path, sizeof path, "%s/sub/dir/errors-ok.jpg", scratch_dir);
    CHECK_OK(dg_image_write_jpeg(img, path, 90));
    CHECK(file_exists(path), "dg_image_write_jpeg did not create %s", path);

    dg_images_free(imgs);
}

static void test_cancel_token(void) {
    EXPECT_ERROR(dg_cancel_token_new(NULL), DG_ERROR_NULL_ARG, "out");
    dg_cancel_token_t *t = NULL;
    CHECK_OK(dg_cancel_token_new(&t));
    dg_cancel_token_cancel(t);
    dg_cancel_token_cancel(t); /* idempotent */
    dg_cancel_token_free(t);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL_DIR SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    model_dir = argv[1];
    scratch_dir = argv[2];
    struct stat st;
    if (stat(scratch_dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "errors: SCRATCH_DIR %s must be an existing directory\n", scratch_dir);
        return 2;
    }

    test_error_accessors();
    test_free_null();
    test_getters_on_null();
    test_runtime_options();
    test_params_setters();
    test_cancel_token();

    dg_runtime_t *rt = test_runtime();
    test_pipeline_load(rt);
    dg_pipeline_t *pipe = NULL;
    CHECK_OK(dg_pipeline_load(rt, model_dir, &pipe));
    test_generate_errors(pipe);
    test_images(pipe);
    dg_pipeline_free(pipe);
    dg_runtime_free(rt);
    return test_result("errors");
}
