/* The VLM part of the C API (dg_vlm_*) from C: greedy token ids equal transformers' for the
 * golden cases of models/vlm-goldens.json (one image, two images, text only), images from a file,
 * from file bytes and as raw pixels (padded rows too), the token callback sees
 * every token and cancels, a cancel token stops a request, bad keys and values are
 * DG_ERROR_INVALID_ARG naming them, NULLs are DG_ERROR_NULL_ARG, prompt enhancement runs, and two
 * threads share one model.
 *
 * usage: vlm [MODELS_DIR]   (default: models, the repository's; run from the repository root) */
#define _POSIX_C_SOURCE 200809L
#include "common.h"

#include <pthread.h>

static char models[1024] = "models";

static const char *model_path(const char *relative) {
    static char path[2][1200];
    static int which = 0;
    which ^= 1;
    snprintf(path[which], sizeof path[which], "%s/%s", models, relative);
    return path[which];
}

/* ---- one golden case, read from models/vlm-goldens.json (no JSON library: the keys read here
 * hold plain numbers and escape-free strings) ------------------------------------------------ */

#define MAX_IDS 64

struct golden {
    char images[2][256];
    int n_images;
    char prompt[256];
    int max_new_tokens;
    int64_t ids[MAX_IDS];
    size_t n_ids;
};

static char *goldens_text;

static const char *after_key(const char *from, const char *key) {
    char needle[64];
    snprintf(needle, sizeof needle, "\"%s\":", key);
    const char *at = strstr(from, needle);
    return at == NULL ? NULL : at + strlen(needle);
}

static void copy_string(char *dst, size_t cap, const char *at) {
    const char *open = strchr(at, '"');
    const char *close = open ? strchr(open + 1, '"') : NULL;
    size_t n = close ? (size_t)(close - open - 1) : 0;
    if (n >= cap) n = cap - 1;
    memcpy(dst, open + 1, n);
    dst[n] = '\0';
}

static int load_golden(const char *name, struct golden *g) {
    char needle[128];
    memset(g, 0, sizeof *g);
    snprintf(needle, sizeof needle, "\"name\": \"%s\"", name);
    const char *c = strstr(goldens_text, needle);
    if (c == NULL) {
        FAIL("no golden case %s", name);
        return -1;
    }
    const char *p = strchr(after_key(c, "images"), '[');
    const char *end = strchr(p, ']');
    while ((p = strchr(p + 1, '"')) != NULL && p < end && g->n_images < 2) {
        copy_string(g->images[g->n_images++], sizeof g->images[0], p - 1);
        p = strchr(p + 1, '"');
    }
    copy_string(g->prompt, sizeof g->prompt, after_key(c, "prompt"));
    g->max_new_tokens = atoi(after_key(c, "max_new_tokens"));
    p = strchr(after_key(c, "expected_ids"), '[') + 1;
    end = strchr(p, ']');
    while (p < end && g->n_ids < MAX_IDS) {
        char *next = NULL;
        g->ids[g->n_ids++] = strtoll(p, &next, 10);
        p = strchr(next, ',');
        if (p == NULL || p > end) break;
        p++;
    }
    return 0;
}

/* ---- helpers -------------------------------------------------------------------------------- */

static void check_ids(const dg_vlm_result_t *r, const struct golden *g, const char *what) {
    size_t n = 0;
    const int64_t *ids = dg_vlm_result_token_ids(r, &n);
    int same = n == g->n_ids && (n == 0 || memcmp(ids, g->ids, n * sizeof *ids) == 0);
    CHECK(same, "%s: %zu token ids, expected the %zu of transformers", what, n, g->n_ids);
    if (!same) {
        for (size_t i = 0; i < n; i++) fprintf(stderr, " %lld", (long long)ids[i]);
        fputc('\n', stderr);
    }
}

static dg_vlm_params_t *golden_params(const struct golden *g) {
    dg_vlm_params_t *p = NULL;
    char max[16];
    CHECK_OK(dg_vlm_params_new(&p));
    for (int i = 0; i < g->n_images; i++) {
        CHECK_OK(dg_vlm_params_add_image_file(p, NULL, model_path(g->images[i])));
    }
    CHECK_OK(dg_vlm_params_add_text(p, "user", g->prompt));
    snprintf(max, sizeof max, "%d", g->max_new_tokens);
    CHECK_OK(dg_vlm_params_set(p, "max_new_tokens", max));
    return p;
}

/* What the token callback saw. */
struct seen {
    int64_t ids[MAX_IDS];
    size_t n;
    char text[4096];
    size_t text_len;
    size_t stop_after;            /* return false after this many tokens (0: never) */
    dg_cancel_token_t *raise_at2; /* raise this token at the second token */
};

static bool on_token(const dg_vlm_token_t *t, void *user_data) {
    struct seen *s = user_data;
    CHECK(t->struct_size == sizeof(dg_vlm_token_t), "struct_size %u", t->struct_size);
    CHECK(t->index == s->n + 1, "index %u after %zu tokens", t->index, s->n);
    CHECK(t->text[t->text_len] == '\0', "the token's text is NUL-terminated");
    if (s->n < MAX_IDS) s->ids[s->n] = t->token_id;
    s->n++;
    if (s->text_len + t->text_len < sizeof s->text) {
        memcpy(s->text + s->text_len, t->text, t->text_len);
        s->text_len += t->text_len;
    }
    if (s->raise_at2 != NULL && s->n == 2) dg_cancel_token_cancel(s->raise_at2);
    return s->stop_after == 0 || s->n < s->stop_after;
}

/* ---- tests ---------------------------------------------------------------------------------- */

static void test_goldens(const dg_vlm_t *vlm) {
    const char *names[] = {"image_96x64", "two_images", "text_only", "image_300x200_max_pixels"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        struct golden g;
        dg_vlm_result_t *r = NULL;
        if (load_golden(names[i], &g) != 0) continue;
        dg_vlm_params_t *p = golden_params(&g);
        CHECK_OK(dg_vlm_generate(vlm, p, NULL, NULL, NULL, &r));
        check_ids(r, &g, names[i]);
        const char *reason = dg_vlm_result_finish_reason(r);
        CHECK(strcmp(reason, i == 3 ? "stop" : "length") == 0, "%s: finish %s", names[i], reason);
        CHECK(dg_vlm_result_prompt_tokens(r) > g.n_ids, "%s: prompt tokens", names[i]);
        CHECK(strstr(dg_vlm_result_timings(r), "\"tokens_per_second\":") != NULL, "timings %s",
              dg_vlm_result_timings(r));
        dg_vlm_result_free(r);
        dg_vlm_params_free(p);
    }
}

/* The two-image case with its images as file bytes; raw pixels with and without padded rows. */
static void test_image_inputs(const dg_vlm_t *vlm) {
    struct golden g;
    dg_vlm_params_t *p = NULL;
    dg_vlm_result_t *r = NULL;
    size_t len = 0;
    if (load_golden("two_images", &g) != 0) return;
    uint8_t *png = read_file(model_path(g.images[0]), &len);
    CHECK_OK(dg_vlm_params_new(&p));
    CHECK_OK(dg_vlm_params_add_image_encoded(p, NULL, png, len));

    size_t len2 = 0;
    uint8_t *png2 = read_file(model_path(g.images[1]), &len2);
    CHECK_OK(dg_vlm_params_add_image_encoded(p, "user", png2, len2));
    CHECK_OK(dg_vlm_params_add_text(p, NULL, g.prompt));
    CHECK_OK(dg_vlm_params_set(p, "max_new_tokens", "16"));
    CHECK_OK(dg_vlm_generate(vlm, p, NULL, NULL, NULL, &r));
    check_ids(r, &g, "two images as bytes");
    dg_vlm_result_free(r);
    dg_vlm_params_free(p);
    free(png);
    free(png2);

    /* Raw pixels: a grey 56x56 image with padded rows gives the answer the packed one gives. */
    enum { W = 56, H = 56, STRIDE = W * 3 + 5 };
    static uint8_t packed[W * H * 3], padded[STRIDE * H];
    for (size_t i = 0; i < sizeof packed; i++) packed[i] = (uint8_t)(i * 7 % 251);
    for (size_t y = 0; y < H; y++) memcpy(padded + y * STRIDE, packed + y * W * 3, W * 3);
    int64_t first[8];
    for (int round = 0; round < 2; round++) {
        size_t n = 0;
        CHECK_OK(dg_vlm_params_new(&p));
        CHECK_OK(dg_vlm_params_add_image(p, "user", round ? padded : packed, W, H, 3,
                                         round ? STRIDE : W * 3));
        CHECK_OK(dg_vlm_params_add_text(p, "user", "What is in the picture?"));
        CHECK_OK(dg_vlm_params_set(p, "max_new_tokens", "8"));
        CHECK_OK(dg_vlm_generate(vlm, p, NULL, NULL, NULL, &r));
        const int64_t *ids = dg_vlm_result_token_ids(r, &n);
        CHECK(n == 8, "%zu tokens", n);
        if (round == 0 && n == 8) memcpy(first, ids, sizeof first);
        if (round == 1 && n == 8) CHECK(memcmp(first, ids, sizeof first) == 0, "padded rows");
        dg_vlm_result_free(r);
        dg_vlm_params_free(p);
    }
}

static void test_streaming_and_cancel(const dg_vlm_t *vlm) {
    struct golden g;
    struct seen s;
    dg_vlm_result_t *r = NULL;
    if (load_golden("image_96x64", &g) != 0) return;
    dg_vlm_params_t *p = golden_params(&g);

    memset(&s, 0, sizeof s);
    CHECK_OK(dg_vlm_generate(vlm, p, on_token, &s, NULL, &r));
    size_t len = 0;
    const char *text = dg_vlm_result_text(r, &len);
    CHECK(s.n == g.n_ids && memcmp(s.ids, g.ids, s.n * sizeof s.ids[0]) == 0,
          "the callback saw %zu tokens", s.n);
    CHECK(len == s.text_len && memcmp(text, s.text, len) == 0 && text[len] == '\0',
          "streamed text adds up to the answer");
    dg_vlm_result_free(r);

    /* Returning false at the third token cancels; *out stays untouched. */
    memset(&s, 0, sizeof s);
    s.stop_after = 3;
    r = (dg_vlm_result_t *)&s;
    EXPECT_ERROR(dg_vlm_generate(vlm, p, on_token, &s, NULL, &r), DG_ERROR_CANCELLED, NULL);
    CHECK(s.n == 3, "%zu calls after cancelling at the third", s.n);
    CHECK(r == (dg_vlm_result_t *)&s, "out-param written on error");

    /* A token raised at the second token stops the request before the third. */
    dg_cancel_token_t *token = NULL;
    CHECK_OK(dg_cancel_token_new(&token));
    memset(&s, 0, sizeof s);
    s.raise_at2 = token;
    EXPECT_ERROR(dg_vlm_generate(vlm, p, on_token, &s, token, &r), DG_ERROR_CANCELLED, NULL);
    CHECK(s.n == 2, "%zu calls", s.n);
    /* Raised before: nothing runs. */
    memset(&s, 0, sizeof s);
    EXPECT_ERROR(dg_vlm_generate(vlm, p, on_token, &s, token, &r), DG_ERROR_CANCELLED, NULL);
    CHECK(s.n == 0, "%zu calls", s.n);
    dg_cancel_token_free(token);
    dg_vlm_params_free(p);
}

static void test_errors(const dg_runtime_t *rt, const dg_vlm_t *vlm) {
    dg_vlm_t *v = NULL;
    dg_vlm_params_t *p = NULL;
    dg_vlm_result_t *r = NULL;
    uint8_t pixels[3 * 28 * 28] = {0};
    EXPECT_ERROR(dg_vlm_load(NULL, model_path("tiny-qwen2.5-vl"), &v), DG_ERROR_NULL_ARG, "rt");
    EXPECT_ERROR(dg_vlm_load(rt, NULL, &v), DG_ERROR_NULL_ARG, "model_dir");
    EXPECT_ERROR(dg_vlm_load(rt, model_path("tiny-qwen2.5-vl"), NULL), DG_ERROR_NULL_ARG, "out");
    EXPECT_ERROR(dg_vlm_params_new(NULL), DG_ERROR_NULL_ARG, "out");
    CHECK_OK(dg_vlm_params_new(&p));
    EXPECT_ERROR(dg_vlm_params_add_text(NULL, NULL, "x"), DG_ERROR_NULL_ARG, "`p`");
    EXPECT_ERROR(dg_vlm_params_add_text(p, NULL, NULL), DG_ERROR_NULL_ARG, "text");
    EXPECT_ERROR(dg_vlm_params_add_text(p, "us\xff", "x"), DG_ERROR_INVALID_ARG, "role");
    EXPECT_ERROR(dg_vlm_params_add_image(p, NULL, NULL, 28, 28, 3, 84), DG_ERROR_NULL_ARG, "pixels");
    EXPECT_ERROR(dg_vlm_params_add_image(p, NULL, pixels, 28, 28, 2, 56), DG_ERROR_INVALID_ARG,
                 "channels");
    EXPECT_ERROR(dg_vlm_params_add_image_encoded(p, NULL, NULL, 4), DG_ERROR_NULL_ARG, "data");
    EXPECT_ERROR(dg_vlm_params_add_image_encoded(p, NULL, pixels, sizeof pixels),
                 DG_ERROR_INVALID_ARG, NULL);
    EXPECT_ERROR(dg_vlm_params_add_image_file(p, NULL, "/nonexistent/x.png"), DG_ERROR_IO,
                 "/nonexistent/x.png");
    EXPECT_ERROR(dg_vlm_params_set(p, "max_tokens", "8"), DG_ERROR_INVALID_ARG, "max_new_tokens");
    EXPECT_ERROR(dg_vlm_params_set(p, "top_p", "1.5"), DG_ERROR_INVALID_ARG, "1.5");
    EXPECT_ERROR(dg_vlm_params_set(p, "temperature", "hot"), DG_ERROR_INVALID_ARG, "hot");
    EXPECT_ERROR(dg_vlm_params_set(p, NULL, "1"), DG_ERROR_NULL_ARG, "key");
    r = NULL;
    EXPECT_ERROR(dg_vlm_generate(vlm, p, NULL, NULL, NULL, &r), DG_ERROR_INVALID_ARG, "message");
    CHECK(r == NULL, "out-param written on error");
    EXPECT_ERROR(dg_vlm_generate(NULL, p, NULL, NULL, NULL, &r), DG_ERROR_NULL_ARG, "vlm");
    EXPECT_ERROR(dg_vlm_generate(vlm, NULL, NULL, NULL, NULL, &r), DG_ERROR_NULL_ARG, "params");
    CHECK_OK(dg_vlm_params_add_image_file(p, NULL, model_path("vlm-images/tiny_10x10.png")));
    CHECK_OK(dg_vlm_params_add_text(p, NULL, "what is this?"));
    EXPECT_ERROR(dg_vlm_generate(vlm, p, NULL, NULL, NULL, &r), DG_ERROR_INVALID_ARG, "14");
    dg_vlm_params_free(p);
    EXPECT_ERROR(dg_vlm_params_new_enhance("sdxl", "x", &p), DG_ERROR_INVALID_ARG, "qwen_image_edit");

    /* NULL handles: empty getters, no-op frees. */
    size_t len = 5;
    CHECK(strcmp(dg_vlm_result_text(NULL, &len), "") == 0 && len == 0, "text of NULL");
    CHECK(dg_vlm_result_token_ids(NULL, &len) == NULL && len == 0, "ids of NULL");
    CHECK(dg_vlm_result_prompt_tokens(NULL) == 0, "prompt tokens of NULL");
    CHECK(strcmp(dg_vlm_result_finish_reason(NULL), "") == 0, "finish reason of NULL");
    CHECK(strcmp(dg_vlm_result_timings(NULL), "") == 0, "timings of NULL");
    CHECK(strcmp(dg_vlm_result_enhanced_prompt(NULL), "") == 0, "enhanced prompt of NULL");
    CHECK(strcmp(dg_vlm_info(NULL), "") == 0, "info of NULL");
    dg_vlm_result_free(NULL);
    dg_vlm_params_free(NULL);
    dg_vlm_free(NULL);
}

static void test_enhance(const dg_vlm_t *vlm) {
    dg_vlm_params_t *p = NULL;
    dg_vlm_result_t *r = NULL;
    CHECK_OK(dg_vlm_params_new_enhance("qwen_image_edit", "make the square blue", &p));
    EXPECT_ERROR(dg_vlm_params_add_text(p, NULL, "more"), DG_ERROR_INVALID_ARG, "image");
    CHECK_OK(dg_vlm_params_add_image_file(p, NULL, model_path("vlm-images/square_80x80.png")));
    EXPECT_ERROR(dg_vlm_params_add_image_file(p, NULL, model_path("vlm-images/square_80x80.png")),
                 DG_ERROR_INVALID_ARG, "one image");
    CHECK_OK(dg_vlm_params_set(p, "max_new_tokens", "24"));
    CHECK_OK(dg_vlm_params_set(p, "system", "Rewrite the instruction."));
    CHECK_OK(dg_vlm_generate(vlm, p, NULL, NULL, NULL, &r));
    const char *prompt = dg_vlm_result_enhanced_prompt(r);
    CHECK(prompt != NULL && prompt == dg_vlm_result_enhanced_prompt(r), "the prompt is kept");
    size_t n = 0;
    dg_vlm_result_token_ids(r, &n);
    CHECK(n >= 1 && n <= 24, "%zu tokens", n);
    dg_vlm_result_free(r);
    dg_vlm_params_free(p);
}

struct job {
    const dg_vlm_t *vlm;
    const char *name;
};

static void *thread_main(void *arg) {
    const struct job *job = arg;
    struct golden g;
    dg_vlm_result_t *r = NULL;
    if (load_golden(job->name, &g) != 0) return NULL;
    dg_vlm_params_t *p = golden_params(&g);
    dg_error_t *err = dg_vlm_generate(job->vlm, p, NULL, NULL, NULL, &r);
    if (err != NULL) {
        FAIL("%s: %s", job->name, dg_error_message(err));
        dg_error_free(err);
    } else {
        check_ids(r, &g, job->name);
    }
    dg_vlm_result_free(r);
    dg_vlm_params_free(p);
    return NULL;
}

static void test_threads(const dg_vlm_t *vlm) {
    struct job jobs[2] = {{vlm, "image_80x80"}, {vlm, "text_only"}};
    pthread_t threads[2];
    for (int i = 0; i < 2; i++) pthread_create(&threads[i], NULL, thread_main, &jobs[i]);
    for (int i = 0; i < 2; i++) pthread_join(threads[i], NULL);
}

int main(int argc, char **argv) {
    if (argc > 1) snprintf(models, sizeof models, "%s", argv[1]);
    size_t len = 0;
    uint8_t *text = read_file(model_path("vlm-goldens.json"), &len);
    if (text == NULL) return 1;
    goldens_text = realloc(text, len + 1);
    goldens_text[len] = '\0';

    dg_runtime_t *rt = test_runtime();
    dg_vlm_t *vlm = NULL;
    CHECK_OK(dg_vlm_load(rt, model_path("tiny-qwen2.5-vl"), &vlm));
    /* The model keeps its runtime alive: free the runtime first. */
    test_errors(rt, vlm);
    dg_runtime_free(rt);
    CHECK(strstr(dg_vlm_info(vlm), "\"layout\":\"onnxruntime-genai\"") != NULL, "%s", dg_vlm_info(vlm));

    test_goldens(vlm);
    test_image_inputs(vlm);
    test_streaming_and_cancel(vlm);
    test_enhance(vlm);
    test_threads(vlm);

    dg_vlm_free(vlm);
    free(goldens_text);
    return test_result("vlm");
}
