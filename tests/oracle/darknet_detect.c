/* Oracle for tests/test_zoo_detection.py: Debian's libdarknet.so (pjreddie's Darknet, CPU build).
 * usage: darknet_detect CFG WEIGHTS INPUT_F32 [IM_W IM_H THRESH]
 *        darknet_detect CFG WEIGHTS INPUT_F32 TRUTH_F32
 * Loads CFG with WEIGHTS (written by the test), batch 1, runs network_predict on the raw
 * float32 input and prints each layer's output, one line per layer: "index outputs v0 v1 ..."
 * (%.9g: float32 round-trips). With IM_W IM_H THRESH it then prints, as test_detector does,
 * the boxes of get_network_boxes (hier 0.5, relative) after do_nms_sort (nms .45, the last
 * layer's classes): "det x y w h objectness p0 p1 ...", one line per box in array order.
 * With TRUTH_F32 (net->truths floats) it runs one training forward pass instead (train = 1,
 * forward_network: the layers print their own lines, e.g. "Region Avg IOU: ..."), prints
 * "cost %.9g" (the last layer's cost), "out index outputs v0 ..." and "delta index outputs v0 ..."
 * for every layer, then
 * backward_network and the deltas again ("back index outputs v0 ...").
 * With TRUTH_F32 BATCH the training pass runs on BATCH images (INPUT_F32 and TRUTH_F32 hold BATCH
 * rows; "out", "delta" and "back" lines then hold BATCH*outputs values) and "lcost index cost"
 * follows "cost" for every layer with a cost.
 * rand() is musl's (below), so anything drawn is what the guest draws. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "darknet.h"

static uint64_t seed;
void srand(unsigned s) { seed = s - 1; }
int rand(void)
{
    seed = 6364136223846793005ULL * seed + 1;
    return seed >> 33;
}

int main(int argc, char **argv)
{
    if (argc < 4 || argc > 7) return 2;
    int batch = argc == 6 ? atoi(argv[5]) : 1;
    if (batch < 1) return 2;
    srand(0);
    network *net = load_network(argv[1], argv[2], 0);
    set_batch_network(net, batch);
    float *x = calloc((size_t)net->inputs * batch, sizeof(float));
    FILE *f = fopen(argv[3], "rb");
    if (!f || fread(x, sizeof(float), (size_t)net->inputs * batch, f) != (size_t)net->inputs * batch) return 3;
    fclose(f);
    if (argc == 5 || argc == 6) {
        float *truth = calloc((size_t)net->truths * batch, sizeof(float));
        f = fopen(argv[4], "rb");
        if (!f || fread(truth, sizeof(float), (size_t)net->truths * batch, f) != (size_t)net->truths * batch)
            return 4;
        fclose(f);
        net->input = x;
        net->truth = truth;
        net->train = 1;
        forward_network(net);
        layer last = net->layers[net->n - 1];
        printf("cost %.9g\n", last.cost ? last.cost[0] : 0.f);
        if (argc == 6)
            for (int i = 0; i < net->n; ++i)
                if (net->layers[i].cost) printf("lcost %d %.9g\n", i, net->layers[i].cost[0]);
        for (int i = 0; i < net->n; ++i) {
            layer l = net->layers[i];
            printf("out %d %d", i, l.outputs * batch);
            for (int j = 0; j < l.outputs * batch; ++j) printf(" %.9g", l.output[j]);
            printf("\n");
        }
        for (int i = 0; i < net->n; ++i) {
            layer l = net->layers[i];
            printf("delta %d %d", i, l.outputs * batch);
            for (int j = 0; j < l.outputs * batch; ++j) printf(" %.9g", l.delta ? l.delta[j] : 0.f);
            printf("\n");
        }
        backward_network(net);
        for (int i = 0; i < net->n; ++i) {
            layer l = net->layers[i];
            printf("back %d %d", i, l.outputs * batch);
            for (int j = 0; j < l.outputs * batch; ++j) printf(" %.9g", l.delta ? l.delta[j] : 0.f);
            printf("\n");
        }
        return 0;
    }
    network_predict(net, x);
    for (int i = 0; i < net->n; ++i) {
        layer l = net->layers[i];
        printf("%d %d", i, l.outputs);
        for (int j = 0; j < l.outputs; ++j) printf(" %.9g", l.output[j]);
        printf("\n");
    }
    if (argc == 7) {
        int nboxes = 0;
        layer l = net->layers[net->n - 1];
        detection *dets = get_network_boxes(net, atoi(argv[4]), atoi(argv[5]), atof(argv[6]), .5, 0, 1, &nboxes);
        do_nms_sort(dets, nboxes, l.classes, .45);
        for (int i = 0; i < nboxes; ++i) {
            printf("det %.9g %.9g %.9g %.9g %.9g", dets[i].bbox.x, dets[i].bbox.y, dets[i].bbox.w, dets[i].bbox.h,
                   dets[i].objectness);
            for (int j = 0; j < l.classes; ++j) printf(" %.9g", dets[i].prob[j]);
            printf("\n");
        }
        free_detections(dets, nboxes);
    }
    free(x);
    free_network(net);
    return 0;
}
