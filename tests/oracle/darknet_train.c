/* Oracle for tests/test_zoo_misc.py: one forward (inference or training), backward and update
 * step of Debian's libdarknet.so (pjreddie's Darknet, CPU build) on a hand-made cfg.
 * usage: darknet_train CFG SAVE_WEIGHTS INPUT_F32 TRUTH_F32|- train(0|1)
 * Builds CFG with Darknet's random init after srand(0) (musl's rand, below) at the cfg's batch,
 * then perturbs what random init leaves constant so the comparison means something: biases
 * b[j] = .05*(j%7) - .1, batch-norm scales 1 + .1*(j%3), rolling means .02*(j%5),
 * rolling variances 1 + .25*(j%4); saves the weights; reads batch*inputs floats (and, to train,
 * batch*truths of truth); then
 *   train=0: network_predict;
 *   train=1: forward_network and backward_network with net->train = 1 and the truth, then
 *            update_network.
 * Prints, one line each, "TAG index count v0 v1 ..." with %.9g (float32 round-trips):
 * O = each layer's output; with train=1 also D = each layer's delta, WU/BU = the weight and
 * bias gradients of layers with weights (before the update), W/B = their weights and biases
 * after the update, and "COST value" (the network's cost). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "darknet.h"

/* musl's rand and srand, so Darknet draws what the guest's rng draws */
static uint64_t seed;
void srand(unsigned s) { seed = s - 1; }
int rand(void)
{
    seed = 6364136223846793005ULL * seed + 1;
    return seed >> 33;
}

static void print(const char *tag, int i, const float *x, long n)
{
    printf("%s %d %ld", tag, i, x ? n : 0L);
    for (long j = 0; x && j < n; ++j) printf(" %.9g", x[j]);
    printf("\n");
}

static int read_floats(const char *path, float *x, long n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    long got = (long)fread(x, sizeof(float), n, f);
    fclose(f);
    return got == n;
}

static int nbiases(const layer *l)
{
    if (l->type == CONVOLUTIONAL || l->type == DECONVOLUTIONAL) return l->n;
    if (l->type == CONNECTED) return l->outputs;
    return 0;
}

static long nweights(const layer *l)
{
    if (l->type == CONNECTED) return (long)l->inputs * l->outputs;
    return l->nweights;
}

int main(int argc, char **argv)
{
    if (argc != 6) return 2;
    int train = atoi(argv[5]);
    srand(0);
    network *net = load_network(argv[1], NULL, 0);
    for (int i = 0; i < net->n; ++i) {
        layer *l = &net->layers[i];
        int nb = nbiases(l);
        if (l->biases)
            for (int j = 0; j < nb; ++j) l->biases[j] = .05f * (j % 7) - .1f;
        if (l->batch_normalize && l->rolling_variance)
            for (int j = 0; j < l->out_c; ++j) {
                l->scales[j] = 1 + .1f * (j % 3);
                l->rolling_mean[j] = .02f * (j % 5);
                l->rolling_variance[j] = 1 + .25f * (j % 4);
            }
    }
    save_weights(net, argv[2]);
    long nin = (long)net->inputs * net->batch, ntruth = (long)net->truths * net->batch;
    float *x = calloc(nin, sizeof(float)), *t = calloc(ntruth, sizeof(float));
    if (!read_floats(argv[3], x, nin)) return 3;
    if (train && !read_floats(argv[4], t, ntruth)) return 4;
    if (!train) {
        network_predict(net, x);
    } else {
        net->input = x;
        net->truth = t;
        net->train = 1;
        net->delta = 0;
        forward_network(net);
        backward_network(net);
    }
    for (int i = 0; i < net->n; ++i) {
        layer *l = &net->layers[i];
        print("O", i, l->output, (long)l->outputs * l->batch);
        if (!train) continue;
        print("D", i, l->delta, (long)l->outputs * l->batch);
        if (l->weight_updates) print("WU", i, l->weight_updates, nweights(l));
        if (l->bias_updates) print("BU", i, l->bias_updates, nbiases(l));
    }
    if (train) {
        printf("COST %.9g\n", *net->cost);
        update_network(net);
        for (int i = 0; i < net->n; ++i) {
            layer *l = &net->layers[i];
            if (l->weights) print("W", i, l->weights, nweights(l));
            if (l->biases) print("B", i, l->biases, nbiases(l));
        }
    }
    return 0;
}
