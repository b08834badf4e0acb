/* Eight threads generate at once on ONE pipeline (seeds 0..7, 2 steps); each result must equal,
 * byte for byte, a sequential run with the same seed.
 *
 * usage: threads MODEL_DIR [SIZE]   (MODEL_DIR: models/tiny-sd; SIZE: width = height in pixels,
 * default the package's; the valgrind run uses 16 to stay fast) */
#define _POSIX_C_SOURCE 200809L
#include "common.h"

#include <pthread.h>
#include <stdint.h>

#define THREADS 8

struct result {
    uint8_t *rgb; /* packed RGB rows */
    size_t len;
    uint64_t seed;
};

struct job {
    const dg_pipeline_t *pipe;
    pthread_barrier_t *start;
    uint64_t seed;
    struct result out;
    char error[512];
};

/* One request; each caller owns its params (params are not thread-safe, the pipeline is). */
static uint32_t size; /* 0: the package's default */

static void generate_one(const dg_pipeline_t *pipe, uint64_t seed, struct result *out,
                         char *error, size_t error_len) {
    dg_params_t *p = NULL;
    dg_images_t *imgs = NULL;
    dg_error_t *err = dg_params_new(&p);
    if (err == NULL) err = dg_params_set_prompt(p, "a lighthouse at dusk");
    if (err == NULL) err = dg_params_set_steps(p, 2);
    if (err == NULL) err = dg_params_set_seed(p, seed);
    if (err == NULL && size != 0) err = dg_params_set_size(p, size, size);
    if (err == NULL) err = dg_pipeline_generate(pipe, p, NULL, NULL, NULL, &imgs);
    dg_params_free(p);
    if (err != NULL) {
        snprintf(error, error_len, "seed %llu: error %d: %s", (unsigned long long)seed,
                 (int)dg_error_code(err), dg_error_message(err));
        dg_error_free(err);
        return;
    }
    const dg_image_t *img = dg_images_get(imgs, 0);
    uint32_t w = dg_image_width(img), h = dg_image_height(img);
    size_t stride = dg_image_stride(img), row = (size_t)w * 3;
    out->len = row * h;
    out->rgb = malloc(out->len ? out->len : 1);
    out->seed = dg_images_seed(imgs);
    if (out->rgb == NULL) {
        snprintf(error, error_len, "out of memory");
    } else {
        for (uint32_t y = 0; y < h; y++) {
            memcpy(out->rgb + y * row, dg_image_pixels(img) + y * stride, row);
        }
    }
    dg_images_free(imgs);
}

static void *worker(void *arg) {
    struct job *job = arg;
    pthread_barrier_wait(job->start); /* all eight requests start together */
    generate_one(job->pipe, job->seed, &job->out, job->error, sizeof job->error);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2 && argc != 3) {
        fprintf(stderr, "usage: %s MODEL_DIR [SIZE]\n", argv[0]);
        return 2;
    }
    size = argc == 3 ? (uint32_t)strtoul(argv[2], NULL, 10) : 0;
    dg_runtime_t *rt = NULL;
    dg_pipeline_t *pipe = NULL;
    rt = test_runtime();
    CHECK_OK(dg_pipeline_load(rt, argv[1], &pipe));
    /* The pipeline keeps the runtime alive: freeing the runtime now must be fine. */
    dg_runtime_free(rt);

    struct result sequential[THREADS];
    memset(sequential, 0, sizeof sequential);
    for (uint64_t seed = 0; seed < THREADS; seed++) {
        char error[512] = "";
        generate_one(pipe, seed, &sequential[seed], error, sizeof error);
        CHECK(error[0] == '\0', "sequential run: %s", error);
    }

    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, THREADS);
    struct job jobs[THREADS];
    pthread_t threads[THREADS];
    memset(jobs, 0, sizeof jobs);
    int started = 0;
    for (int i = 0; i < THREADS; i++) {
        jobs[i].pipe = pipe;
        jobs[i].start = &start;
        jobs[i].seed = (uint64_t)i;
        if (pthread_create(&threads[i], NULL, worker, &jobs[i]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 1; /* the barrier would never open */
        }
        started++;
    }
    for (int i = 0; i < started; i++) {
        pthread_join(threads[i], NULL);
    }
    pthread_barrier_destroy(&start);

    for (int i = 0; i < THREADS; i++) {
        struct result *c = &jobs[i].out, *s = &sequential[i];
        CHECK(jobs[i].error[0] == '\0', "thread %d: %s", i, jobs[i].error);
        CHECK(c->seed == (uint64_t)i, "thread %d: dg_images_seed = %llu", i, (unsigned long long)c->seed);
        CHECK(c->rgb != NULL && s->rgb != NULL && c->len == s->len && c->len > 0 &&
                  memcmp(c->rgb, s->rgb, c->len) == 0,
              "seed %d: concurrent result differs from the sequential one", i);
        if (i > 0) {
            CHECK(s->rgb != NULL && sequential[0].rgb != NULL && s->len == sequential[0].len &&
                      memcmp(s->rgb, sequential[0].rgb, s->len) != 0,
                  "seeds 0 and %d gave identical images: the seed is not used", i);
        }
    }
    for (int i = 0; i < THREADS; i++) {
        free(jobs[i].out.rgb);
        free(sequential[i].rgb);
    }
    dg_pipeline_free(pipe);
    return test_result("threads");
}
