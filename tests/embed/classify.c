/* Embeds a model compiled with `inceptc compile --emit lib`: reads a float32 input tensor (raw,
 * the model's input shape) from argv[1], runs it, and writes the raw float32 output to argv[2].
 * compiler/tests/executable.rs builds and runs it; its output is checked against the interpreter. */
#include <stdio.h>
#include <stdlib.h>

#include "inceptc_model.h"

static int fail(const char *what) {
    fprintf(stderr, "%s: %s\n", what, inceptc_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s INPUT.f32 OUTPUT.f32\n", argv[0]);
        return 2;
    }
    int64_t in_shape[4], out_shape[4];
    if (inceptc_input_shape(in_shape) != 4 || inceptc_output_shape(out_shape) < 1) {
        return fail("shape");
    }
    size_t in_len = INCEPTC_INPUT_LEN, out_len = INCEPTC_OUTPUT_LEN;
    float *x = malloc(in_len * sizeof(float)), *y = malloc(out_len * sizeof(float));
    FILE *f = fopen(argv[1], "rb");
    if (!f || fread(x, sizeof(float), in_len, f) != in_len) {
        fprintf(stderr, "cannot read %zu floats from %s\n", in_len, argv[1]);
        return 1;
    }
    fclose(f);
    inceptc_context *context = inceptc_create(2);
    if (!context) {
        return fail("create");
    }
    /* A wrong length is refused with a message, not a crash. */
    if (inceptc_run(context, x, in_len - 1, y, out_len) == 0 || !inceptc_last_error()[0]) {
        fprintf(stderr, "a short input was accepted\n");
        return 1;
    }
    if (inceptc_run(context, x, in_len, y, out_len) != 0) {
        return fail("run");
    }
    inceptc_destroy(context);
    f = fopen(argv[2], "wb");
    if (!f || fwrite(y, sizeof(float), out_len, f) != out_len) {
        fprintf(stderr, "cannot write %s\n", argv[2]);
        return 1;
    }
    fclose(f);
    printf("input [%lld, %lld, %lld, %lld] -> %zu floats\n", (long long)in_shape[0],
           (long long)in_shape[1], (long long)in_shape[2], (long long)in_shape[3], out_len);
    free(x);
    free(y);
    return 0;
}
