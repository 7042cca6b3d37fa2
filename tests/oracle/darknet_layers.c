/* Oracle for tests/test_zoo_layers.py: Debian's libdarknet.so (pjreddie's Darknet, CPU build).
 * usage: darknet_layers CFG SAVE_WEIGHTS INPUT_F32
 * Builds CFG with Darknet's random init after srand(0) (musl's rand, below), batch 1, sets every
 * batch-norm rolling variance to 1 (0 would divide by ~0), saves the weights, runs
 * network_predict on the raw float32 input file and prints each layer's output, one line per
 * layer: "index outputs v0 v1 ..." with %.9g (float32 round-trips). An INPUT_F32 of "-" only
 * saves the weights (scripts/bench_zoo.py makes its random weights this way). */
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

int main(int argc, char **argv)
{
    if (argc != 4) return 2;
    srand(0);
    network *net = load_network(argv[1], NULL, 0);
    set_batch_network(net, 1);
    for (int i = 0; i < net->n; ++i) {
        layer *l = &net->layers[i];
        if (l->batch_normalize && l->rolling_variance)
            for (int j = 0; j < l->out_c; ++j) l->rolling_variance[j] = 1;
    }
    save_weights(net, argv[2]);
    if (strcmp(argv[3], "-") == 0) {
        free_network(net);
        return 0;
    }
    float *x = calloc(net->inputs, sizeof(float));
    FILE *f = fopen(argv[3], "rb");
    if (!f || fread(x, sizeof(float), net->inputs, f) != (size_t)net->inputs) return 3;
    fclose(f);
    network_predict(net, x);
    for (int i = 0; i < net->n; ++i) {
        layer l = net->layers[i];
        printf("%d %d", i, l.outputs);
        for (int j = 0; j < l.outputs; ++j) printf(" %.9g", l.output[j]);
        printf("\n");
    }
    free(x);
    free_network(net);
    return 0;
}
