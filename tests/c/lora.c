/* LoRA adapters through the C API.
 *
 * usage: lora MODEL_DIR LORA_FILE LORA_RAW_OUT BASE_RAW_OUT
 *   (MODEL_DIR: models/tiny-sd, LORA_FILE: models/lora/sd_a.safetensors)
 *
 * Loads LORA_FILE as adapter "a" and runs tests/c/generate.c's request ("a red fox", seed 42,
 * 3 steps, euler) with the stack "a:0.8", writing its raw RGB rows to LORA_RAW_OUT (what the
 * bindings compare their LoRA pixels with), and without a stack to BASE_RAW_OUT (the Makefile
 * compares it with dg generate's pixels: a loaded but unused adapter changes nothing). Checks:
 *
 * - dg_pipeline_lora_list's JSON before and after loading (freed with dg_string_free);
 * - the stack changes the image; dg_params_add_lora, the "loras" key of dg_params_set and the
 *   default stack (dg_pipeline_lora_set_default) give the same pixels; dg_params_clear_loras
 *   overrides the default stack; after dg_pipeline_lora_unload the base pixels come back;
 * - errors: NULL arguments, a missing file, a file that is not safetensors, unknown flags, a
 *   non-finite strength, an adapter that is not loaded (at generate time and in the default stack),
 *   unloading twice; none of them writes an out-param or changes the pipeline. */
#include "common.h"

#include <math.h>

static char sentinel_storage;
#define SENTINEL ((void *)&sentinel_storage)

static dg_params_t *fox_params(void) {
    dg_params_t *p = NULL;
    CHECK_OK(dg_params_new(&p));
    CHECK_OK(dg_params_set_prompt(p, "a red fox"));
    CHECK_OK(dg_params_set_seed(p, 42));
    CHECK_OK(dg_params_set_steps(p, 3));
    CHECK_OK(dg_params_set_scheduler(p, "euler"));
    return p;
}

/* The packed RGB of the request's only image (free it); exits when generate fails. */
static uint8_t *run(const dg_pipeline_t *pipe, const dg_params_t *p, size_t *len) {
    dg_images_t *imgs = NULL;
    CHECK_OK(dg_pipeline_generate(pipe, p, NULL, NULL, NULL, &imgs));
    uint8_t *rgb = packed_rgb(dg_images_get(imgs, 0), len);
    dg_images_free(imgs);
    if (rgb == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return rgb;
}

static int same(const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len) {
    return a_len == b_len && memcmp(a, b, a_len) == 0;
}

/* dg_pipeline_lora_list's text (free it with dg_string_free). */
static char *list(const dg_pipeline_t *pipe) {
    char *json = SENTINEL;
    CHECK_OK(dg_pipeline_lora_list(pipe, &json));
    if (json == SENTINEL || json == NULL) {
        fprintf(stderr, "dg_pipeline_lora_list wrote no string\n");
        exit(1);
    }
    return json;
}

static void check_list_mentions(const dg_pipeline_t *pipe, const char *const *needles) {
    char *json = list(pipe);
    for (; *needles != NULL; needles++) {
        CHECK(strstr(json, *needles) != NULL, "dg_pipeline_lora_list gave %s, without %s", json,
              *needles);
    }
    dg_string_free(json);
}

static void test_bad_input(const dg_pipeline_t *pipe, const char *lora_file,
                           const char *not_safetensors) {
    EXPECT_ERROR(dg_pipeline_lora_load(NULL, "a", lora_file, 0), DG_ERROR_NULL_ARG, "`p`");
    EXPECT_ERROR(dg_pipeline_lora_load(pipe, NULL, lora_file, 0), DG_ERROR_NULL_ARG, "`name`");
    EXPECT_ERROR(dg_pipeline_lora_load(pipe, "a", NULL, 0), DG_ERROR_NULL_ARG, "`path`");
    EXPECT_ERROR(dg_pipeline_lora_load(pipe, "x", "/nonexistent/lora.safetensors", 0), DG_ERROR_IO,
                 "lora.safetensors");
    EXPECT_ERROR(dg_pipeline_lora_load(pipe, "x", not_safetensors, 0), DG_ERROR_INVALID_ARG, NULL);
    EXPECT_ERROR(dg_pipeline_lora_load(pipe, "x", lora_file, 0x80), DG_ERROR_INVALID_ARG, "flags");
    EXPECT_ERROR(dg_pipeline_lora_load(pipe, "not a name", lora_file, 0), DG_ERROR_INVALID_ARG,
                 "not a name");
    EXPECT_ERROR(dg_pipeline_lora_unload(NULL, "a"), DG_ERROR_NULL_ARG, "`p`");
    EXPECT_ERROR(dg_pipeline_lora_unload(pipe, NULL), DG_ERROR_NULL_ARG, "`name`");
    EXPECT_ERROR(dg_pipeline_lora_unload(pipe, "x"), DG_ERROR_INVALID_ARG, "`x`");
    char *json = SENTINEL;
    EXPECT_ERROR(dg_pipeline_lora_list(NULL, &json), DG_ERROR_NULL_ARG, "`p`");
    CHECK((void *)json == SENTINEL, "a failed dg_pipeline_lora_list wrote *out");
    EXPECT_ERROR(dg_pipeline_lora_list(pipe, NULL), DG_ERROR_NULL_ARG, "`out`");
    EXPECT_ERROR(dg_pipeline_lora_set_default(NULL, ""), DG_ERROR_NULL_ARG, "`p`");
    EXPECT_ERROR(dg_pipeline_lora_set_default(pipe, NULL), DG_ERROR_NULL_ARG, "`stack`");
    EXPECT_ERROR(dg_pipeline_lora_set_default(pipe, "ghost:0.5"), DG_ERROR_INVALID_ARG, "ghost");
    EXPECT_ERROR(dg_pipeline_lora_set_default(pipe, "a:high"), DG_ERROR_INVALID_ARG, "high");
    dg_string_free(NULL);

    dg_params_t *p = fox_params();
    EXPECT_ERROR(dg_params_add_lora(NULL, "a", 1.0f), DG_ERROR_NULL_ARG, "`p`");
    EXPECT_ERROR(dg_params_add_lora(p, NULL, 1.0f), DG_ERROR_NULL_ARG, "`name`");
    EXPECT_ERROR(dg_params_add_lora(p, "a", (float)NAN), DG_ERROR_INVALID_ARG, "finite");
    EXPECT_ERROR(dg_params_add_lora(p, "a", (float)INFINITY), DG_ERROR_INVALID_ARG, "finite");
    EXPECT_ERROR(dg_params_clear_loras(NULL), DG_ERROR_NULL_ARG, "`p`");
    /* Unknown at generate time, listing the loaded adapters. */
    CHECK_OK(dg_params_add_lora(p, "ghost", 1.0f));
    dg_images_t *imgs = SENTINEL;
    EXPECT_ERROR(dg_pipeline_generate(pipe, p, NULL, NULL, NULL, &imgs), DG_ERROR_INVALID_ARG,
                 "ghost");
    CHECK((void *)imgs == SENTINEL, "a failed generate wrote *out");
    dg_params_free(p);

    /* Failed loads left nothing behind. */
    json = list(pipe);
    CHECK(strstr(json, "\"x\"") == NULL, "a failed load is listed: %s", json);
    dg_string_free(json);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL_DIR LORA_FILE LORA_RAW_OUT BASE_RAW_OUT\n", argv[0]);
        return 2;
    }
    const char *model = argv[1], *lora_file = argv[2], *lora_out = argv[3], *base_out = argv[4];
    /* A file that exists but is not safetensors: this program's own model_index.json. */
    char not_safetensors[4096];
    snprintf(not_safetensors, sizeof not_safetensors, "%s/model_index.json", model);

    dg_runtime_t *rt = test_runtime();
    dg_pipeline_t *pipe = NULL;
    CHECK_OK(dg_pipeline_load(rt, model, &pipe));

    char *json = list(pipe);
    CHECK(strcmp(json, "{\"adapters\":[],\"default_stack\":[]}") == 0,
          "a fresh pipeline lists %s", json);
    dg_string_free(json);

    dg_params_t *plain = fox_params();
    size_t base_len = 0, len = 0;
    uint8_t *base = run(pipe, plain, &base_len);

    CHECK_OK(dg_pipeline_lora_load(pipe, "a", lora_file, 0));
    const char *loaded[] = {"\"name\":\"a\"", "\"format\":\"diffusers\"", "\"unet\":40",
                            "\"unmatched\":0", "\"default_strength\":null", NULL};
    check_list_mentions(pipe, loaded);

    uint8_t *again = run(pipe, plain, &len);
    CHECK(same(again, len, base, base_len), "a loaded but unused adapter changed the pixels");
    free(again);
    CHECK(write_file(base_out, base, base_len) == 0, "cannot write %s", base_out);

    dg_params_t *with = fox_params();
    CHECK_OK(dg_params_add_lora(with, "a", 0.8f));
    size_t lora_len = 0;
    uint8_t *lora = run(pipe, with, &lora_len);
    CHECK(!same(lora, lora_len, base, base_len), "the stack a:0.8 did not change the pixels");
    CHECK(write_file(lora_out, lora, lora_len) == 0, "cannot write %s", lora_out);

    dg_params_t *keyed = fox_params();
    CHECK_OK(dg_params_set(keyed, "loras", "a:0.8"));
    uint8_t *by_key = run(pipe, keyed, &len);
    CHECK(same(by_key, len, lora, lora_len), "dg_params_set(\"loras\") != dg_params_add_lora");
    free(by_key);

    /* The default stack: params naming none take it; dg_params_clear_loras opts out. */
    CHECK_OK(dg_pipeline_lora_set_default(pipe, "a:0.8"));
    const char *in_default[] = {"\"default_strength\":0.8",
                                "\"default_stack\":[{\"name\":\"a\",\"strength\":0.8}]", NULL};
    check_list_mentions(pipe, in_default);
    uint8_t *by_default = run(pipe, plain, &len);
    CHECK(same(by_default, len, lora, lora_len), "the default stack a:0.8 != dg_params_add_lora");
    free(by_default);
    dg_params_t *none = fox_params();
    CHECK_OK(dg_params_clear_loras(none));
    uint8_t *cleared = run(pipe, none, &len);
    CHECK(same(cleared, len, base, base_len), "dg_params_clear_loras did not override the default");
    free(cleared);
    CHECK_OK(dg_pipeline_lora_set_default(pipe, ""));

    test_bad_input(pipe, lora_file, not_safetensors);

    /* Unloading brings the base pixels back and takes the adapter out of the default stack. */
    CHECK_OK(dg_pipeline_lora_set_default(pipe, "a:0.8"));
    CHECK_OK(dg_pipeline_lora_unload(pipe, "a"));
    json = list(pipe);
    CHECK(strcmp(json, "{\"adapters\":[],\"default_stack\":[]}") == 0,
          "after unloading the pipeline lists %s", json);
    dg_string_free(json);
    uint8_t *after = run(pipe, plain, &len);
    CHECK(same(after, len, base, base_len), "after unloading the pixels are not the base ones");
    free(after);
    EXPECT_ERROR(dg_pipeline_lora_unload(pipe, "a"), DG_ERROR_INVALID_ARG, "loaded: none");
    dg_images_t *imgs = SENTINEL;
    EXPECT_ERROR(dg_pipeline_generate(pipe, with, NULL, NULL, NULL, &imgs), DG_ERROR_INVALID_ARG,
                 "`a`");
    CHECK((void *)imgs == SENTINEL, "a failed generate wrote *out");

    /* A remote pipeline has no adapters (nothing is sent: the calls fail before any request). */
    dg_generator_options_t *opts = NULL;
    CHECK_OK(dg_generator_options_new(&opts));
    CHECK_OK(dg_generator_options_set(opts, "base_url", "http://127.0.0.1:9/v1"));
    CHECK_OK(dg_generator_options_set(opts, "api_key", "sk-test"));
    dg_pipeline_t *remote = NULL;
    CHECK_OK(dg_pipeline_new_remote("openai", opts, &remote));
    dg_generator_options_free(opts);
    EXPECT_ERROR(dg_pipeline_lora_load(remote, "a", lora_file, 0), DG_ERROR_UNSUPPORTED, "openai");
    EXPECT_ERROR(dg_pipeline_lora_unload(remote, "a"), DG_ERROR_UNSUPPORTED, "openai");
    json = SENTINEL;
    EXPECT_ERROR(dg_pipeline_lora_list(remote, &json), DG_ERROR_UNSUPPORTED, "openai");
    CHECK((void *)json == SENTINEL, "a failed dg_pipeline_lora_list wrote *out");
    EXPECT_ERROR(dg_pipeline_lora_set_default(remote, ""), DG_ERROR_UNSUPPORTED, "openai");
    dg_pipeline_free(remote);

    free(base);
    free(lora);
    dg_params_free(plain);
    dg_params_free(with);
    dg_params_free(keyed);
    dg_params_free(none);
    dg_pipeline_free(pipe);
    dg_runtime_free(rt);
    return test_result("lora");
}
