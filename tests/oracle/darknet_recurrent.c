/* Oracle for tests/test_zoo_recurrent.py: Debian's libdarknet.so (pjreddie's Darknet, CPU build)
 * on recurrent layers, whose input is time_steps x batch rows (so no set_batch_network).
 * usage: darknet_recurrent CFG WEIGHTS INPUT_F32 [SAVE_WEIGHTS | TRUTH_F32 SAVE_WEIGHTS]
 * Builds CFG after srand(0) (musl's rand, below), loads WEIGHTS ("": Darknet's random init),
 * reads net->batch * net->inputs floats of input. Without TRUTH: saves the weights if asked,
 * then network_predict. With TRUTH (net->batch * net->truths floats): one train_network_datum
 * step, then saves the weights. Prints each layer's output for the whole batch, one line per
 * layer, "index count v0 v1 ..." (%.9g: float32 round-trips), and "cost c".
 * Darknet's CPU rnn layer allocates one state slot but writes time_steps+1 of them in
 * training (a heap overflow); the harness gives it the steps+1 slots it uses. */
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

static int read_floats(const char *path, float *x, size_t n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t got = fread(x, sizeof(float), n, f);
    fclose(f);
    return got == n;
}

int main(int argc, char **argv)
{
    if (argc < 4 || argc > 6) return 2;
    srand(0);
    network *net = load_network(argv[1], argv[2], 0);
    for (int i = 0; i < net->n; ++i) {
        layer *l = &net->layers[i];
        if (l->type == RNN) {
            free(l->state);
            l->state = calloc((size_t)(l->steps + 1) * l->batch * l->outputs, sizeof(float));
        }
    }
    size_t n = (size_t)net->batch * net->inputs;
    float *x = calloc(n, sizeof(float));
    if (!read_floats(argv[3], x, n)) return 3;
    if (argc == 6) {
        memcpy(net->input, x, n * sizeof(float));
        if (!read_floats(argv[4], net->truth, (size_t)net->batch * net->truths)) return 4;
        float cost = train_network_datum(net);
        printf("cost %.9g\n", cost);
        save_weights(net, argv[5]);
    } else {
        if (argc == 5) save_weights(net, argv[4]);
        network_predict(net, x);
    }
    for (int i = 0; i < net->n; ++i) {
        layer l = net->layers[i];
        int count = l.outputs * net->batch;
        printf("%d %d", i, count);
        for (int j = 0; j < count; ++j) printf(" %.9g", l.output[j]);
        printf("\n");
    }
    free(x);
    return 0;
}
