/* Shared helpers for the C API tests (every tests/c/NAME.c). Every check prints file:line and a clear
 * message and makes the program exit non-zero. */
#ifndef DG_TEST_COMMON_H
#define DG_TEST_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include "diffgentor.h"

static int dg_test_failures = 0;

#define FAIL(...)                                                   \
    do {                                                            \
        fprintf(stderr, "%s:%d: FAIL: ", __FILE__, __LINE__);       \
        fprintf(stderr, __VA_ARGS__);                               \
        fputc('\n', stderr);                                        \
        dg_test_failures++;                                         \
    } while (0)

/* A failed CHECK is recorded and the test goes on, so one run shows every broken case. */
#define CHECK(cond, ...)                                            \
    do {                                                            \
        if (!(cond)) {                                              \
            FAIL("%s: ", #cond);                                    \
            fprintf(stderr, "    ");                                \
            fprintf(stderr, __VA_ARGS__);                           \
            fputc('\n', stderr);                                    \
        }                                                           \
    } while (0)

/* A call that must succeed; on failure the test cannot go on, so it stops here. */
#define CHECK_OK(call)                                                              \
    do {                                                                            \
        dg_error_t *check_ok_err_ = (call);                                         \
        if (check_ok_err_ != NULL) {                                                \
            fprintf(stderr, "%s:%d: FAIL: %s returned error %d: %s\n", __FILE__,    \
                    __LINE__, #call, (int)dg_error_code(check_ok_err_),             \
                    dg_error_message(check_ok_err_));                               \
            dg_error_free(check_ok_err_);                                           \
            exit(1);                                                                \
        }                                                                           \
    } while (0)

static inline const char *code_name(int code) {
    switch (code) {
    case 0: return "none";
    case DG_ERROR_NULL_ARG: return "DG_ERROR_NULL_ARG";
    case DG_ERROR_INVALID_ARG: return "DG_ERROR_INVALID_ARG";
    case DG_ERROR_IO: return "DG_ERROR_IO";
    case DG_ERROR_MODEL: return "DG_ERROR_MODEL";
    case DG_ERROR_UNSUPPORTED: return "DG_ERROR_UNSUPPORTED";
    case DG_ERROR_EP_UNAVAILABLE: return "DG_ERROR_EP_UNAVAILABLE";
    case DG_ERROR_CANCELLED: return "DG_ERROR_CANCELLED";
    case DG_ERROR_BACKEND: return "DG_ERROR_BACKEND";
    case DG_ERROR_PANIC: return "DG_ERROR_PANIC";
    case DG_ERROR_REMOTE: return "DG_ERROR_REMOTE";
    case DG_ERROR_RATE_LIMITED: return "DG_ERROR_RATE_LIMITED";
    case DG_ERROR_TIMEOUT: return "DG_ERROR_TIMEOUT";
    case DG_ERROR_REFUSED: return "DG_ERROR_REFUSED";
    default: return "unknown code";
    }
}

/* Checks that `err` is an error with `code`, a non-empty message, and (when given) a message
 * containing `needle`; frees it. `what` names the case in failure messages. */
static inline void expect_error_at(const char *file, int line, dg_error_t *err, int code,
                            const char *needle, const char *what) {
    if (err == NULL) {
        fprintf(stderr, "%s:%d: FAIL: %s: expected %s, got success\n", file, line, what,
                code_name(code));
        dg_test_failures++;
        return;
    }
    int got = (int)dg_error_code(err);
    const char *msg = dg_error_message(err);
    if (getenv("DG_TEST_VERBOSE") != NULL) {
        fprintf(stderr, "%s:%d: %s -> %s: %s\n", file, line, what, code_name(got), msg);
    }
    if (got != code) {
        fprintf(stderr, "%s:%d: FAIL: %s: expected %s, got %s (%d): %s\n", file, line, what,
                code_name(code), code_name(got), got, msg ? msg : "(null message)");
        dg_test_failures++;
    }
    if (msg == NULL || msg[0] == '\0') {
        fprintf(stderr, "%s:%d: FAIL: %s: error message is empty\n", file, line, what);
        dg_test_failures++;
    } else if (needle != NULL && strstr(msg, needle) == NULL) {
        fprintf(stderr, "%s:%d: FAIL: %s: message \"%s\" does not mention \"%s\"\n", file,
                line, what, msg, needle);
        dg_test_failures++;
    }
    dg_error_free(err);
}

#define EXPECT_ERROR(call, code, needle) expect_error_at(__FILE__, __LINE__, (call), (code), (needle), #call)

/* The runtime the tests use: default options, except that DG_TEST_INTRA_THREADS (set by the
 * Makefile for the valgrind runs, which serialise threads, so ONNX Runtime's spinning pool workers
 * only burn time) sets dg_runtime_options_set_intra_threads. */
static inline dg_runtime_t *test_runtime(void) {
    dg_runtime_options_t *opts = NULL;
    dg_runtime_t *rt = NULL;
    const char *threads = getenv("DG_TEST_INTRA_THREADS");
    CHECK_OK(dg_runtime_options_new(&opts));
    if (threads != NULL && threads[0] != '\0') {
        CHECK_OK(dg_runtime_options_set_intra_threads(opts, (uint32_t)strtoul(threads, NULL, 10)));
    }
    CHECK_OK(dg_runtime_new(opts, &rt));
    dg_runtime_options_free(opts);
    return rt;
}

static inline int test_result(const char *name) {
    if (dg_test_failures != 0) {
        fprintf(stderr, "%s: %d check(s) FAILED\n", name, dg_test_failures);
        return 1;
    }
    printf("%s: ok\n", name);
    return 0;
}

/* ---- files and pixels ------------------------------------------------------------------ */

static inline int write_file(const char *path, const uint8_t *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        perror(path);
        return -1;
    }
    size_t n = fwrite(data, 1, len, f);
    int rc = fclose(f);
    return n == len && rc == 0 ? 0 : -1;
}

static inline uint8_t *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    size_t got;
    while (buf != NULL && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            uint8_t *bigger = realloc(buf, cap *= 2);
            if (bigger == NULL) {
                free(buf);
            }
            buf = bigger;
        }
    }
    fclose(f);
    *len = n;
    return buf;
}

/* Tightly packed RGB rows of an image (stride may be larger than width * 3). */
static inline uint8_t *packed_rgb(const dg_image_t *img, size_t *len) {
    uint32_t w = dg_image_width(img), h = dg_image_height(img);
    size_t stride = dg_image_stride(img), row = (size_t)w * 3;
    uint8_t *out = malloc(row * h);
    if (out == NULL) {
        return NULL;
    }
    for (uint32_t y = 0; y < h; y++) {
        memcpy(out + y * row, dg_image_pixels(img) + y * stride, row);
    }
    *len = row * h;
    return out;
}

#endif
