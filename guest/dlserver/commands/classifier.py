"""`classifier predict|valid|train` (Darknet examples/classifier.c, docs/darknet-contract.md §5-6)."""

import os
import re
import sys
import time
from array import array

from .. import client_rules, limits
from ..buffers import allow_for_weights, view, zeros
from ..config import read_data_cfg, read_list
from ..dataset import TrainingData, load_valid_batch
from ..errors import DLServerError
from ..files import check_appendable
from ..image.load import load_image_color
from ..image.ops import letterbox_image
from ..limits import trunc_int
from ..network import parse_network_cfg
from ..rng import Random, f32
from ..schedule import learning_rate
from ..weights import load_weights, save_weights
from ..work import check_work

VALID_BATCH = 100
# Darknet's two printf lines per validated image.
VALID_LINES = "%s, %d, %f, %f, \n%d: top 1: %f, top %d: %f\n"


def run(argv) -> None:
    """`classifier train|valid|predict [data] [cfg] [weights] [image]`, flags -t, -clear, -seed."""
    if argv.argc < 4:
        raise DLServerError(f"usage: {argv[0]} {argv[1]} [train/predict/valid] [cfg] [weights (optional)]")
    top = argv.find_int("-t", 0)
    clear = argv.find_arg("-clear")
    seed = argv.find_int("-seed", None)
    prox = argv.find_values("-prox", 2)
    clip = argv.find_str("-clip", None)
    data, cfg, weights, filename = argv[3], argv[4], argv[5], argv[6]
    if cfg is None:
        raise DLServerError(f"usage: {argv[0]} {argv[1]} {argv[2]} [data] [cfg] [weights (optional)]")
    command = argv[2]
    if (prox is not None or clip is not None) and command != "train":
        raise DLServerError(f"-prox and -clip apply to classifier train, not to {command}")
    if command == "train":
        client = ClientRules(prox, clip, weights)
        train_classifier(data, cfg, weights, clear, seed, client)
    elif command == "valid":
        validate_classifier(data, cfg, weights)
    elif command == "predict":
        predict_classifier(data, cfg, weights, filename, top)
    else:
        raise DLServerError(f"Not an option under classifier: {command}")


def load_network(cfg: str, weights: str | None, clear: bool = False, batch: int | None = None):
    """Parse a cfg and load weights when a path is given (Darknet load_network); `batch` as
    parse_network_cfg's."""
    allow_for_weights(weights)
    net = parse_network_cfg(cfg, init_rng=None if weights else Random(), batch=batch)
    if weights:
        load_weights(net, weights)
    if clear:
        net.seen = 0
    return net


def top_k(values, k: int) -> list[int]:
    """Indexes of the k largest values, descending; ties keep the lower index first."""
    # Darknet's insertion loop puts equal values in index order: a stable descending sort.
    return sorted(range(len(values)), key=values.__getitem__, reverse=True)[:k]


def top_hits(row: list[float], klass: int, k: int) -> tuple[bool, bool]:
    """(top_k(row, k)[0] == klass, klass in top_k(row, k)) without sorting indexes: klass's rank
    in the stable descending order is the count of larger values plus equal ones before it."""
    total = sum(row)
    if total != total or klass < 0:  # a NaN (or inf - inf): the general way; no label: no hit
        indexes = top_k(row, k)
        return indexes[0] == klass, klass in indexes
    value = row[klass]
    rank = sorted(row, reverse=True).index(value) + row[:klass].count(value)
    return rank == 0, rank < k


def _check_input_geometry(net, what: str, fewer_channels: bool = False) -> None:
    """An image network of 3 channels; with fewer_channels also 1 or 2 (they read the first
    planes of the RGB image, the red one first, as Darknet's network_predict does)."""
    channels_ok = 1 <= net.c <= 3 if fewer_channels else net.c == 3
    if net.w < 1 or net.h < 1 or not channels_ok:
        wanted = "channels 1 to 3" if fewer_channels else "channels=3"
        raise DLServerError(
            f"{net.cfg_path}: {what} needs an image network (width, height, {wanted}),"
            f" got {net.w}x{net.h}x{net.c}"
        )


def hierarchy_predictions(pred, n: int, tree) -> None:
    """tree.c hierarchy_predictions with only_leaves: each class times its parent's (parents
    come first, so a leaf gets the product along its path), then every non-leaf to 0."""
    parent = tree.parent
    for j in range(n):
        if parent[j] >= 0:
            pred[j] = f32(pred[j] * pred[parent[j]])
    for j in range(n):
        if not tree.leaf[j]:
            pred[j] = 0.0


def _hierarchy(net):
    """Darknet's net->hierarchy: the tree of the last softmax layer (None if it has none)."""
    softmaxes = [layer for layer in net.layers if layer.kind == "softmax"]
    return softmaxes[-1].tree if softmaxes else None


def _label_of(path: str, labels: list[str]) -> int:
    for j, label in enumerate(labels):
        if label in path:
            return j
    return -1


def predict_classifier(datacfg: str, cfg: str, weights: str | None, filename: str | None, top: int) -> None:
    """Classify one image: stderr `<file>: Predicted.`, stdout `%5.2f%%: name` for the top k."""
    net = load_network(cfg, weights, batch=1)
    net.set_batch(1)
    _check_input_geometry(net, "predict", fewer_channels=True)
    check_work(net, 1, "predict of 1 image")
    options = read_data_cfg(datacfg)
    name_list = options.find_str("names", None, quiet=True)
    if name_list is None:
        name_list = options.find_str("labels", "data_labels.list")
    if top == 0:
        top = options.find_int("top", 1)
    if filename is None:
        raise DLServerError("classifier predict: no image file given")
    names = read_list(name_list, "names list")
    classes = net.outputs
    if len(names) < classes:
        raise DLServerError(f"{name_list}: {len(names)} names, but {cfg} has {classes} outputs")
    if top < 1 or top > classes:
        raise DLServerError(f"top-{top} asked, but {cfg} has {classes} outputs")
    im = load_image_color(filename)
    sized = letterbox_image(im, net.w, net.h)
    pred = net.predict(sized.data)
    tree = _hierarchy(net)
    if tree is not None:
        hierarchy_predictions(pred, min(classes, tree.n), tree)
    indexes = top_k(pred[:classes], top)
    sys.stderr.write(f"{filename}: Predicted.\n")
    out = sys.stdout
    for index in indexes:
        out.write("%5.2f%%: %s\n" % (f32(pred[index] * 100), names[index]))


def validate_classifier(datacfg: str, cfg: str, weights: str | None) -> None:
    """Top-1/top-k accuracy over the valid list, one report line per image (docs/darknet-contract.md §6.1).

    Darknet runs one image at a time; images are independent, so batches of 100 give
    the same per-image results faster."""
    net = load_network(cfg, weights, batch=1)
    _check_input_geometry(net, "valid")
    options = read_data_cfg(datacfg)
    label_list = options.find_str("labels", "data_labels.list")
    leaves = options.find_str("leaves", None, quiet=True)
    if leaves is not None:
        raise DLServerError(f"{datacfg}: leaves= (hierarchical labels) is not supported")
    valid_list = options.find_str("valid", "data_train.list")
    classes = options.find_int("classes", 2)
    topk = options.find_int("top", 1)
    labels = read_list(label_list, "labels list")
    paths = read_list(valid_list, "valid list")
    if classes < 2:
        raise DLServerError(f"{datacfg}: classes={classes}: valid prints two class probabilities, needs >= 2")
    if len(labels) < classes:
        raise DLServerError(f"{label_list}: {len(labels)} labels, but {datacfg} says classes={classes}")
    if net.outputs < classes:
        raise DLServerError(f"{cfg}: {net.outputs} outputs, but {datacfg} says classes={classes}")
    if topk < 1 or topk > classes:
        raise DLServerError(f"{datacfg}: top={topk} must be between 1 and classes={classes}")
    if not paths:
        raise DLServerError(f"{valid_list}: the valid list is empty")
    check_work(net, len(paths), f"valid of {len(paths)} images")
    batch = min(VALID_BATCH, len(paths))
    net.set_batch(batch)
    size = net.inputs
    input_buf = zeros(batch * size)
    outputs = net.outputs
    avg_acc = avg_topk = 0.0
    class_labels = labels[:classes]
    out = sys.stdout
    for start in range(0, len(paths), batch):
        chunk = paths[start : start + batch]
        if len(chunk) < batch:
            batch = len(chunk)
            net.set_batch(batch)
            input_buf = zeros(batch * size)
        load_valid_batch(chunk, net.w, net.h, input_buf)
        pred = net.predict(input_buf).tolist()
        rows, klasses, accs, topks = [], [], [], []
        for r, path in enumerate(chunk):
            i = start + r
            row = pred[r * outputs : r * outputs + classes]
            klass = _label_of(path, class_labels)
            top1_hit, topk_hit = top_hits(row, klass, topk)
            avg_acc += top1_hit
            avg_topk += topk_hit
            rows.append(row)
            klasses.append(klass)
            accs.append(avg_acc / (i + 1))
            topks.append(avg_topk / (i + 1))
        accs, topks = array("f", accs).tolist(), array("f", topks).tolist()  # float32 roundings, as f32
        out.write(
            "".join(
                [
                    VALID_LINES % (path, klass, row[0], row[1], start + r, acc, topk, hits)
                    for r, (path, klass, row, acc, hits) in enumerate(zip(chunk, klasses, rows, accs, topks))
                ]
            )
        )


def base_name(cfg: str) -> str:
    """Darknet basecfg: the file name after the last '/', cut at the first '.'."""
    return cfg.rsplit("/", 1)[-1].split(".", 1)[0]


def clock_enabled() -> bool:
    """The FEE hides the clock unless -c: our host says so with DL_SERVER_CLOCK=0."""
    return os.environ.get("DL_SERVER_CLOCK", "1") != "0"


class ClientRules:
    """`-prox MU GLOBAL.weights` and `-clip C` of classifier train (dlserver.client_rules)."""

    def __init__(self, prox: list[str] | None, clip: str | None, weights: str | None):
        self.mu = client_rules.parse_mu(prox[0]) if prox else None
        self.global_path = prox[1] if prox else None
        self.clip = client_rules.parse_clip(clip) if clip is not None else None
        if self.clip is not None and not weights:
            raise DLServerError("-clip needs the weights training starts from (the global model)")


def train_classifier(
    datacfg: str, cfg: str, weights: str | None, clear: bool, seed: int | None = None, client=None
) -> None:
    """Darknet's train_classifier with the Veracruz loader (docs/darknet-contract.md §5)."""
    out = sys.stdout
    base = base_name(cfg)
    out.write(f"{base}\n")
    rng = Random(seed)
    allow_for_weights(weights)
    net = parse_network_cfg(cfg, init_rng=None if weights else rng)
    if weights:
        for layer in net.layers:  # rand() advances as the weight initialisation would have
            layer.skip_init_weights(rng)
        load_weights(net, weights)
    if clear:
        net.seen = 0
    batches = max(0, net.max_batches - net.current_batch)
    images = net.batch * net.subdivisions
    check_work(net, batches * images, f"training {batches} batches of {images} rows", training=True)
    clip = client.clip if client is not None else None
    clip_from = client_rules.snapshot(net) if clip is not None else None
    if client is not None and client.mu is not None:
        anchor = parse_network_cfg(cfg, init_rng=None)
        load_weights(anchor, client.global_path)
        net.proximal = client_rules.Proximal(client.mu, net, anchor)
    out.write(
        "Learning Rate: %g, Momentum: %g, Decay: %g\n"
        % (f32(net.learning_rate), f32(net.momentum), f32(net.decay))
    )
    options = read_data_cfg(datacfg)
    backup = options.find_str("backup", "/backup/")
    if options.find_int("tag", 0, quiet=True):
        raise DLServerError(f"{datacfg}: tag=1 (tagged training) is not supported")
    label_list = options.find_str("labels", "data_labels.list")
    train_list = options.find_str("train", "data_train.list")
    if options.find_str("tree", None, quiet=True) is not None:
        raise DLServerError(f"{datacfg}: tree= (hierarchical softmax) is not supported")
    classes = options.find_int("classes", 2)
    _check_input_geometry(net, "train")
    if net.max_batches < 1:
        raise DLServerError(
            f"{cfg}: max_batches={net.max_batches}: training needs max_batches >= 1"
            " (Darknet would train forever)"
        )
    if net.random:
        raise DLServerError(f"{cfg}: random=1 (multi-scale training) is not supported")
    if classes < 1 or net.outputs != classes:
        raise DLServerError(
            f"{cfg}: the network has {net.outputs} outputs but {datacfg} says classes={classes}"
        )
    check_truth_readers(net, cfg)
    labels = read_list(label_list, "labels list")
    if len(labels) < classes:
        raise DLServerError(f"{label_list}: {len(labels)} labels, but {datacfg} says classes={classes}")
    paths = read_list(train_list, "train list")
    if not paths:
        raise DLServerError(f"{train_list}: the train list is empty")
    if not os.path.isdir(backup):
        raise DLServerError(f"{backup}: the backup directory (from {datacfg}) does not exist")
    check_backup_targets(backup, base)
    n_paths = len(paths)
    out.write(f"{n_paths}\n")
    out.write(f"{trunc_int(f32(net.min_ratio * net.w))} {trunc_int(f32(net.max_ratio * net.w))}\n")
    data = TrainingData(paths, labels, classes, net.w, net.h)
    data.preload()
    limits.charging_pixels = False  # each batch decodes its images again (limits.py)
    net.prepare_training(rng)
    images = net.batch * net.subdivisions
    buffer = data.load_batch(rng, images)
    epoch = net.seen // n_paths
    avg_loss = -1.0
    use_clock = clock_enabled()
    loss_log = LossLog(f"{backup}/{base}.loss.csv")
    try:
        while net.current_batch < net.max_batches:
            start = time.perf_counter()
            train = buffer
            buffer = data.load_batch(rng, images)
            loss = train_network(net, *train)
            if avg_loss == -1.0:
                avg_loss = loss
            avg_loss = f32(avg_loss * 0.9 + loss * 0.1)
            rate = learning_rate(net)
            seconds = time.perf_counter() - start if use_clock else 0.0
            batch_number = net.current_batch
            out.write(
                "%d, %.3f: %f, %f avg, %f rate, %f seconds, %d images\n"
                % (batch_number, f32(f32(net.seen) / n_paths), loss, avg_loss, rate, seconds, net.seen)
            )
            loss_log.add(batch_number, loss, avg_loss, rate)
            if net.seen // n_paths > epoch:
                epoch = net.seen // n_paths
                save_weights(net, f"{backup}/{base}_{epoch}.weights")
            if batch_number % 1000 == 0:
                save_weights(net, f"{backup}/{base}.backup")
        if clip_from is not None and clip is not None:
            client_rules.clip_model(net, clip_from, clip)
        save_weights(net, f"{backup}/{base}.weights")
    finally:
        loss_log.close()


TRUTH_READERS = ("softmax", "logistic", "cost")  # their training loss reads net.truth


def check_truth_readers(net, cfg: str) -> None:
    """Each layer whose loss reads the truth (one row of net.outputs values per image) has
    that many inputs: one in the middle of the network would read past it (Darknet: out of
    bounds) when training reaches it."""
    for index, layer in enumerate(net.layers):
        if layer.kind in TRUTH_READERS and not getattr(layer, "noloss", 0) and layer.inputs != net.outputs:
            raise DLServerError(
                f"{cfg}:{layer.cfg_line}: layer {index} ({layer.kind}) takes its loss against the truth"
                f" of the network's {net.outputs} outputs, but has {layer.inputs} inputs"
            )


def check_backup_targets(backup: str, base: str) -> None:
    """Before training writes anything: every file it may write in `backup` (the final and
    backup weights, one per epoch, the loss log) is absent or a regular file, so a directory
    or FIFO in the way cannot fail the run after some of them are written."""
    pattern = re.compile(re.escape(base) + r"(\.weights|\.backup|\.loss\.csv|_\d+\.weights)\Z")
    try:
        names = os.listdir(backup)
    except OSError as e:
        raise DLServerError(f"{backup}: cannot list the backup directory: {e.strerror or e}") from None
    for name in names:
        if pattern.match(name):
            path = f"{backup}/{name}"
            try:
                check_appendable(path)
            except OSError as e:
                raise DLServerError(f"{path}: training would write here, but {e.strerror or e}") from None


def train_network(net, x, y) -> float:
    """Darknet train_network: the loaded rows in chunks of net.batch; mean cost per image."""
    rows = len(y) // (net.outputs)
    chunks = rows // net.batch
    total = 0.0
    inputs, outputs = net.inputs, net.outputs
    for i in range(chunks):
        r = i * net.batch
        total = f32(
            total
            + net.train_step(
                view(x, r * inputs, net.batch * inputs), view(y, r * outputs, net.batch * outputs)
            )
        )
    return f32(total / (chunks * net.batch))


class LossLog:
    """`<backup>/<base>.loss.csv`: batch, loss, avg, rate per line (appended on resume)."""

    def __init__(self, path: str):
        self.path = path
        self.lines: list[str] = []
        self.header = not os.path.exists(path)

    def add(self, batch: int, loss: float, avg: float, rate: float) -> None:
        self.lines.append(f"{batch},{loss:.6f},{avg:.6f},{rate:.9g}\n")
        if len(self.lines) >= 100:
            self.flush()

    def flush(self) -> None:
        if not self.lines and not self.header:
            return
        try:
            check_appendable(self.path)
            with open(self.path, "a") as f:
                if self.header:
                    f.write("batch,loss,avg,rate\n")
                    self.header = False
                f.write("".join(self.lines))
        except OSError as e:
            raise DLServerError(f"{self.path}: cannot write the loss log: {e.strerror or e}") from None
        self.lines = []

    def close(self) -> None:
        if self.lines:
            self.flush()
