/* Remote pipelines through the C API, against a scripted OpenAI-compatible server that this
 * program runs itself (a thread listening on 127.0.0.1, port chosen by the system):
 *
 * - dg_generator_options_* and dg_pipeline_new_remote("openai"); dg_pipeline_kind;
 * - a prompt: the server sees POST /v1/images/generations with "Authorization: Bearer KEY" and a
 *   JSON body carrying the prompt and the model, and answers a PNG (made here, 3x2, every pixel
 *   different) as base64 JSON with a revised prompt; the C image has that size and those pixels;
 *   dg_images_metadata carries the revised prompt; progress reports carry stage and stages;
 * - a negative prompt is DG_ERROR_UNSUPPORTED naming negative_prompt (nothing sent), and with
 *   "best_effort" it is left out of the request and listed in the metadata's "ignored";
 * - a 429 then a success is retried (max_retries 1); answers 500, 429, 401, a moderation block,
 *   a body that is not JSON, and one slower than timeout_s give DG_ERROR_REMOTE,
 *   DG_ERROR_RATE_LIMITED, DG_ERROR_REMOTE, DG_ERROR_REFUSED, DG_ERROR_REMOTE and DG_ERROR_TIMEOUT
 *   with max_retries 0;
 * - cancellation by a raised token (nothing sent) and by the progress callback;
 * - the API key appears in no error message and in no metadata, even when the server echoes it;
 * - a "gemini" pipeline's kind; unknown backend, unknown option, bad option value, NULL
 *   arguments (out-params untouched).
 *
 * usage: remote [MODEL_DIR | -]
 *   MODEL_DIR (models/digits): also checks that a local pipeline's kind is "local" and its
 *   metadata "{}"; "-" or nothing skips that (the valgrind run, where loading a model is slow). */
#define _POSIX_C_SOURCE 200809L
#include "common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define API_KEY "sk-test-Remote-0123456789abcdef"
#define MODEL "dg-test-image-model"
#define PROMPT "a red fox in the snow"
#define REVISED "A red fox standing in fresh snow, revised by the server"

static char sentinel_storage;
#define SENTINEL ((void *)&sentinel_storage)

/* ---- a PNG of known pixels, made here ------------------------------------------------------ */

enum { IMG_W = 3, IMG_H = 2 };
static const uint8_t IMG_RGB[IMG_H][IMG_W * 3] = {
    {255, 0, 0, 0, 255, 0, 0, 0, 255},
    {10, 20, 30, 200, 100, 50, 1, 2, 254},
};

static uint32_t crc32_of(const uint8_t *p, size_t n) {
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
    }
    return c ^ 0xffffffffu;
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Appends a chunk (length, type, data, CRC of type and data) at out + *len. */
static void png_chunk(uint8_t *out, size_t *len, const char *type, const uint8_t *data, size_t n) {
    uint8_t *c = out + *len;
    put32(c, (uint32_t)n);
    memcpy(c + 4, type, 4);
    if (n > 0) memcpy(c + 8, data, n);
    put32(c + 8 + n, crc32_of(c + 4, n + 4));
    *len += 12 + n;
}

/* IMG_RGB as an 8-bit RGB PNG: one zlib stream with a single stored (uncompressed) deflate block,
 * so no compressor is needed. Returns the length written to out (at least 256 bytes). */
static size_t make_png(uint8_t *out) {
    static const uint8_t signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    uint8_t ihdr[13] = {0};
    uint8_t raw[IMG_H * (1 + IMG_W * 3)];
    uint8_t idat[2 + 5 + sizeof raw + 4];
    size_t len = 0;
    uint32_t a = 1, b = 0;

    memcpy(out, signature, 8);
    len = 8;
    put32(ihdr, IMG_W);
    put32(ihdr + 4, IMG_H);
    ihdr[8] = 8; /* bit depth */
    ihdr[9] = 2; /* colour type: RGB */
    png_chunk(out, &len, "IHDR", ihdr, sizeof ihdr);

    for (int y = 0; y < IMG_H; y++) {
        raw[y * (1 + IMG_W * 3)] = 0; /* filter: none */
        memcpy(raw + y * (1 + IMG_W * 3) + 1, IMG_RGB[y], IMG_W * 3);
    }
    idat[0] = 0x78; /* deflate, 32K window */
    idat[1] = 0x01; /* no preset dictionary; (0x78 << 8 | 0x01) % 31 == 0 */
    idat[2] = 0x01; /* final block, stored */
    idat[3] = (uint8_t)(sizeof raw & 0xff);
    idat[4] = (uint8_t)(sizeof raw >> 8);
    idat[5] = (uint8_t)~idat[3];
    idat[6] = (uint8_t)~idat[4];
    memcpy(idat + 7, raw, sizeof raw);
    for (size_t i = 0; i < sizeof raw; i++) {
        a = (a + raw[i]) % 65521u;
        b = (b + a) % 65521u;
    }
    put32(idat + 7 + sizeof raw, (b << 16) | a);
    png_chunk(out, &len, "IDAT", idat, sizeof idat);
    png_chunk(out, &len, "IEND", NULL, 0);
    return len;
}

static char *base64(const uint8_t *p, size_t n) {
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;
    if (out == NULL) return NULL;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n) v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n) v |= p[i + 2];
        *o++ = alphabet[(v >> 18) & 63];
        *o++ = alphabet[(v >> 12) & 63];
        *o++ = i + 1 < n ? alphabet[(v >> 6) & 63] : '=';
        *o++ = i + 2 < n ? alphabet[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

/* ---- the scripted server -------------------------------------------------------------------- */

typedef enum {
    REPLY_IMAGE,      /* 200, one PNG as b64_json with a revised prompt */
    REPLY_500,        /* 500 with an OpenAI error object */
    REPLY_429,        /* 429 rate_limit_exceeded, retry-after-ms: 20 */
    REPLY_401_ECHO,   /* 401 whose message repeats the Authorization header it got */
    REPLY_NOT_JSON,   /* 200 with a text body */
    REPLY_SLOW_IMAGE, /* REPLY_IMAGE after 1.5 s */
    REPLY_MODERATION, /* 400 moderation_blocked, as OpenAI's safety system answers */
} reply_t;

static struct {
    pthread_mutex_t lock;
    int listen_fd;
    int port;
    volatile int stop; /* read and written under lock */
    char *b64_png;
    /* The script: reply i goes to request i (counted from the last serve()); the last one repeats. */
    reply_t script[4];
    int script_len, served;
    /* What the last request carried, and how many arrived since the last serve(). */
    int requests;
    char method[16], path[256], auth[256], content_type[128];
    char *body;
    int bad_request; /* a request the server could not read (no content-length, too big, ...) */
} srv = {PTHREAD_MUTEX_INITIALIZER, -1, 0, 0, NULL, {REPLY_IMAGE}, 1, 0, 0, "", "", "", "", NULL, 0};

/* Sets what the next requests are answered with, and resets the record. */
static void serve(int n, const reply_t *replies) {
    pthread_mutex_lock(&srv.lock);
    memcpy(srv.script, replies, (size_t)n * sizeof *replies);
    srv.script_len = n;
    srv.served = 0;
    srv.requests = 0;
    srv.method[0] = srv.path[0] = srv.auth[0] = srv.content_type[0] = '\0';
    free(srv.body);
    srv.body = NULL;
    srv.bad_request = 0;
    pthread_mutex_unlock(&srv.lock);
}
#define SERVE(...)                                           \
    do {                                                     \
        const reply_t replies_[] = {__VA_ARGS__};            \
        serve((int)(sizeof replies_ / sizeof *replies_), replies_); \
    } while (0)

static int requests_seen(void) {
    pthread_mutex_lock(&srv.lock);
    int n = srv.requests;
    pthread_mutex_unlock(&srv.lock);
    return n;
}

static int send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL); /* the client may be gone (a timeout) */
        if (k <= 0) return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* The value of header `name` (case-insensitive) in the header block `head`, copied to out. */
static void header_value(const char *head, const char *name, char *out, size_t cap) {
    size_t nlen = strlen(name);
    out[0] = '\0';
    for (const char *line = strstr(head, "\r\n"); line != NULL; line = strstr(line, "\r\n")) {
        line += 2;
        if (strncasecmp(line, name, nlen) == 0 && line[nlen] == ':') {
            const char *v = line + nlen + 1, *end = strstr(v, "\r\n");
            while (*v == ' ' || *v == '\t') v++;
            size_t n = end != NULL ? (size_t)(end - v) : strlen(v);
            if (n >= cap) n = cap - 1;
            memcpy(out, v, n);
            out[n] = '\0';
            return;
        }
    }
}

static void respond(int fd, int status, const char *reason, const char *extra_headers,
                    const char *content_type, const char *body) {
    char head[512];
    snprintf(head, sizeof head,
             "HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %zu\r\n%sconnection: close\r\n\r\n",
             status, reason, content_type, strlen(body), extra_headers);
    if (send_all(fd, head, strlen(head)) == 0) send_all(fd, body, strlen(body));
}

static void handle(int fd) {
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1);
    char *end_of_head = NULL, content_length[32];
    if (buf == NULL) return;
    /* The request head, then content-length bytes of body (the client must send one). */
    while (end_of_head == NULL && len < cap) {
        ssize_t k = recv(fd, buf + len, cap - len, 0);
        if (k <= 0) break;
        len += (size_t)k;
        buf[len] = '\0';
        end_of_head = strstr(buf, "\r\n\r\n");
    }
    if (end_of_head == NULL) {
        free(buf);
        return; /* a connection closed without a request */
    }
    end_of_head[2] = '\0'; /* head: request line and header lines, each ending in \r\n */
    header_value(buf, "content-length", content_length, sizeof content_length);
    size_t body_start = (size_t)(end_of_head + 4 - buf);
    size_t body_len = content_length[0] != '\0' ? strtoul(content_length, NULL, 10) : 0;
    int bad = content_length[0] == '\0' || body_start + body_len > cap;
    while (!bad && len < body_start + body_len) {
        ssize_t k = recv(fd, buf + len, cap - len, 0);
        if (k <= 0) break;
        len += (size_t)k;
    }
    bad = bad || len < body_start + body_len;

    pthread_mutex_lock(&srv.lock);
    srv.requests++;
    srv.bad_request |= bad;
    sscanf(buf, "%15s %255s", srv.method, srv.path);
    header_value(buf, "authorization", srv.auth, sizeof srv.auth);
    header_value(buf, "content-type", srv.content_type, sizeof srv.content_type);
    free(srv.body);
    srv.body = malloc(body_len + 1);
    if (srv.body != NULL) {
        memcpy(srv.body, buf + body_start, bad ? 0 : body_len);
        srv.body[bad ? 0 : body_len] = '\0';
    }
    int i = srv.served < srv.script_len ? srv.served : srv.script_len - 1;
    reply_t reply = srv.script[i];
    srv.served++;
    char auth[256];
    memcpy(auth, srv.auth, sizeof auth);
    pthread_mutex_unlock(&srv.lock);
    free(buf);

    char small[1024];
    switch (reply) {
    case REPLY_SLOW_IMAGE: {
        struct timespec delay = {1, 500000000L};
        nanosleep(&delay, NULL);
    } /* fall through */
    case REPLY_IMAGE: {
        size_t n = strlen(srv.b64_png) + 256;
        char *body = malloc(n);
        if (body == NULL) return;
        snprintf(body, n,
                 "{\"created\": 1, \"data\": [{\"b64_json\": \"%s\", \"revised_prompt\": \"%s\"}]}",
                 srv.b64_png, REVISED);
        respond(fd, 200, "OK", "", "application/json", body);
        free(body);
        break;
    }
    case REPLY_500:
        respond(fd, 500, "Internal Server Error", "", "application/json",
                "{\"error\": {\"message\": \"the image server exploded\", \"type\": \"server_error\"}}");
        break;
    case REPLY_429:
        respond(fd, 429, "Too Many Requests", "retry-after-ms: 20\r\n", "application/json",
                "{\"error\": {\"message\": \"Rate limit reached for images per minute\", "
                "\"type\": \"requests\", \"code\": \"rate_limit_exceeded\"}}");
        break;
    case REPLY_401_ECHO:
        snprintf(small, sizeof small,
                 "{\"error\": {\"message\": \"Incorrect API key provided: %s. Check your key.\", "
                 "\"type\": \"invalid_request_error\", \"code\": \"invalid_api_key\"}}",
                 auth);
        respond(fd, 401, "Unauthorized", "", "application/json", small);
        break;
    case REPLY_MODERATION:
        respond(fd, 400, "Bad Request", "", "application/json",
                "{\"error\": {\"message\": \"Your request was rejected by the safety system.\", "
                "\"type\": \"image_generation_user_error\", \"code\": \"moderation_blocked\"}}");
        break;
    case REPLY_NOT_JSON:
        respond(fd, 200, "OK", "", "text/html", "<html>a captive portal, not an image API</html>");
        break;
    }
}

static void *server_main(void *unused) {
    (void)unused;
    for (;;) {
        pthread_mutex_lock(&srv.lock);
        int stop = srv.stop;
        pthread_mutex_unlock(&srv.lock);
        if (stop) break;
        struct pollfd pfd = {srv.listen_fd, POLLIN, 0};
        if (poll(&pfd, 1, 50) <= 0) continue;
        int fd = accept(srv.listen_fd, NULL, NULL);
        if (fd < 0) continue;
        handle(fd);
        close(fd);
    }
    return NULL;
}

static pthread_t server_start(void) {
    struct sockaddr_in addr;
    socklen_t alen = sizeof addr;
    pthread_t thread;
    uint8_t png[512];
    int one = 1;

    srv.b64_png = base64(png, make_png(png));
    srv.listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    setsockopt(srv.listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (srv.b64_png == NULL || srv.listen_fd < 0 ||
        bind(srv.listen_fd, (struct sockaddr *)&addr, sizeof addr) != 0 ||
        listen(srv.listen_fd, 16) != 0 ||
        getsockname(srv.listen_fd, (struct sockaddr *)&addr, &alen) != 0) {
        perror("remote: cannot listen on 127.0.0.1");
        exit(1);
    }
    srv.port = ntohs(addr.sin_port);
    if (pthread_create(&thread, NULL, server_main, NULL) != 0) {
        fprintf(stderr, "remote: cannot start the server thread\n");
        exit(1);
    }
    return thread;
}

static void server_stop(pthread_t thread) {
    pthread_mutex_lock(&srv.lock);
    srv.stop = 1;
    pthread_mutex_unlock(&srv.lock);
    pthread_join(thread, NULL);
    close(srv.listen_fd);
    free(srv.b64_png);
    free(srv.body);
    srv.body = NULL;
}

/* ---- helpers ---------------------------------------------------------------------------------- */

/* As EXPECT_ERROR, and the message must not contain the API key. */
static void expect_error_no_key(const char *file, int line, dg_error_t *err, int code,
                                const char *needle, const char *what) {
    if (err != NULL && strstr(dg_error_message(err), API_KEY) != NULL) {
        fprintf(stderr, "%s:%d: FAIL: %s: the error message shows the API key: %s\n", file, line,
                what, dg_error_message(err));
        dg_test_failures++;
    }
    expect_error_at(file, line, err, code, needle, what);
}
#define EXPECT_REMOTE_ERROR(call, code, needle) \
    expect_error_no_key(__FILE__, __LINE__, (call), (code), (needle), #call)

static dg_generator_options_t *options(const char *max_retries, const char *timeout_s) {
    dg_generator_options_t *opts = NULL;
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1", srv.port);
    CHECK_OK(dg_generator_options_new(&opts));
    CHECK_OK(dg_generator_options_set(opts, "base_url", url));
    CHECK_OK(dg_generator_options_set(opts, "api_key", API_KEY));
    CHECK_OK(dg_generator_options_set(opts, "model", MODEL));
    CHECK_OK(dg_generator_options_set(opts, "max_retries", max_retries));
    CHECK_OK(dg_generator_options_set(opts, "timeout_s", timeout_s));
    return opts;
}

static dg_pipeline_t *remote_pipeline(const char *max_retries, const char *timeout_s) {
    dg_generator_options_t *opts = options(max_retries, timeout_s);
    dg_pipeline_t *p = NULL;
    CHECK_OK(dg_pipeline_new_remote("openai", opts, &p));
    dg_generator_options_free(opts);
    return p;
}

static dg_params_t *prompt_params(void) {
    dg_params_t *params = NULL;
    CHECK_OK(dg_params_new(&params));
    CHECK_OK(dg_params_set_prompt(params, PROMPT));
    return params;
}

typedef struct {
    int calls;
    int bad_size;
    uint32_t step, total, stage, stages;
    bool go_on;
} progress_log_t;

static bool on_progress(const dg_progress_t *p, void *user_data) {
    progress_log_t *log = user_data;
    log->calls++;
    if (p->struct_size != sizeof(dg_progress_t) ||
        p->struct_size < offsetof(dg_progress_t, stages) + sizeof p->stages) {
        log->bad_size = 1;
    } else {
        log->step = p->step;
        log->total = p->total;
        log->stage = p->stage;
        log->stages = p->stages;
    }
    return log->go_on;
}

/* ---- the tests ---------------------------------------------------------------------------------- */

static void test_null_and_bad_arguments(void) {
    dg_generator_options_t *opts = SENTINEL;
    dg_pipeline_t *p = SENTINEL;

    EXPECT_ERROR(dg_generator_options_new(NULL), DG_ERROR_NULL_ARG, "out");
    EXPECT_ERROR(dg_generator_options_set(NULL, "model", "x"), DG_ERROR_NULL_ARG, "opts");
    dg_generator_options_free(NULL);
    CHECK(strcmp(dg_pipeline_kind(NULL), "") == 0, "dg_pipeline_kind(NULL) should be \"\"");
    CHECK(strcmp(dg_images_metadata(NULL), "") == 0, "dg_images_metadata(NULL) should be \"\"");

    CHECK_OK(dg_generator_options_new(&opts));
    CHECK(opts != NULL && opts != SENTINEL, "dg_generator_options_new did not write *out");
    EXPECT_ERROR(dg_generator_options_set(opts, NULL, "x"), DG_ERROR_NULL_ARG, "key");
    EXPECT_ERROR(dg_generator_options_set(opts, "model", NULL), DG_ERROR_NULL_ARG, "value");
    EXPECT_ERROR(dg_generator_options_set(opts, "model", "bad \xff utf-8"), DG_ERROR_INVALID_ARG,
                 "value");

    EXPECT_ERROR(dg_pipeline_new_remote(NULL, opts, &p), DG_ERROR_NULL_ARG, "backend");
    CHECK(p == SENTINEL, "out-param written on error (NULL backend)");
    EXPECT_ERROR(dg_pipeline_new_remote("openai", opts, NULL), DG_ERROR_NULL_ARG, "out");
    EXPECT_ERROR(dg_pipeline_new_remote("dall-e-over-carrier-pigeon", opts, &p),
                 DG_ERROR_INVALID_ARG, "dall-e-over-carrier-pigeon");
    CHECK(p == SENTINEL, "out-param written on error (unknown backend)");
    EXPECT_ERROR(dg_pipeline_new_remote("", opts, &p), DG_ERROR_INVALID_ARG, NULL);
    CHECK(p == SENTINEL, "out-param written on error (empty backend)");

    /* Options are checked by dg_pipeline_new_remote, by name, and never echo the key. */
    CHECK_OK(dg_generator_options_set(opts, "api_key", API_KEY));
    CHECK_OK(dg_generator_options_set(opts, "no_such_option", "1"));
    EXPECT_REMOTE_ERROR(dg_pipeline_new_remote("openai", opts, &p), DG_ERROR_INVALID_ARG,
                        "no_such_option");
    CHECK(p == SENTINEL, "out-param written on error (unknown option)");
    CHECK_OK(dg_generator_options_set(opts, "no_such_option", "")); /* "" removes it */
    CHECK_OK(dg_generator_options_set(opts, "max_retries", "many"));
    EXPECT_REMOTE_ERROR(dg_pipeline_new_remote("openai", opts, &p), DG_ERROR_INVALID_ARG,
                        "max_retries");
    CHECK_OK(dg_generator_options_set(opts, "max_retries", "0"));
    CHECK_OK(dg_generator_options_set(opts, "base_url", "ftp://127.0.0.1/v1"));
    EXPECT_REMOTE_ERROR(dg_pipeline_new_remote("openai", opts, &p), DG_ERROR_INVALID_ARG,
                        "ftp://127.0.0.1/v1");
    CHECK(p == SENTINEL, "out-param written on error (bad base_url)");
    dg_generator_options_free(opts);

    /* A gemini pipeline: made without sending anything. */
    CHECK_OK(dg_generator_options_new(&opts));
    CHECK_OK(dg_generator_options_set(opts, "base_url", "http://127.0.0.1:9"));
    CHECK_OK(dg_generator_options_set(opts, "api_key", API_KEY));
    p = NULL;
    CHECK_OK(dg_pipeline_new_remote("gemini", opts, &p));
    CHECK(strcmp(dg_pipeline_kind(p), "gemini") == 0, "gemini kind \"%s\"", dg_pipeline_kind(p));
    dg_pipeline_free(p);
    dg_generator_options_free(opts);
}

static void test_generate(const dg_pipeline_t *p) {
    dg_params_t *params = prompt_params();
    dg_images_t *images = NULL;
    progress_log_t log = {0, 0, 0, 0, 0, 0, true};

    CHECK(strcmp(dg_pipeline_kind(p), "openai") == 0, "dg_pipeline_kind = \"%s\", expected openai",
          dg_pipeline_kind(p));
    CHECK(dg_pipeline_kind(p) == dg_pipeline_kind(p), "dg_pipeline_kind should be a static string");

    SERVE(REPLY_IMAGE);
    CHECK_OK(dg_pipeline_generate(p, params, on_progress, &log, NULL, &images));
    pthread_mutex_lock(&srv.lock);
    CHECK(srv.requests == 1, "the server got %d requests, expected 1", srv.requests);
    CHECK(!srv.bad_request, "the server could not read the request (no content-length?)");
    CHECK(strcmp(srv.method, "POST") == 0, "method %s, expected POST", srv.method);
    CHECK(strcmp(srv.path, "/v1/images/generations") == 0, "path %s", srv.path);
    CHECK(strcmp(srv.auth, "Bearer " API_KEY) == 0, "authorization \"%s\"", srv.auth);
    CHECK(strncmp(srv.content_type, "application/json", 16) == 0, "content-type \"%s\"",
          srv.content_type);
    const char *body = srv.body != NULL ? srv.body : "";
    size_t blen = strlen(body);
    CHECK(blen >= 2 && body[0] == '{' && body[blen - 1] == '}', "body is not a JSON object: %s", body);
    CHECK(strstr(body, "\"prompt\":\"" PROMPT "\"") != NULL, "body lacks the prompt: %s", body);
    CHECK(strstr(body, "\"model\":\"" MODEL "\"") != NULL, "body lacks the model: %s", body);
    CHECK(strstr(body, API_KEY) == NULL, "the key is in the body: %s", body);
    pthread_mutex_unlock(&srv.lock);

    CHECK(dg_images_count(images) == 1, "%zu images, expected 1", dg_images_count(images));
    const dg_image_t *img = dg_images_get(images, 0);
    CHECK(dg_image_width(img) == IMG_W && dg_image_height(img) == IMG_H,
          "image is %ux%u, the server sent %dx%d", dg_image_width(img), dg_image_height(img),
          IMG_W, IMG_H);
    CHECK(dg_image_channels(img) == 3, "channels %u", dg_image_channels(img));
    if (dg_image_width(img) == IMG_W && dg_image_height(img) == IMG_H) {
        size_t n = 0;
        uint8_t *rgb = packed_rgb(img, &n);
        CHECK(rgb != NULL && n == sizeof IMG_RGB && memcmp(rgb, IMG_RGB, n) == 0,
              "the image's pixels differ from the PNG the server sent");
        free(rgb);
    }
    CHECK(dg_images_get(images, 1) == NULL, "dg_images_get(images, 1) should be NULL");

    const char *meta = dg_images_metadata(images);
    CHECK(meta != NULL && meta[0] == '{', "metadata is not a JSON object: %s", meta);
    CHECK(strstr(meta, "\"revised_prompts\"") != NULL && strstr(meta, REVISED) != NULL,
          "metadata lacks the revised prompt: %s", meta);
    CHECK(strstr(meta, "\"model\":\"" MODEL "\"") != NULL, "metadata lacks the model: %s", meta);
    CHECK(strstr(meta, API_KEY) == NULL, "metadata shows the API key: %s", meta);
    CHECK(dg_images_metadata(images) == meta, "metadata should be owned by the images (same pointer)");

    CHECK(log.calls >= 1, "the progress callback was never called");
    CHECK(!log.bad_size, "progress struct_size is not sizeof(dg_progress_t)");
    CHECK(log.stage == 1 && log.stages == 1, "progress stage %u/%u, expected 1/1", log.stage,
          log.stages);
    CHECK(log.step >= 1 && log.step <= log.total, "progress step %u of %u", log.step, log.total);
    dg_images_free(images);

    /* The params were copied: the same params object serves a second request. */
    images = NULL;
    CHECK_OK(dg_pipeline_generate(p, params, NULL, NULL, NULL, &images));
    CHECK(dg_images_count(images) == 1 && requests_seen() == 2, "second request");
    dg_images_free(images);
    dg_params_free(params);
}

static void test_best_effort(const dg_pipeline_t *p) {
    dg_params_t *params = prompt_params();
    dg_images_t *images = SENTINEL;

    /* A negative prompt the OpenAI API has no field for: refused before anything is sent. */
    CHECK_OK(dg_params_set_negative_prompt(params, "blurry, watermark"));
    SERVE(REPLY_IMAGE);
    EXPECT_REMOTE_ERROR(dg_pipeline_generate(p, params, NULL, NULL, NULL, &images),
                        DG_ERROR_UNSUPPORTED, "negative_prompt");
    CHECK(images == SENTINEL, "out-param written on error (unsupported)");
    CHECK(requests_seen() == 0, "an unsupported request was sent anyway (%d requests)",
          requests_seen());

    EXPECT_ERROR(dg_params_set(params, "best_effort", "perhaps"), DG_ERROR_INVALID_ARG, "perhaps");
    CHECK_OK(dg_params_set(params, "best_effort", "true"));
    images = NULL;
    CHECK_OK(dg_pipeline_generate(p, params, NULL, NULL, NULL, &images));
    CHECK(dg_images_count(images) == 1, "best effort: %zu images", dg_images_count(images));
    const char *meta = dg_images_metadata(images);
    const char *ignored = strstr(meta, "\"ignored\"");
    CHECK(ignored != NULL && strstr(ignored, "negative_prompt") != NULL,
          "metadata should list negative_prompt under \"ignored\": %s", meta);
    pthread_mutex_lock(&srv.lock);
    CHECK(srv.requests == 1, "best effort: %d requests", srv.requests);
    CHECK(srv.body != NULL && strstr(srv.body, "blurry") == NULL && strstr(srv.body, PROMPT) != NULL,
          "best effort: the body should carry the prompt and not the ignored negative prompt: %s",
          srv.body != NULL ? srv.body : "(none)");
    pthread_mutex_unlock(&srv.lock);
    dg_images_free(images);
    dg_params_free(params);
}

static void test_retry_and_cancel(const dg_pipeline_t *p) {
    dg_params_t *params = prompt_params();
    dg_images_t *images = NULL;
    dg_cancel_token_t *token = NULL;

    /* max_retries 1: a 429 (retry-after-ms 20) then a success is one successful generate. */
    SERVE(REPLY_429, REPLY_IMAGE);
    CHECK_OK(dg_pipeline_generate(p, params, NULL, NULL, NULL, &images));
    CHECK(dg_images_count(images) == 1, "after a retry: %zu images", dg_images_count(images));
    CHECK(requests_seen() == 2, "429 then success: %d requests, expected 2", requests_seen());
    dg_images_free(images);

    /* ... and two 429s exhaust it. */
    SERVE(REPLY_429);
    images = SENTINEL;
    EXPECT_REMOTE_ERROR(dg_pipeline_generate(p, params, NULL, NULL, NULL, &images),
                        DG_ERROR_RATE_LIMITED, "429");
    CHECK(images == SENTINEL, "out-param written on error (rate limited)");
    CHECK(requests_seen() == 2, "429 twice with max_retries 1: %d requests, expected 2",
          requests_seen());

    /* A token raised before the request: nothing is sent. */
    SERVE(REPLY_IMAGE);
    CHECK_OK(dg_cancel_token_new(&token));
    dg_cancel_token_cancel(token);
    EXPECT_ERROR(dg_pipeline_generate(p, params, NULL, NULL, token, &images), DG_ERROR_CANCELLED,
                 NULL);
    CHECK(images == SENTINEL, "out-param written on error (cancelled)");
    CHECK(requests_seen() == 0, "a cancelled request was sent (%d requests)", requests_seen());
    dg_cancel_token_free(token);

    /* The progress callback returning false cancels too. */
    progress_log_t log = {0, 0, 0, 0, 0, 0, false};
    EXPECT_ERROR(dg_pipeline_generate(p, params, on_progress, &log, NULL, &images),
                 DG_ERROR_CANCELLED, NULL);
    CHECK(images == SENTINEL, "out-param written on error (progress cancelled)");
    CHECK(log.calls == 1, "progress called %d times after returning false", log.calls);
    dg_params_free(params);
}

static void test_failures(void) {
    dg_pipeline_t *p = remote_pipeline("0", "30");
    dg_params_t *params = prompt_params();
    dg_images_t *images = SENTINEL;

    SERVE(REPLY_500);
    EXPECT_REMOTE_ERROR(dg_pipeline_generate(p, params, NULL, NULL, NULL, &images),
                        DG_ERROR_REMOTE, "500");
    CHECK(requests_seen() == 1, "500 with max_retries 0: %d requests, expected 1", requests_seen());
    SERVE(REPLY_500);
    EXPECT_REMOTE_ERROR(dg_pipeline_generate(p, params, NULL, NULL, NULL, &images),
                        DG_ERROR_REMOTE, "the image server exploded");

    SERVE(REPLY_429);
    EXPECT_REMOTE_ERROR(dg_pipeline_generate(p, params, NULL, NULL, NULL, &images),
                        DG_ERROR_RATE_LIMITED, "429");

    /* A server that repeats the key in its error: the library must not pass it on. */
    SERVE(REPLY_401_ECHO);
    EXPECT_REMOTE_ERROR(dg_pipeline_generate(p, params, NULL, NULL, NULL, &images),
                        DG_ERROR_REMOTE, "401");
    CHECK(requests_seen() == 1, "401: %d requests, expected 1 (never retried)", requests_seen());

    SERVE(REPLY_MODERATION);
    EXPECT_REMOTE_ERROR(dg_pipeline_generate(p, params, NULL, NULL, NULL, &images),
                        DG_ERROR_REFUSED, "safety system");
    CHECK(requests_seen() == 1, "a refusal: %d requests, expected 1 (never retried)", requests_seen());

    SERVE(REPLY_NOT_JSON);
    EXPECT_REMOTE_ERROR(dg_pipeline_generate(p, params, NULL, NULL, NULL, &images),
                        DG_ERROR_REMOTE, NULL);
    CHECK(images == SENTINEL, "out-param written on error (remote failures)");
    dg_pipeline_free(p);

    /* An answer slower than timeout_s. */
    p = remote_pipeline("0", "0.3");
    SERVE(REPLY_SLOW_IMAGE);
    EXPECT_REMOTE_ERROR(dg_pipeline_generate(p, params, NULL, NULL, NULL, &images),
                        DG_ERROR_TIMEOUT, NULL);
    CHECK(images == SENTINEL, "out-param written on error (timeout)");
    dg_pipeline_free(p);
    dg_params_free(params);
}

static void test_local_kind(const char *model_dir) {
    dg_runtime_t *rt = test_runtime();
    dg_pipeline_t *p = NULL;
    dg_params_t *params = NULL;
    dg_images_t *images = NULL;
    CHECK_OK(dg_pipeline_load(rt, model_dir, &p));
    CHECK(strcmp(dg_pipeline_kind(p), "local") == 0, "local kind \"%s\"", dg_pipeline_kind(p));
    CHECK_OK(dg_params_new(&params));
    CHECK_OK(dg_params_set_steps(params, 1));
    CHECK_OK(dg_params_set_seed(params, 1));
    CHECK_OK(dg_pipeline_generate(p, params, NULL, NULL, NULL, &images));
    CHECK(strcmp(dg_images_metadata(images), "{}") == 0, "local metadata %s",
          dg_images_metadata(images));
    dg_images_free(images);
    dg_params_free(params);
    dg_pipeline_free(p);
    dg_runtime_free(rt);
}

int main(int argc, char **argv) {
    pthread_t server = server_start();

    test_null_and_bad_arguments();
    dg_pipeline_t *p = remote_pipeline("1", "30");
    test_generate(p);
    test_best_effort(p);
    test_retry_and_cancel(p);
    dg_pipeline_free(p);
    test_failures();
    if (argc > 1 && strcmp(argv[1], "-") != 0) test_local_kind(argv[1]);

    server_stop(server);
    return test_result("remote");
}
