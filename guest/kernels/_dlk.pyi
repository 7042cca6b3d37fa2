"""_dlk: the C kernels of dl-server (guest/kernels; bindings.c is their Python face).

Buffers are anything with the buffer protocol (numpy arrays, array.array, bytearray,
bytes where read-only will do). Float buffers hold float32, "int32" ones int32, "int16"
ones int16, "bytes" ones uint8; "writable" buffers are written in place. Every buffer is
checked to hold what the kernel touches: ValueError names the one that is too short.
All functions take their arguments by position only.
"""

from typing import Final

from typing_extensions import Buffer

# activation codes (activate, gradient, conv_forward, conv_backward, connected_backward)
ACT_LINEAR: Final[int]
ACT_RELU: Final[int]
ACT_LEAKY: Final[int]
ACT_LOGISTIC: Final[int]
ACT_RELIE: Final[int]
ACT_RAMP: Final[int]
ACT_TANH: Final[int]
ACT_PLSE: Final[int]
ACT_ELU: Final[int]
ACT_LOGGY: Final[int]
ACT_STAIR: Final[int]
ACT_HARDTAN: Final[int]
ACT_LHTAN: Final[int]
ACT_SELU: Final[int]

# cost_forward types
COST_L2: Final[int]
COST_MASKED: Final[int]
COST_SMOOTH: Final[int]
COST_L1: Final[int]

# jpeg_color modes
JPEG_GRAY: Final[int]
JPEG_YCBCR: Final[int]
JPEG_RGB: Final[int]
JPEG_CMYK: Final[int]
JPEG_YCCK: Final[int]

# jpeg_decode_scan's negative results (errors in the data)
JPEG_ERR_HUFFMAN: Final[int]  # a bit pattern no code of the table matches
JPEG_ERR_EOF: Final[int]  # the file ends inside the entropy-coded data
JPEG_ERR_SHORT: Final[int]  # a marker arrives before the scan's last block
JPEG_ERR_RESTART: Final[int]  # a marker other than RSTn where a restart is due
JPEG_ERR_DC: Final[int]  # DC magnitude category above 15
JPEG_ERR_REFINE: Final[int]  # AC refinement symbol with a magnitude other than 1
JPEG_ERR_TRAILING: Final[int]  # entropy-coded bytes after the scan's last block
RULE_MEDIAN: Final[int]
RULE_TRIMMED: Final[int]
RULE_CLOSEST: Final[int]
OPT_AVGM: Final[int]
OPT_ADAM: Final[int]
OPT_YOGI: Final[int]
OPT_ADAGRAD: Final[int]

# ------------------------------------------------------------------ gemm.c

def gemm(
    ta: int,
    tb: int,
    M: int,
    N: int,
    K: int,
    alpha: float,
    A: Buffer,
    lda: int,
    B: Buffer,
    ldb: int,
    beta: float,
    C: Buffer,
    ldc: int,
    /,
) -> None:
    """C = beta*C + alpha*op(A) op(B), row-major; C writable. Darknet's gemm, bit for bit."""

# ------------------------------------------------------------------ conv.c

def im2col(im: Buffer, c: int, h: int, w: int, ksize: int, stride: int, pad: int, col: Buffer, /) -> None: ...
def col2im(col: Buffer, c: int, h: int, w: int, ksize: int, stride: int, pad: int, im: Buffer, /) -> None:
    """im += the adjoint of im2col (im writable)."""

def conv2d_direct(
    src: Buffer,
    batch: int,
    c: int,
    h: int,
    w: int,
    weights: Buffer,
    n: int,
    size: int,
    pad: int,
    out: Buffer,
    workspace: Buffer,
    /,
) -> None:
    """Stride-1 convolution into out (writable); workspace: conv2d_direct_workspace(...) floats."""

def conv2d_direct_workspace(c: int, h: int, w: int, size: int, pad: int, /) -> int: ...
def conv_forward(
    src: Buffer,
    batch: int,
    c: int,
    h: int,
    w: int,
    weights: Buffer,
    n: int,
    size: int,
    pad: int,
    biases: Buffer,
    act: int,
    out: Buffer,
    /,
) -> None:
    """Stride-1 convolution + bias + activation (size <= 8, pad < size) into out."""

def conv_backward(
    src: Buffer,
    batch: int,
    c: int,
    h: int,
    w: int,
    out: Buffer,
    delta: Buffer,
    n: int,
    size: int,
    pad: int,
    act: int,
    weights: Buffer,
    bias_upd: Buffer,
    weight_upd: Buffer,
    prev_delta: Buffer | None,
    /,
) -> None:
    """delta *= act'(out) (written back); bias_upd, weight_upd and prev_delta (if given) accumulate."""

# ------------------------------------------------------------------ connected.c

def connected_backward(
    src: Buffer,
    batch: int,
    inputs: int,
    out: Buffer,
    delta: Buffer,
    outputs: int,
    act: int,
    weights: Buffer,
    bias_upd: Buffer | None,
    weight_upd: Buffer,
    prev_delta: Buffer | None,
    /,
) -> None:
    """bias_upd None: not accumulated (a batch-normalised layer's batchnorm_backward does it)."""

# ------------------------------------------------------------------ pool.c

def maxpool_forward(
    src: Buffer,
    batch: int,
    c: int,
    h: int,
    w: int,
    size: int,
    stride: int,
    pad: int,
    out: Buffer,
    indexes: Buffer,
    /,
) -> None:
    """indexes: int32, the flat input index of each maximum (-1: none)."""

def maxpool_backward(out_delta: Buffer, indexes: Buffer, n: int, in_delta: Buffer, n_in: int, /) -> None: ...
def maxpool_forward_2x2(
    src: Buffer, planes: int, h: int, w: int, out: Buffer, indexes: Buffer | None, /
) -> None: ...
def avgpool_forward(src: Buffer, planes: int, n: int, out: Buffer, /) -> None:
    """out[p] = (sequential float sum of src[p][0 .. n-1]) / n"""

def avgpool_backward(out_delta: Buffer, planes: int, n: int, in_delta: Buffer, /) -> None:
    """in_delta[p][i] += out_delta[p] / n"""

# ------------------------------------------------------------------ blas.c

def axpy(n: int, a: float, x: Buffer, y: Buffer, /) -> None:
    """y += a*x"""

def scal(n: int, a: float, x: Buffer, /) -> None:
    """x *= a"""

def fill(n: int, a: float, x: Buffer, /) -> None:
    """x = a"""

def activate(x: Buffer, n: int, act: int, /) -> None: ...
def gradient(y: Buffer, n: int, act: int, delta: Buffer, /) -> None:
    """delta *= act'(y), y the activated output."""

def add_bias(out: Buffer, biases: Buffer, batch: int, n: int, size: int, /) -> None: ...
def shortcut(
    batch: int,
    w1: int,
    h1: int,
    c1: int,
    add: Buffer,
    w2: int,
    h2: int,
    c2: int,
    s1: float,
    s2: float,
    out: Buffer,
    /,
) -> None:
    """out = s1*out + s2*add over the common part, strided or sampled (Darknet shortcut_cpu)."""

def backward_bias(bias_updates: Buffer, delta: Buffer, batch: int, n: int, size: int, /) -> None: ...
def batchnorm_infer(
    x: Buffer, mean: Buffer, var: Buffer, scales: Buffer, biases: Buffer, batch: int, n: int, size: int, /
) -> None: ...
def sgd_update(
    biases: Buffer,
    bias_upd: Buffer,
    weights: Buffer,
    weight_upd: Buffer,
    step: float,
    momentum: float,
    decay: float,
    /,
) -> None: ...

# ------------------------------------------------------------------ loss.c

def softmax(src: Buffer, batch: int, n: int, temperature: float, out: Buffer, /) -> None: ...
def softmax_cost(y: Buffer, truth: Buffer, delta: Buffer, n: int, /) -> float:
    """delta = truth - y; returns the cross-entropy sum."""

def sse_cost(x: Buffer, truth: Buffer, delta: Buffer, n: int, /) -> float:
    """delta = truth - x; returns the sum of squares."""

# ------------------------------------------------------------------ dropout.c, random.c (musl rand() state)

def dropout_forward(x: Buffer, n: int, probability: float, scale: float, rand: Buffer, state: int, /) -> int:
    """Returns the new rand() state; rand receives the n draws."""

def dropout_backward(delta: Buffer, n: int, probability: float, scale: float, rand: Buffer, /) -> None: ...
def rand_uniform_fill(out: Buffer, n: int, a: float, b: float, scale: float, state: int, /) -> int: ...
def rand_normal_fill(
    out: Buffer, n: int, scale: float, state: int, spare: tuple[float, float] | None, /
) -> tuple[int, tuple[float, float] | None]:
    """Returns (state, spare): spare is Box-Muller's cached pair (r1, r2), as dlserver.rng.Random.spare."""

def rand_below(n: int, m: int, state: int, /) -> tuple[int, list[int]]:
    """(state, [rand() % m for n draws])"""

# ------------------------------------------------------------------ image.c, draw.c

def pixels_to_chw(src: Buffer, width: int, height: int, comps: int, out: Buffer, /) -> None:
    """src: bytes, comps (1-4) per pixel; out: 3 float planes."""

def chw_to_pixels(im: Buffer, w: int, h: int, c: int, out: Buffer, /) -> None:
    """out: interleaved bytes (unsigned char)(255*v)."""

def resize_image(
    src: Buffer, sw: int, sh: int, c: int, dst: Buffer, dw: int, dh: int, part: Buffer, /
) -> None:
    """Darknet's bilinear resize; part: dw*sh*c floats of workspace."""

def image_paste(
    src: Buffer, sw: int, sh: int, c: int, dst: Buffer, dw: int, dh: int, dx: int, dy: int, multiply: bool, /
) -> None: ...
def upsample(
    src: Buffer, batch: int, c: int, h: int, w: int, stride: int, scale: float, out: Buffer, forward: bool, /
) -> None:
    """forward: out = scale * nearest(input); else input += scale * (sum of out over each cell)."""

def draw_box_width(
    im: Buffer,
    w: int,
    h: int,
    x1: int,
    y1: int,
    x2: int,
    y2: int,
    width: int,
    r: float,
    g: float,
    b: float,
    /,
) -> None: ...
def draw_label(
    im: Buffer,
    w: int,
    h: int,
    label: Buffer,
    lw: int,
    lh: int,
    row: int,
    col: int,
    r: float,
    g: float,
    b: float,
    /,
) -> None: ...

# ------------------------------------------------------------------ yolo.c

def yolo_candidates(
    output: Buffer,
    w: int,
    h: int,
    n: int,
    classes: int,
    anchors: Buffer,
    netw: int,
    neth: int,
    thresh: float,
    boxes: Buffer,
    objectness: Buffer,
    probs: Buffer,
    /,
) -> int:
    """Returns the number of candidates written."""

def nms_sort(
    boxes: Buffer, objectness: Buffer, probs: Buffer, n: int, classes: int, thresh: float, order: Buffer, /
) -> int:
    """Darknet's do_nms_sort; order: int32. Returns how many boxes take part."""

def musl_sort_desc(keys: Buffer, n: int, order: Buffer, /) -> None:
    """musl qsort (smoothsort) order of keys, descending. Only in the native build (tests)."""

# ------------------------------------------------------------------ png.c

def png_unfilter(src: Buffer, height: int, rowbytes: int, bpp: int, out: Buffer, /) -> None: ...
def png_expand_palette(indexes: Buffer, palette: Buffer, n: int, comps: int, out: Buffer, /) -> None: ...
def png_load_chw(data: Buffer, width: int, height: int, out: Buffer, /) -> bool:
    """True, or False: not a plain 8-bit PNG of that size (the Python decoder decides)."""

def png_load_rows(files: list[Buffer], width: int, height: int, out: Buffer, /) -> list[int]:
    """png_load_chw of each file into row r of out; returns the rows it did not take."""

# ------------------------------------------------------------------ jpeg.c

def jpeg_decode_scan(data: Buffer, start: int, params: Buffer, tables: Buffer, coeffs: Buffer, /) -> int:
    """Decodes one scan from data[start:] into coeffs (int16, 64 per block, natural order).

    params (int32), 9 for the scan then 8 per scan component:
      [0] progressive (0/1), [1] Ss, [2] Se, [3] Ah, [4] Al, [5] restart interval (0: none),
      [6] MCUs across, [7] MCUs down, [8] Ns (1-4);
      per component: [0] first coefficient in coeffs, [1] blocks per row and [2] per column
      of its coefficient array, [3] H, [4] V, [5] blocks across and [6] down of a
      non-interleaved scan, [7] DC table | AC table << 4.
    tables: 8 x (16 counts + 256 values), DC 0-3 then AC 0-3.
    Returns the offset of the marker ending the scan (len(data) when none), or a
    negative JPEG_ERR_* code.
    """

def jpeg_idct(
    coeffs: Buffer,
    first: int,
    blocks_w: int,
    blocks_h: int,
    quant: Buffer,
    plane: Buffer,
    plane_first: int,
    /,
) -> None:
    """Dequantise (quant: 64 uint16, natural order) and IDCT blocks from coeffs[first:] into
    plane[plane_first:]."""

def jpeg_color(planes: Buffer, params: Buffer, width: int, height: int, mode: int, out: Buffer, /) -> None:
    """Upsample and colour-convert the component planes into out (1 or 3 bytes per pixel).

    params (int32), 5 per component: [0] first byte in planes, [1] row stride, [2] rows
    holding samples, [3] Hmax/H, [4] Vmax/V. mode: JPEG_*.
    """

def jpeg_encode_scan(
    pixels: Buffer, width: int, height: int, comp: int, ytable: Buffer, uvtable: Buffer, huffman: Buffer, /
) -> bytes:
    """stbi_write_jpg's entropy-coded data; huffman: 4 x (16 counts + 256 values)."""

# ------------------------------------------------------------------ io.c

def read_files(paths: list[str], max_bytes: int = -1, /) -> list[bytes | None]:
    """Each file's bytes, or None where stat/open/pread failed, it is not a regular file or it
    is longer than max_bytes (>= 0)."""

# ------------------------------------------------------------------ loss.c, normalize.c (issue 15)

def cost_forward(cost_type: int, x: Buffer, truth: Buffer, delta: Buffer, err: Buffer, n: int, /) -> float:
    """Darknet's CPU cost layer (COST_*): err, delta = t - x (or its L1/smooth form); the sum of err.
    COST_MASKED first sets x[i] = -1234 where truth[i] == -1234."""

def logistic_x_ent(p: Buffer, truth: Buffer, delta: Buffer, err: Buffer, n: int, /) -> float:
    """err = -t log p - (1-t) log(1-p); delta = t - p; the sum of err."""

def l2norm_forward(in_: Buffer, batch: int, c: int, spatial: int, out: Buffer, /) -> None:
    """out = in divided by the L2 norm over channels of each pixel."""

def lrn_forward(
    in_: Buffer,
    batch: int,
    c: int,
    spatial: int,
    size: int,
    alpha: float,
    beta: float,
    kappa: float,
    squared: Buffer,
    norms: Buffer,
    out: Buffer,
    /,
) -> None:
    """Darknet's local response normalisation across channels (norms kept for backward)."""

def lrn_backward(norms: Buffer, delta: Buffer, n: int, beta: float, prev_delta: Buffer, /) -> None:
    """prev_delta = norms^-beta * delta (Darknet's approximate backward, overwriting)."""

# ------------------------------------------------------------------ batchnorm.c

def batchnorm_forward_train(
    out: Buffer,
    x: Buffer,
    x_norm: Buffer,
    mean: Buffer,
    var: Buffer,
    rolling_mean: Buffer,
    rolling_var: Buffer,
    scales: Buffer,
    biases: Buffer,
    batch: int,
    n: int,
    size: int,
    /,
) -> None:
    """Batch statistics into mean/var, rolling averages updated, out normalised, scaled and biased
    in place (x: out before, x_norm: out normalised)."""

def batchnorm_backward(
    x: Buffer,
    x_norm: Buffer,
    delta: Buffer,
    mean: Buffer,
    var: Buffer,
    scales: Buffer,
    scale_upd: Buffer,
    bias_upd: Buffer,
    mean_delta: Buffer,
    var_delta: Buffer,
    batch: int,
    n: int,
    size: int,
    /,
) -> None:
    """scale_upd and bias_upd accumulate; delta becomes the delta of the layer's pre-BN output."""

# ------------------------------------------------------------------ recurrent.c

def rnn_mul(n: int, x: Buffer, y: Buffer, /) -> None:
    """y *= x"""

def rnn_weighted_sum(n: int, a: Buffer, b: Buffer, s: Buffer, c: Buffer, /) -> None:
    """c = s*a + (1-s)*b"""

def rnn_weighted_delta(
    n: int, a: Buffer, b: Buffer, s: Buffer, da: Buffer | None, db: Buffer | None, ds: Buffer, dc: Buffer, /
) -> None:
    """da += dc*s; db += dc*(1-s); ds += dc*(a-b)"""

def rnn_mult_add(n: int, a: Buffer, b: Buffer, c: Buffer, /) -> None:
    """c += a*b"""

# ------------------------------------------------------------------ region.c, local.c (detection family)

def reorg(x: Buffer, w: int, h: int, c: int, batch: int, stride: int, forward: bool, out: Buffer, /) -> None:
    """Darknet reorg_cpu over batch*w*h*c values (stride^2 must divide c)."""

def flatten(x: Buffer, size: int, layers: int, batch: int, forward: bool, out: Buffer, /) -> None:
    """Darknet flatten (planes <-> interleaved), out of place."""

def crop(
    src: Buffer,
    batch: int,
    c: int,
    h: int,
    w: int,
    out_h: int,
    out_w: int,
    dh: int,
    dw: int,
    flip: bool,
    scale: float,
    trans: float,
    out: Buffer,
    /,
) -> None:
    """out = src[window at (dh, dw), mirrored if flip]*scale + trans (forward_crop_layer)."""

def softmax_strided(
    src: Buffer,
    n: int,
    batch: int,
    batch_offset: int,
    groups: int,
    group_offset: int,
    stride: int,
    temperature: float,
    out: Buffer,
    /,
) -> None:
    """Darknet softmax_cpu: a softmax of n values every stride, per batch row and group."""

def region_boxes(
    output: Buffer,
    w: int,
    h: int,
    n: int,
    classes: int,
    coords: int,
    background: bool,
    biases: Buffer,
    thresh: float,
    parent: Buffer,
    group_size: Buffer,
    group_offset: Buffer,
    child: Buffer,
    tree_thresh: float,
    boxes: Buffer,
    objectness: Buffer,
    probs: Buffer,
    /,
) -> None:
    """get_region_detections before correct_region_boxes (tree arrays int32, empty: no tree)."""

def detection_boxes(
    output: Buffer,
    side: int,
    n: int,
    classes: int,
    sqrt: bool,
    w: int,
    h: int,
    thresh: float,
    boxes: Buffer,
    objectness: Buffer,
    probs: Buffer,
    /,
) -> None:
    """get_detection_detections (YOLOv1): boxes in pixels of a w x h image."""

def local_forward(
    src: Buffer,
    batch: int,
    c: int,
    h: int,
    w: int,
    size: int,
    stride: int,
    pad: int,
    n: int,
    weights: Buffer,
    biases: Buffer,
    out: Buffer,
    workspace: Buffer,
    /,
) -> None:
    """Locally connected layer before its activation: out = biases + W[location] . im2col(src)."""

def local_backward(
    src: Buffer,
    batch: int,
    c: int,
    h: int,
    w: int,
    size: int,
    stride: int,
    pad: int,
    n: int,
    weights: Buffer,
    delta: Buffer,
    bias_updates: Buffer,
    weight_updates: Buffer,
    prev_delta: Buffer | None,
    workspace: Buffer,
    /,
) -> None:
    """Gradients of the locally connected layer (delta already times act'(out))."""

def region_delta(
    output: Buffer,
    delta: Buffer,
    batch: int,
    w: int,
    h: int,
    n: int,
    classes: int,
    coords: int,
    biases: Buffer,
    truth: Buffer,
    thresh: float,
    scales: Buffer,
    rescore: bool,
    background: bool,
    bias_match: bool,
    softmax: bool,
    seen: int,
    class_map: Buffer,
    parent: Buffer,
    group: Buffer,
    group_size: Buffer,
    group_offset: Buffer,
    stats: Buffer,
    /,
) -> None:
    """forward_region_layer's training deltas; stats: cost, avg_iou, recall, avg_cat, avg_obj,
    avg_anyobj, count, class_count (sums)."""

# ------------------------------------------------------------------ yolo.c (training)

def yolo_delta(
    output: Buffer,
    delta: Buffer,
    batch: int,
    w: int,
    h: int,
    n: int,
    classes: int,
    mask: Buffer,
    total: int,
    biases: Buffer,
    netw: int,
    neth: int,
    truth: Buffer,
    max_boxes: int,
    ignore_thresh: float,
    truth_thresh: float,
    stats: Buffer,
    /,
) -> None:
    """forward_yolo_layer's training deltas (mask: int32); stats: cost, avg_iou, recall, recall75,
    avg_cat, avg_obj, avg_anyobj, count, class_count (sums)."""

# robust.c: aggregation rules beyond the mean (dlserver.rules)
def pair_sqdist(models: list[Buffer], n: int, D: Buffer, /) -> None:
    """D[i*k+j] += sum (x_i - x_j)^2 over n floats, in double (k = len(models))."""

def column_rule(rule: int, models: list[Buffer], n: int, param: int, out: Buffer, /) -> None:
    """Per coordinate over the models: RULE_MEDIAN, RULE_TRIMMED (param k), RULE_CLOSEST (param beta)."""

def combine(models: list[Buffer], coefs: Buffer, n: int, out: Buffer, /) -> None:
    """out = f32(sum_i coefs[i] * x_i), in double."""

def prox_add(n: int, c: float, w: Buffer, g: Buffer, upd: Buffer, /) -> None:
    """upd += c * (w - g) in float32 steps (FedProx)."""

def clip_update(n: int, s: float, g: Buffer, x: Buffer, /) -> None:
    """x = g + (x - g) * s in float32 steps."""

def gauss_add(x: Buffer, n: int, std: float, key: Buffer, counter: int, /) -> int:
    """x += std * N(0, 1) from ChaCha20(key) blocks from counter on; returns the next block."""

def fedopt(kind: int, n: int, x: Buffer, a: Buffer, m: Buffer, v: Buffer, params: Buffer, /) -> None:
    """One FedAvgM/FedAdam/FedYogi/FedAdagrad step: x (global) updated from a (mean), state m, v."""

def fast_supported() -> bool:
    """Whether the fast kernels can run here (wasm: always; natively: the CPU has FMA)."""

def set_fast_mode(on: bool, /) -> bool:
    """Fast kernels (fused multiply-add) on or off; returns the previous mode."""

def fast_mode() -> bool:
    """Whether the fast kernels are on."""

def winograd_weights(W: Buffer, n: int, c: int, m: int, U: Buffer, /) -> None:
    """U[xi][f][ch] = (G g G^T)[xi]: the F(m x m, 3 x 3) transform of n x c 3x3 kernels (m = 2 or 4)."""

def conv_winograd(
    src: Buffer,
    batch: int,
    c: int,
    h: int,
    w: int,
    U: Buffer,
    n: int,
    pad: int,
    m: int,
    fused: bool,
    out: Buffer,
    /,
) -> None:
    """out = 3x3 stride-1 convolution of input by the kernels U transforms (Winograd F(m x m, 3 x 3));
    fused: U is the 3x3 kernels, transformed as they are used."""
