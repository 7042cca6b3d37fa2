"""`classifier predict|valid|train` (Darknet examples/classifier.c, spec §5-6)."""
import sys

from ..buffers import zeros
from ..config import read_data_cfg, read_list
from ..errors import DLServerError, NotImplementedYet
from ..image.load import load_image_color
from ..image.ops import center_crop_image, letterbox_image
from ..network import parse_network_cfg
from ..rng import Random, f32
from ..weights import load_weights

VALID_BATCH = 100


def load_network(cfg: str, weights: str | None, clear: bool = False):
    """Parse a cfg and load weights when a path is given (Darknet load_network)."""
    net = parse_network_cfg(cfg, init_rng=None if weights else Random())
    if weights:
        load_weights(net, weights)
    if clear:
        net.seen = 0
    return net


def top_k(values, k: int) -> list[int]:
    """Indexes of the k largest values, descending; ties keep the lower index first."""
    # Darknet's insertion loop puts equal values in index order: a stable descending sort.
    return sorted(range(len(values)), key=values.__getitem__, reverse=True)[:k]


def _check_input_geometry(net, what: str) -> None:
    if net.w < 1 or net.h < 1 or net.c != 3:
        raise DLServerError(f"{net.cfg_path}: {what} needs an image network (width, height, channels=3),"
                            f" got {net.w}x{net.h}x{net.c}")


def _label_of(path: str, labels: list[str]) -> int:
    for j, label in enumerate(labels):
        if label in path:
            return j
    return -1


def predict_classifier(datacfg: str, cfg: str, weights: str | None, filename: str | None, top: int) -> None:
    """Classify one image: stderr `<file>: Predicted.`, stdout `%5.2f%%: name` for the top k."""
    net = load_network(cfg, weights)
    net.set_batch(1)
    _check_input_geometry(net, "predict")
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
    indexes = top_k(pred[:classes], top)
    sys.stderr.write(f"{filename}: Predicted.\n")
    out = sys.stdout
    for index in indexes:
        out.write("%5.2f%%: %s\n" % (f32(pred[index] * 100), names[index]))


def validate_classifier(datacfg: str, cfg: str, weights: str | None) -> None:
    """Top-1/top-k accuracy over the valid list, one report line per image (spec §6.1).

    Darknet runs one image at a time; images are independent, so batches of 100 give
    the same per-image results faster."""
    net = load_network(cfg, weights)
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
    batch = min(VALID_BATCH, len(paths))
    net.set_batch(batch)
    size = net.inputs
    input_buf = zeros(batch * size)
    outputs = net.outputs
    avg_acc = avg_topk = 0.0
    out = sys.stdout
    for start in range(0, len(paths), batch):
        chunk = paths[start:start + batch]
        if len(chunk) < batch:
            batch = len(chunk)
            net.set_batch(batch)
            input_buf = zeros(batch * size)
        for r, path in enumerate(chunk):
            im = load_image_color(path)
            crop = center_crop_image(im, net.w, net.h)
            input_buf[r * size:(r + 1) * size] = crop.data
        pred = net.predict(input_buf)
        lines = []
        for r, path in enumerate(chunk):
            i = start + r
            row = pred[r * outputs:r * outputs + classes]
            klass = _label_of(path, labels[:classes])
            indexes = top_k(row, topk)
            if indexes[0] == klass:
                avg_acc += 1
            if klass in indexes:
                avg_topk += 1
            lines.append("%s, %d, %f, %f, \n" % (path, klass, row[0], row[1]))
            lines.append("%d: top 1: %f, top %d: %f\n" % (i, f32(avg_acc / (i + 1)), topk,
                                                          f32(avg_topk / (i + 1))))
        out.write("".join(lines))


def train_classifier(datacfg: str, cfg: str, weights: str | None, clear: bool) -> None:
    raise NotImplementedYet("classifier train: not implemented yet")
