/* One request end to end, progress and cancellation.
 *
 * usage: generate MODEL_DIR RAW_OUT PNG_OUT   (MODEL_DIR: models/tiny-sd)
 *
 * Generates "a red fox", seed 42, 3 steps, scheduler euler (everything else the package's defaults,
 * exactly what `dg generate --model MODEL_DIR --prompt "a red fox" --seed 42 --steps 3
 * --scheduler euler` asks the Rust API for). Writes the image's raw RGB rows (width * 3 bytes each,
 * no padding, top to bottom) to RAW_OUT and the same image through dg_image_write_png to PNG_OUT.
 * The Makefile decodes the PNG that `dg generate` wrote and compares it with RAW_OUT byte for byte. */
#define _POSIX_C_SOURCE 200809L
#include "common.h"

#include <pthread.h>
#include <stdint.h>

static char sentinel_storage;
#define SENTINEL ((void *)&sentinel_storage)

/* ---- progress ---------------------------------------------------------------------------- */

struct progress_log {
    uint32_t calls;
    uint32_t last_step;
    uint32_t total;
    double last_elapsed;
    uint32_t cancel_at;  /* return false at this step (0: never) */
    int bad;             /* a malformed report was seen */
    int after_return;    /* set once generate returned; a call after that is a contract breach */
};

static bool record_progress(const dg_progress_t *pr, void *user_data) {
    struct progress_log *log = user_data;
    if (log->after_return) {
        fprintf(stderr, "progress callback ran after dg_pipeline_generate returned\n");
        log->bad = 1;
    }
    if (pr == NULL || pr->struct_size < sizeof(dg_progress_t)) {
        fprintf(stderr, "progress report is NULL or has struct_size %u < %zu\n",
                pr ? pr->struct_size : 0, sizeof(dg_progress_t));
        log->bad = 1;
        return true;
    }
    log->calls++;
    if (pr->step != log->last_step + 1 || pr->step > pr->total ||
        (log->total != 0 && pr->total != log->total) || pr->elapsed_seconds < log->last_elapsed ||
        pr->elapsed_seconds < 0.0) {
        fprintf(stderr, "bad progress report: step %u/%u elapsed %f after step %u/%u elapsed %f\n",
                pr->step, pr->total, pr->elapsed_seconds, log->last_step, log->total,
                log->last_elapsed);
        log->bad = 1;
    }
    log->last_step = pr->step;
    log->total = pr->total;
    log->last_elapsed = pr->elapsed_seconds;
    return log->cancel_at == 0 || pr->step < log->cancel_at;
}

static dg_params_t *fox_params(void) {
    dg_params_t *p = NULL;
    CHECK_OK(dg_params_new(&p));
    CHECK_OK(dg_params_set_prompt(p, "a red fox"));
    CHECK_OK(dg_params_set_seed(p, 42));
    CHECK_OK(dg_params_set_steps(p, 3));
    CHECK_OK(dg_params_set_scheduler(p, "euler"));
    return p;
}

/* The same request through the string-keyed setter. */
static dg_params_t *fox_params_by_key(void) {
    dg_params_t *p = NULL;
    CHECK_OK(dg_params_new(&p));
    CHECK_OK(dg_params_set(p, "prompt", "a red fox"));
    CHECK_OK(dg_params_set(p, "seed", "42"));
    CHECK_OK(dg_params_set(p, "steps", "3"));
    CHECK_OK(dg_params_set(p, "scheduler", "euler"));
    return p;
}

/* ---- the request itself ------------------------------------------------------------------ */

static void test_generate(const dg_pipeline_t *pipe, const char *raw_out, const char *png_out,
                          dg_images_t **kept) {
    dg_params_t *p = fox_params();
    struct progress_log log = {0};
    dg_images_t *imgs = NULL;
    CHECK_OK(dg_pipeline_generate(pipe, p, record_progress, &log, NULL, &imgs));
    log.after_return = 1;
    dg_params_free(p);

    CHECK(!log.bad, "malformed progress reports (see above)");
    CHECK(log.calls == 3 && log.last_step == 3 && log.total == 3,
          "expected progress 1/3, 2/3, 3/3; got %u calls, last %u/%u", log.calls, log.last_step,
          log.total);
    CHECK(dg_images_count(imgs) == 1, "expected 1 image, got %zu", dg_images_count(imgs));
    CHECK(dg_images_seed(imgs) == 42, "dg_images_seed = %llu, expected 42",
          (unsigned long long)dg_images_seed(imgs));
    const dg_image_t *img = dg_images_get(imgs, 0);
    if (img == NULL) {
        FAIL("no image 0");
        dg_images_free(imgs);
        return;
    }
    uint32_t w = dg_image_width(img), h = dg_image_height(img);
    /* tiny-sd: UNet sample_size 8 x VAE factor 8 */
    CHECK(w == 64 && h == 64, "expected the package's default size 64x64, got %ux%u", w, h);
    CHECK(dg_image_channels(img) == 3, "expected 3 channels, got %u", dg_image_channels(img));
    CHECK(dg_image_stride(img) >= (size_t)w * 3, "stride %zu < width * 3", dg_image_stride(img));
    CHECK(dg_image_pixels(img) != NULL, "dg_image_pixels is NULL");

    size_t len = 0;
    uint8_t *rgb = packed_rgb(img, &len);
    CHECK(rgb != NULL && write_file(raw_out, rgb, len) == 0, "cannot write %s", raw_out);
    free(rgb);

    /* write_png and encode_png produce the same bytes. */
    CHECK_OK(dg_image_write_png(img, png_out));
    dg_buffer_t *buf = NULL;
    CHECK_OK(dg_image_encode_png(img, &buf));
    size_t file_len = 0;
    uint8_t *file = read_file(png_out, &file_len);
    CHECK(file != NULL && file_len == dg_buffer_len(buf) &&
              memcmp(file, dg_buffer_data(buf), file_len) == 0,
          "%s differs from dg_image_encode_png's bytes", png_out);
    free(file);
    dg_buffer_free(buf);

    CHECK(log.calls == 3, "progress callback ran after dg_pipeline_generate returned");
    *kept = imgs;
}

/* The string-keyed setter asks for the same request: same pixels. */
static void test_same_by_key(const dg_pipeline_t *pipe, const dg_images_t *reference) {
    dg_params_t *p = fox_params_by_key();
    dg_images_t *imgs = NULL;
    CHECK_OK(dg_pipeline_generate(pipe, p, NULL, NULL, NULL, &imgs));
    dg_params_free(p);
    size_t a_len = 0, b_len = 0;
    uint8_t *a = packed_rgb(dg_images_get(reference, 0), &a_len);
    uint8_t *b = packed_rgb(dg_images_get(imgs, 0), &b_len);
    CHECK(a != NULL && b != NULL && a_len == b_len && memcmp(a, b, a_len) == 0,
          "dg_params_set(\"prompt\"/\"seed\"/\"steps\"/\"scheduler\") gave other pixels than the typed setters");
    free(a);
    free(b);
    dg_images_free(imgs);
}

/* ---- cancellation ------------------------------------------------------------------------ */

/* The callback returns false at step 2 of 3: CANCELLED, *out untouched, no call after step 2. */
static void test_cancel_from_callback(const dg_pipeline_t *pipe) {
    dg_params_t *p = fox_params();
    struct progress_log log = {0};
    log.cancel_at = 2;
    dg_images_t *imgs = SENTINEL;
    EXPECT_ERROR(dg_pipeline_generate(pipe, p, record_progress, &log, NULL, &imgs),
                 DG_ERROR_CANCELLED, NULL);
    log.after_return = 1;
    CHECK((void *)imgs == SENTINEL, "cancelled generate wrote *out");
    CHECK(!log.bad, "malformed progress reports (see above)");
    CHECK(log.calls == 2, "callback returned false at step 2 but ran %u times", log.calls);
    dg_params_free(p);
}

/* A token cancelled before the request starts: CANCELLED before any step. */
static void test_cancel_before_start(const dg_pipeline_t *pipe) {
    dg_params_t *p = fox_params();
    dg_cancel_token_t *token = NULL;
    CHECK_OK(dg_cancel_token_new(&token));
    dg_cancel_token_cancel(token);
    struct progress_log log = {0};
    dg_images_t *imgs = SENTINEL;
    EXPECT_ERROR(dg_pipeline_generate(pipe, p, record_progress, &log, token, &imgs),
                 DG_ERROR_CANCELLED, NULL);
    CHECK((void *)imgs == SENTINEL, "cancelled generate wrote *out");
    CHECK(log.calls == 0, "a pre-cancelled request ran %u steps", log.calls);
    dg_cancel_token_free(token);
    dg_params_free(p);
}

/* Another thread cancels while step 1's callback holds the generating thread, so the cancel lands
 * at a known point with no sleeps: the request must stop before step 2. */
struct handshake {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int reached_step_1; /* set by the callback */
    int cancelled;      /* set by the canceller after dg_cancel_token_cancel */
    const dg_cancel_token_t *token;
    struct progress_log log;
};

static bool wait_for_cancel(const dg_progress_t *pr, void *user_data) {
    struct handshake *hs = user_data;
    record_progress(pr, &hs->log);
    if (pr->step == 1) {
        pthread_mutex_lock(&hs->mu);
        hs->reached_step_1 = 1;
        pthread_cond_broadcast(&hs->cv);
        while (!hs->cancelled) {
            pthread_cond_wait(&hs->cv, &hs->mu);
        }
        pthread_mutex_unlock(&hs->mu);
    }
    return true; /* the token, not the return value, cancels */
}

static void *canceller(void *arg) {
    struct handshake *hs = arg;
    pthread_mutex_lock(&hs->mu);
    while (!hs->reached_step_1) {
        pthread_cond_wait(&hs->cv, &hs->mu);
    }
    dg_cancel_token_cancel(hs->token);
    hs->cancelled = 1;
    pthread_cond_broadcast(&hs->cv);
    pthread_mutex_unlock(&hs->mu);
    return NULL;
}

static void test_cancel_from_thread(const dg_pipeline_t *pipe) {
    dg_params_t *p = fox_params();
    dg_cancel_token_t *token = NULL;
    CHECK_OK(dg_cancel_token_new(&token));
    struct handshake hs;
    memset(&hs, 0, sizeof hs);
    pthread_mutex_init(&hs.mu, NULL);
    pthread_cond_init(&hs.cv, NULL);
    hs.token = token;
    pthread_t thread;
    if (pthread_create(&thread, NULL, canceller, &hs) != 0) {
        FAIL("pthread_create failed");
        return;
    }
    dg_images_t *imgs = SENTINEL;
    EXPECT_ERROR(dg_pipeline_generate(pipe, p, wait_for_cancel, &hs, token, &imgs),
                 DG_ERROR_CANCELLED, NULL);
    hs.log.after_return = 1;
    /* If generate failed before step 1, release the canceller so the join cannot hang. */
    pthread_mutex_lock(&hs.mu);
    hs.reached_step_1 = 1;
    pthread_cond_broadcast(&hs.cv);
    pthread_mutex_unlock(&hs.mu);
    pthread_join(thread, NULL);
    CHECK((void *)imgs == SENTINEL, "cancelled generate wrote *out");
    CHECK(!hs.log.bad, "malformed progress reports (see above)");
    CHECK(hs.log.calls == 1, "cancelled during step 1's callback, but %u steps were reported",
          hs.log.calls);
    pthread_cond_destroy(&hs.cv);
    pthread_mutex_destroy(&hs.mu);
    dg_cancel_token_free(token);
    dg_params_free(p);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL_DIR RAW_OUT PNG_OUT\n", argv[0]);
        return 2;
    }
    dg_runtime_t *rt = NULL;
    dg_pipeline_t *pipe = NULL;
    rt = test_runtime();
    CHECK_OK(dg_pipeline_load(rt, argv[1], &pipe));

    dg_images_t *fox = NULL;
    test_generate(pipe, argv[2], argv[3], &fox);
    if (fox != NULL) {
        test_same_by_key(pipe, fox);
    }
    test_cancel_from_callback(pipe);
    test_cancel_before_start(pipe);
    test_cancel_from_thread(pipe);

    /* Images do not depend on the pipeline or runtime: free those first, then read the image. */
    dg_pipeline_free(pipe);
    dg_runtime_free(rt);
    if (fox != NULL) {
        const dg_image_t *img = dg_images_get(fox, 0);
        size_t len = 0;
        uint8_t *rgb = packed_rgb(img, &len);
        size_t file_len = 0;
        uint8_t *file = read_file(argv[2], &file_len);
        CHECK(rgb != NULL && file != NULL && len == file_len && memcmp(rgb, file, len) == 0,
              "image pixels changed after dg_pipeline_free/dg_runtime_free");
        free(rgb);
        free(file);
    }
    dg_images_free(fox);
    return test_result("generate");
}
