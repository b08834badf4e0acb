/* dg_runtime_options_set, the string-keyed runtime options: every error path (NULL arguments,
 * invalid UTF-8, unknown keys, unparsable values), then a runtime with two sessions per graph and an
 * optimized-graph cache whose images equal those of a default runtime, byte for byte, from two
 * threads at once and again after the cache is warm.
 *
 * usage: runtime_options [MODEL_DIR]   (default models/tiny-sd, relative to the repository root) */
#define _XOPEN_SOURCE 700
#include "common.h"

#include <dirent.h>
#include <ftw.h>
#include <pthread.h>
#include <stdint.h>
#include <unistd.h>

static const char BAD_UTF8[] = "on\xff"; /* 0xff never occurs in UTF-8 */

static void test_errors(void) {
    dg_runtime_options_t *opts = NULL;
    EXPECT_ERROR(dg_runtime_options_set(NULL, "sessions_per_graph", "2"), DG_ERROR_NULL_ARG, "opts");
    CHECK_OK(dg_runtime_options_new(&opts));
    EXPECT_ERROR(dg_runtime_options_set(opts, NULL, "2"), DG_ERROR_NULL_ARG, "key");
    EXPECT_ERROR(dg_runtime_options_set(opts, "sessions_per_graph", NULL), DG_ERROR_NULL_ARG, "value");
    EXPECT_ERROR(dg_runtime_options_set(opts, BAD_UTF8, "1"), DG_ERROR_INVALID_ARG, "offset 2");
    EXPECT_ERROR(dg_runtime_options_set(opts, "no_spinning", BAD_UTF8), DG_ERROR_INVALID_ARG, "`value`");
    /* An unknown key names itself and lists the keys there are. */
    EXPECT_ERROR(dg_runtime_options_set(opts, "sessions", "2"), DG_ERROR_INVALID_ARG, "`sessions`");
    EXPECT_ERROR(dg_runtime_options_set(opts, "sessions", "2"), DG_ERROR_INVALID_ARG,
                 "sessions_per_graph, optimized_graph_cache");
    EXPECT_ERROR(dg_runtime_options_set(opts, "sessions_per_graph", "0"), DG_ERROR_INVALID_ARG,
                 "at least 1");
    EXPECT_ERROR(dg_runtime_options_set(opts, "sessions_per_graph", "two"), DG_ERROR_INVALID_ARG, "two");
    EXPECT_ERROR(dg_runtime_options_set(opts, "intra_threads", "-1"), DG_ERROR_INVALID_ARG, "-1");
    EXPECT_ERROR(dg_runtime_options_set(opts, "no_spinning", "maybe"), DG_ERROR_INVALID_ARG, "maybe");
    EXPECT_ERROR(dg_runtime_options_set(opts, "optimization", "max"), DG_ERROR_INVALID_ARG, "max");
    EXPECT_ERROR(dg_runtime_options_set(opts, "execution_provider", "gpu"), DG_ERROR_INVALID_ARG, "gpu");
    /* The cache does not apply to TensorRT, which compiles engines: dg_runtime_new says so. */
    CHECK_OK(dg_runtime_options_set(opts, "execution_provider", "tensorrt"));
    CHECK_OK(dg_runtime_options_set(opts, "optimized_graph_cache", "/tmp"));
    dg_runtime_t *rt = NULL;
    EXPECT_ERROR(dg_runtime_new(opts, &rt), DG_ERROR_UNSUPPORTED, "engine cache");
    CHECK(rt == NULL, "dg_runtime_new wrote *out on error");
    dg_runtime_options_free(opts);
}

/* A runtime from key/value pairs (NULL-terminated list), plus DG_TEST_INTRA_THREADS. */
static dg_runtime_t *runtime_with(const char *const *pairs) {
    dg_runtime_options_t *opts = NULL;
    dg_runtime_t *rt = NULL;
    const char *threads = getenv("DG_TEST_INTRA_THREADS");
    CHECK_OK(dg_runtime_options_new(&opts));
    for (; pairs[0] != NULL; pairs += 2) {
        CHECK_OK(dg_runtime_options_set(opts, pairs[0], pairs[1]));
    }
    if (threads != NULL && threads[0] != '\0') {
        CHECK_OK(dg_runtime_options_set(opts, "intra_threads", threads));
    }
    CHECK_OK(dg_runtime_new(opts, &rt));
    dg_runtime_options_free(opts);
    return rt;
}

struct job {
    const dg_pipeline_t *pipe;
    uint64_t seed;
    uint8_t *rgb; /* packed RGB rows */
    size_t len;
    char error[512];
};

static void *generate(void *arg) {
    struct job *job = arg;
    dg_params_t *p = NULL;
    dg_images_t *imgs = NULL;
    dg_error_t *err = dg_params_new(&p);
    if (err == NULL) err = dg_params_set_prompt(p, "a red fox");
    if (err == NULL) err = dg_params_set_steps(p, 2);
    if (err == NULL) err = dg_params_set_seed(p, job->seed);
    if (err == NULL) err = dg_pipeline_generate(job->pipe, p, NULL, NULL, NULL, &imgs);
    dg_params_free(p);
    if (err != NULL) {
        snprintf(job->error, sizeof job->error, "seed %llu: %s", (unsigned long long)job->seed,
                 dg_error_message(err));
        dg_error_free(err);
        return NULL;
    }
    const dg_image_t *img = dg_images_get(imgs, 0);
    size_t row = (size_t)dg_image_width(img) * 3, stride = dg_image_stride(img);
    job->len = row * dg_image_height(img);
    job->rgb = malloc(job->len ? job->len : 1);
    if (job->rgb == NULL) {
        snprintf(job->error, sizeof job->error, "out of memory");
    } else {
        for (uint32_t y = 0; y < dg_image_height(img); y++) {
            memcpy(job->rgb + y * row, dg_image_pixels(img) + y * stride, row);
        }
    }
    dg_images_free(imgs);
    return NULL;
}

/* Seeds 0 and 1 from two threads at once on `pipe`; each must equal `expected[seed]`. */
static void generate_pair_and_compare(const dg_pipeline_t *pipe, struct job *expected, const char *what) {
    struct job jobs[2];
    pthread_t threads[2];
    memset(jobs, 0, sizeof jobs);
    int started = 0;
    for (int i = 0; i < 2; i++) {
        jobs[i].pipe = pipe;
        jobs[i].seed = (uint64_t)i;
        if (pthread_create(&threads[i], NULL, generate, &jobs[i]) == 0) {
            started++;
        } else {
            FAIL("pthread_create failed");
        }
    }
    for (int i = 0; i < started; i++) {
        pthread_join(threads[i], NULL);
    }
    for (int i = 0; i < started; i++) {
        CHECK(jobs[i].error[0] == '\0', "%s: %s", what, jobs[i].error);
        CHECK(jobs[i].rgb != NULL && jobs[i].len == expected[i].len &&
                  memcmp(jobs[i].rgb, expected[i].rgb, jobs[i].len) == 0,
              "%s: seed %d differs from the default runtime's image", what, i);
        free(jobs[i].rgb);
    }
}

static int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    if (d == NULL) return -1;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] != '.') n++;
    }
    closedir(d);
    return n;
}

static int remove_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

int main(int argc, char **argv) {
    const char *model = argc > 1 ? argv[1] : "models/tiny-sd";
    test_errors();

    /* Reference images from a default runtime, one request at a time. */
    dg_runtime_t *rt = test_runtime();
    dg_pipeline_t *pipe = NULL;
    CHECK_OK(dg_pipeline_load(rt, model, &pipe));
    struct job expected[2];
    memset(expected, 0, sizeof expected);
    for (int i = 0; i < 2; i++) {
        expected[i].pipe = pipe;
        expected[i].seed = (uint64_t)i;
        generate(&expected[i]);
        CHECK(expected[i].error[0] == '\0', "reference: %s", expected[i].error);
    }
    dg_pipeline_free(pipe);
    dg_runtime_free(rt);

    char cache[] = "/tmp/dg-runtime-options-XXXXXX";
    if (mkdtemp(cache) == NULL) {
        FAIL("mkdtemp failed");
        return test_result("runtime_options");
    }
    const char *const pairs[] = {"sessions_per_graph", "2", "optimized_graph_cache", cache,
                                 "optimization", "all", "no_spinning", "true", NULL};
    /* First load: the cache is written (one entry per graph: text encoder, UNet, VAE decoder and
     * encoder); second load: read back. */
    for (int round = 0; round < 2; round++) {
        rt = runtime_with(pairs);
        CHECK_OK(dg_pipeline_load(rt, model, &pipe));
        dg_runtime_free(rt);
        CHECK(count_entries(cache) == 4, "round %d: %d cache entries, expected 4 (one per graph)",
              round, count_entries(cache));
        generate_pair_and_compare(pipe, expected, round == 0 ? "cache written" : "cache read");
        dg_pipeline_free(pipe);
    }
    nftw(cache, remove_one, 8, FTW_DEPTH | FTW_PHYS);
    for (int i = 0; i < 2; i++) free(expected[i].rgb);
    return test_result("runtime_options");
}
