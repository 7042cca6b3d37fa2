/* Training oracle for tests/test_zoo_batchnorm.py: Debian's libdarknet.so (pjreddie's Darknet, CPU).
 * usage: darknet_train_step CFG BEFORE_WEIGHTS AFTER_WEIGHTS INPUT_F32 TRUTH_F32 STEPS
 * Builds CFG (the cfg's own batch) with Darknet's random init after srand(0) (musl's rand, below),
 * sets every batch-norm rolling variance to 1 (and allocates the x, x_norm, mean_delta and
 * variance_delta buffers that make_batchnorm_layer forgets: without them [batchnorm] crashes),
 * saves BEFORE_WEIGHTS, then calls train_network
 * STEPS times on the same batch (INPUT_F32: batch x inputs floats, TRUTH_F32: batch x truths
 * floats), printing "loss %.9g" after each, saves AFTER_WEIGHTS, and prints each layer's output of
 * the last forward pass: "index outputs v0 v1 ..." with %.9g (batch x outputs values).
 * STEPS -k: k steps, then network_predict on the batch (inference: rolling statistics), whose
 * outputs are printed. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "darknet.h"

/* musl's rand and srand, so Darknet draws what the guest's rng draws */
static uint64_t seed;
void srand(unsigned s) { seed = s - 1; }
int rand(void)
{
    seed = 6364136223846793005ULL * seed + 1;
    return seed >> 33;
}

static float *read_floats(const char *path, size_t n)
{
    float *x = calloc(n, sizeof(float));
    FILE *f = fopen(path, "rb");
    if (!x || !f || fread(x, sizeof(float), n, f) != n) exit(3);
    fclose(f);
    return x;
}

int main(int argc, char **argv)
{
    if (argc != 7) return 2;
    srand(0);
    network *net = load_network(argv[1], NULL, 0);
    for (int i = 0; i < net->n; ++i) {
        layer *l = &net->layers[i];
        if (l->rolling_variance)
            for (int j = 0; j < l->out_c; ++j) l->rolling_variance[j] = 1;
        if (l->type == BATCHNORM) { /* make_batchnorm_layer forgets these: forward would crash */
            l->x = calloc((size_t)l->batch * l->outputs, sizeof(float));
            l->x_norm = calloc((size_t)l->batch * l->outputs, sizeof(float));
            l->mean_delta = calloc(l->out_c, sizeof(float));
            l->variance_delta = calloc(l->out_c, sizeof(float));
        }
    }
    save_weights(net, argv[2]);
    int batch = net->batch, steps = atoi(argv[6]);
    float *x = read_floats(argv[4], (size_t)batch * net->inputs);
    float *y = read_floats(argv[5], (size_t)batch * net->truths);
    data d = {0};
    d.X.rows = d.y.rows = batch;
    d.X.cols = net->inputs;
    d.y.cols = net->truths;
    d.X.vals = calloc(batch, sizeof(float *));
    d.y.vals = calloc(batch, sizeof(float *));
    for (int b = 0; b < batch; ++b) {
        d.X.vals[b] = x + (size_t)b * net->inputs;
        d.y.vals[b] = y + (size_t)b * net->truths;
    }
    for (int s = 0; s < abs(steps); ++s) printf("loss %.9g\n", train_network(net, d));
    if (steps < 0) network_predict(net, x);
    save_weights(net, argv[3]);
    for (int i = 0; i < net->n; ++i) {
        layer l = net->layers[i];
        int n = l.outputs * l.batch;
        printf("%d %d", i, n);
        for (int j = 0; j < n; ++j) printf(" %.9g", l.output ? l.output[j] : 0.f);
        printf("\n");
    }
    free(d.X.vals); free(d.y.vals); free(x); free(y);
    free_network(net);
    return 0;
}
