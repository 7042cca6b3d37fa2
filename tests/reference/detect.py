"""Detection in pure Python (float32 step by step): the references for kernels.yolo_candidates
and kernels.nms_sort, with musl's qsort (smoothsort) emulated."""

import math

from dlserver.boxes import Detection, correct_yolo_boxes
from dlserver.rng import f32


def get_yolo_detections(layer, im_w: int, im_h: int, netw: int, neth: int, thresh: float) -> list:
    """boxes.get_yolo_detections in pure Python."""
    out = layer.output
    hw = layer.w * layer.h
    dets = []
    for i in range(hw):
        row, col = divmod(i, layer.w)
        for a in range(layer.n):
            objectness = out[layer.entry_index(0, a * hw + i, 4)]
            if not objectness > thresh:
                continue
            box = layer.entry_index(0, a * hw + i, 0)
            anchor = layer.mask[a]
            x = f32(f32(col + out[box]) / layer.w)
            y = f32(f32(row + out[box + hw]) / layer.h)
            w = f32(math.exp(out[box + 2 * hw]) * layer.biases[2 * anchor] / netw)
            h = f32(math.exp(out[box + 3 * hw]) * layer.biases[2 * anchor + 1] / neth)
            prob = []
            first = layer.entry_index(0, a * hw + i, 5)
            for j in range(layer.classes):
                p = f32(objectness * out[first + j * hw])
                prob.append(p if p > thresh else 0.0)
            dets.append(Detection(x, y, w, h, objectness, prob))
    correct_yolo_boxes(dets, im_w, im_h, netw, neth)
    return dets


def _overlap(x1: float, w1: float, x2: float, w2: float) -> float:
    left = max(f32(x1 - f32(w1 / 2)), f32(x2 - f32(w2 / 2)))
    right = min(f32(x1 + f32(w1 / 2)), f32(x2 + f32(w2 / 2)))
    return f32(right - left)


def box_intersection(a: Detection, b: Detection) -> float:
    w = _overlap(a.x, a.w, b.x, b.w)
    h = _overlap(a.y, a.h, b.y, b.h)
    if w < 0 or h < 0:
        return 0.0
    return f32(w * h)


def box_iou(a: Detection, b: Detection) -> float:
    i = box_intersection(a, b)
    u = f32(f32(f32(a.w * a.h) + f32(b.w * b.h)) - i)
    if u == 0:
        return math.nan if i == 0 else math.copysign(math.inf, i)
    return f32(i / u)


def musl_qsort(items: list, cmp) -> None:
    """Sort `items` in place exactly as musl's (and so wasi-libc's) qsort does: Dijkstra's
    smoothsort over Leonardo heaps. qsort is not stable: which of equal elements lands
    first depends on the algorithm, and Darknet's output order depends on that."""
    nel = len(items)
    if nel == 0:
        return
    a = items
    # Leonardo numbers L(k+2) = L(k) + L(k+1) + 1, up to the first one >= nel
    lp = [1, 1]
    while lp[-1] < nel:
        lp.append(lp[-2] + lp[-1] + 1)

    def pntz(p: int) -> int:  # trailing zeros of p - 1 (p is odd and > 1)
        x = p - 1
        return (x & -x).bit_length() - 1

    def cycle(ar: list) -> None:  # a[ar[0]] <- a[ar[1]] <- ... <- a[ar[-1]] <- old a[ar[0]]
        if len(ar) < 2:
            return
        tmp = a[ar[0]]
        for i in range(len(ar) - 1):
            a[ar[i]] = a[ar[i + 1]]
        a[ar[-1]] = tmp

    def sift(head: int, pshift: int) -> None:
        ar = [head]
        while pshift > 1:
            rt = head - 1
            lf = head - 1 - lp[pshift - 2]
            if cmp(a[ar[0]], a[lf]) >= 0 and cmp(a[ar[0]], a[rt]) >= 0:
                break
            if cmp(a[lf], a[rt]) >= 0:
                ar.append(lf)
                head = lf
                pshift -= 1
            else:
                ar.append(rt)
                head = rt
                pshift -= 2
        cycle(ar)

    def trinkle(head: int, p: int, pshift: int, trusty: bool) -> None:
        ar = [head]
        while p != 1:
            stepson = head - lp[pshift]
            if cmp(a[stepson], a[ar[0]]) <= 0:
                break
            if not trusty and pshift > 1:
                rt = head - 1
                lf = head - 1 - lp[pshift - 2]
                if cmp(a[rt], a[stepson]) >= 0 or cmp(a[lf], a[stepson]) >= 0:
                    break
            ar.append(stepson)
            head = stepson
            trail = pntz(p)
            p >>= trail
            pshift += trail
            trusty = False
        if not trusty:
            cycle(ar)
            sift(head, pshift)

    head, high = 0, nel - 1
    p, pshift = 1, 1  # bit k of p: a Leonardo heap of order pshift + k
    while head < high:
        if (p & 3) == 3:
            sift(head, pshift)
            p >>= 2
            pshift += 2
        else:
            if lp[pshift - 1] >= high - head:
                trinkle(head, p, pshift, False)
            else:
                sift(head, pshift)
            if pshift == 1:
                p <<= 1
                pshift = 0
            else:
                p <<= pshift - 1
                pshift = 1
        p |= 1
        head += 1
    trinkle(head, p, pshift, False)
    while pshift != 1 or p != 1:
        if pshift <= 1:
            trail = pntz(p)
            p >>= trail
            pshift += trail
        else:
            p <<= 2
            pshift -= 2
            p ^= 7
            p >>= 1
            trinkle(head - lp[pshift] - 1, p, pshift + 1, True)
            p <<= 1
            p |= 1
            trinkle(head - 1, p, pshift, True)
        head -= 1


def nms_comparator(klass: int):
    """Darknet's comparator with sort_class = klass: descending by prob[klass] (objectness when
    klass < 0): 1 if a < b, -1 if a > b."""
    return lambda a, b: _compare(a, b, klass)


def _compare(a: Detection, b: Detection, k: int) -> int:
    if k >= 0:
        pa, pb = a.prob[k], b.prob[k]
    else:
        pa, pb = a.objectness, b.objectness
    if pa < pb:
        return 1
    if pa > pb:
        return -1
    return 0


def do_nms_sort(dets: list, classes: int, thresh: float) -> list:
    """boxes.do_nms_sort in pure Python, with the smoothsort emulation above."""
    thresh = f32(thresh)
    k = len(dets) - 1
    i = 0
    while i <= k:
        if dets[i].objectness == 0:
            dets[i], dets[k] = dets[k], dets[i]
            k -= 1
            i -= 1
        i += 1
    total = k + 1
    head = dets[:total]
    for klass in range(classes):
        musl_qsort(head, nms_comparator(klass))
        for i in range(total):
            a = head[i]
            if a.prob[klass] == 0:
                continue
            for j in range(i + 1, total):
                b = head[j]
                if box_iou(a, b) > thresh:
                    b.prob[klass] = 0.0
    dets[:total] = head
    return dets
