/* A vision-language model from C: a caption (streamed token by token), a question about two
 * images, and prompt enhancement for an image-editing model. `make c-test` builds and runs it
 * (natively and under valgrind), so it stays current with include/diffgentor.h.
 *
 * usage: vlm_example [MODEL_DIR [IMAGE [IMAGE2]]]
 *   default: models/tiny-qwen2.5-vl models/vlm-images/shapes_96x64.png models/vlm-images/square_80x80.png
 * build:   cc vlm_example.c $(pkg-config --cflags --libs diffgentor) -o vlm_example */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "diffgentor.h"

/* Prints the error, frees it and exits: an example's error handling. */
static void check(dg_error_t *err) {
    if (err != NULL) {
        fprintf(stderr, "error %d: %s\n", (int)dg_error_code(err), dg_error_message(err));
        dg_error_free(err);
        exit(1);
    }
}

/* Called with every new token; returning false would cancel the request. */
static bool print_token(const dg_vlm_token_t *token, void *user_data) {
    (void)user_data;
    fwrite(token->text, 1, token->text_len, stdout);
    fflush(stdout);
    return true;
}

static void print_result(const dg_vlm_result_t *result) {
    size_t n = 0;
    const int64_t *ids = dg_vlm_result_token_ids(result, &n);
    printf("token ids:");
    for (size_t i = 0; i < n; i++) printf(" %lld", (long long)ids[i]);
    printf("\n%zu prompt tokens, finish %s, timings %s\n", dg_vlm_result_prompt_tokens(result),
           dg_vlm_result_finish_reason(result), dg_vlm_result_timings(result));
}

int main(int argc, char **argv) {
    const char *model = argc > 1 ? argv[1] : "models/tiny-qwen2.5-vl";
    const char *image = argc > 2 ? argv[2] : "models/vlm-images/shapes_96x64.png";
    const char *image2 = argc > 3 ? argv[3] : "models/vlm-images/square_80x80.png";
    dg_runtime_t *rt = NULL;
    dg_vlm_t *vlm = NULL;
    dg_vlm_params_t *params = NULL;
    dg_vlm_result_t *result = NULL;

    check(dg_runtime_new(NULL, &rt)); /* CPU; ONNX Runtime from DG_ORT_DYLIB_PATH or the usual places */
    check(dg_vlm_load(rt, model, &vlm));
    dg_runtime_free(rt); /* the model keeps what it needs */
    printf("model: %s\n", dg_vlm_info(vlm));

    /* 1. Captioning: the image, then the instruction; tokens printed as they come. */
    check(dg_vlm_params_new(&params));
    check(dg_vlm_params_add_image_file(params, "user", image));
    check(dg_vlm_params_add_text(params, "user", "Describe this image."));
    check(dg_vlm_params_set(params, "max_new_tokens", "16"));
    printf("caption: ");
    check(dg_vlm_generate(vlm, params, print_token, NULL, NULL, &result));
    printf("\n");
    print_result(result);
    dg_vlm_result_free(result);
    dg_vlm_params_free(params);

    /* 2. Visual question answering about two images, with a system message and sampling. */
    check(dg_vlm_params_new(&params));
    check(dg_vlm_params_add_text(params, "system", "Answer in one short sentence."));
    check(dg_vlm_params_add_image_file(params, "user", image));
    check(dg_vlm_params_add_image_file(params, "user", image2));
    check(dg_vlm_params_add_text(params, "user", "What is different between the two pictures?"));
    check(dg_vlm_params_set(params, "max_new_tokens", "24"));
    check(dg_vlm_params_set(params, "temperature", "0.7"));
    check(dg_vlm_params_set(params, "top_p", "0.9"));
    check(dg_vlm_params_set(params, "seed", "42"));
    check(dg_vlm_params_set(params, "stop", "\n\n"));
    check(dg_vlm_generate(vlm, params, NULL, NULL, NULL, &result));
    printf("answer: %s\n", dg_vlm_result_text(result, NULL));
    print_result(result);
    dg_vlm_result_free(result);
    dg_vlm_params_free(params);

    /* 3. Prompt enhancement: rewrite an edit instruction, reading the image it applies to. */
    check(dg_vlm_params_new_enhance("qwen_image_edit", "make the circle blue", &params));
    check(dg_vlm_params_add_image_file(params, NULL, image));
    check(dg_vlm_params_set(params, "max_new_tokens", "48"));
    check(dg_vlm_generate(vlm, params, NULL, NULL, NULL, &result));
    printf("enhanced prompt: %s\n", dg_vlm_result_enhanced_prompt(result));
    print_result(result);
    dg_vlm_result_free(result);
    dg_vlm_params_free(params);

    dg_vlm_free(vlm);
    return 0;
}
