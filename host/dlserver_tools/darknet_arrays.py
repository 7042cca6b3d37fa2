"""Darknet ``.weights`` <-> named float32 arrays, one per parameter tensor, driven by the cfg.

A weights file is a header (int32 major, minor, revision; then ``seen`` as 8 bytes when
major*10+minor >= 2 and both are < 1000, else 4 bytes) and each layer's arrays in file
order (docs/darknet-contract.md §3):

  convolutional, deconvolutional   biases[n], (scales, rolling_mean, rolling_variance)[n] if
                                   batch_normalize, weights[n * c/groups * size * size]
  connected                        biases[out], weights[out * in], then scales, rolling_mean,
                                   rolling_variance[out] if batch_normalize
  batchnorm                        scales, rolling_mean, rolling_variance[c]
  local                            biases[n * locations], weights[c * n * size^2 * locations]
  rnn, gru, lstm                   connected sublayers (``output`` = n units; "in" ones take the
                                   layer's inputs, "out" ones n), in Darknet's file order:
                                   rnn input(in) self(out) output(out); gru wz wr wh (out) uz ur
                                   uh (in); lstm wi wf wo wg (out) ui uf uo ug (in)
  crnn                             3x3 convolutional sublayers input (c -> hidden_filters), self
                                   (hidden -> hidden), output (hidden -> output_filters)

The sizes need each layer's input shape, so the cfg's layers are walked with Darknet's
shape rules. Array names are ``<layer index>.<layer type>.<tensor>`` (``003.connected.
weights``, ``005.gru.wz.biases`` for a sublayer's), in file order; the header's bytes travel as
they are, so decode + encode gives the file back byte for byte. Crop has no parameters (it
only changes the shape: crop_height x crop_width).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

NO_PARAMETERS = {
    "maxpool", "max", "avgpool", "avg", "softmax", "soft", "dropout", "cost", "yolo", "region",
    "detection", "logistic", "l2norm", "upsample", "route", "shortcut", "reorg",
}  # fmt: skip
BN_CONV_ORDER = ("biases", "scales", "rolling_mean", "rolling_variance", "weights")
SECTION_ALIASES = {"conv": "convolutional", "conn": "connected", "deconv": "deconvolutional"}
RECURRENT = {  # connected sublayers in file order, each fed the layer's inputs ("in") or its n units
    "rnn": (("input", "in"), ("self", "out"), ("output", "out")),
    "gru": (("wz", "out"), ("wr", "out"), ("wh", "out"), ("uz", "in"), ("ur", "in"), ("uh", "in")),
    "lstm": tuple((f"w{g}", "out") for g in "ifog") + tuple((f"u{g}", "in") for g in "ifog"),
}


class ArraysError(Exception):
    """A cfg, weights file or set of arrays that do not fit together: one line naming it."""


Sections = list[tuple[str, dict[str, str]]]


def parse_cfg(text: str, name: str = "cfg") -> Sections:
    """Darknet's cfg: [section] headers and key=value lines; '#' and ';' start comments."""
    sections: Sections = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.replace(" ", "").replace("\t", "").strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ArraysError(f"{name}:{number}: bad section header {raw.strip()!r}")
            kind = line[1:-1]
            sections.append((SECTION_ALIASES.get(kind, kind), {}))
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1][1][key] = value
        else:
            raise ArraysError(f"{name}:{number}: not a key=value line {raw.strip()!r}")
    if not sections or sections[0][0] not in ("net", "network"):
        raise ArraysError(f"{name}: the first section must be [net]")
    return sections


def _int(options: dict[str, str], key: str, default: int) -> int:
    try:
        return int(options.get(key, default))
    except ValueError:
        raise ArraysError(f"{key}={options[key]}: not an integer") from None


def tensor_shapes(sections: Sections, name: str = "cfg") -> list[tuple[str, int]]:
    """(array name, number of floats) of every parameter tensor, in file order."""
    net = sections[0][1]
    h, w, c = _int(net, "height", 0), _int(net, "width", 0), _int(net, "channels", 0)
    if _int(net, "inputs", 0) and not (h and w and c):
        h, w, c = 1, 1, _int(net, "inputs", 0)
    shapes: list[tuple[int, int, int]] = []  # each layer's output (h, w, c)
    tensors: list[tuple[str, int]] = []
    for index, (kind, o) in enumerate(sections[1:]):
        prefix = f"{index:03d}.{kind}."

        def add(*named: tuple[str, int], prefix=prefix) -> None:
            tensors.extend((prefix + t, n) for t, n in named)

        bn = _int(o, "batch_normalize", 0)
        if kind in ("convolutional", "deconvolutional", "local"):
            n, size, stride = _int(o, "filters", 1), _int(o, "size", 1), _int(o, "stride", 1)
            pad = size // 2 if _int(o, "pad", 0) else _int(o, "padding", 0)
            if kind == "deconvolutional":
                oh, ow = (h - 1) * stride + size - 2 * pad, (w - 1) * stride + size - 2 * pad
            else:
                oh, ow = (h + 2 * pad - size) // stride + 1, (w + 2 * pad - size) // stride + 1
            if kind == "local":
                locations = oh * ow
                add(("biases", n * locations), ("weights", c * n * size * size * locations))
            else:
                groups = _int(o, "groups", 1)
                sizes = {"biases": n, "weights": n * (c // groups) * size * size}
                order = BN_CONV_ORDER if bn else ("biases", "weights")
                add(*((t, sizes.get(t, n)) for t in order))
            h, w, c = oh, ow, n
        elif kind == "connected":
            outputs = _int(o, "output", 1)
            add(("biases", outputs), ("weights", outputs * h * w * c))
            if bn:
                add(("scales", outputs), ("rolling_mean", outputs), ("rolling_variance", outputs))
            h, w, c = 1, 1, outputs
        elif kind in RECURRENT:
            n, inputs = _int(o, "output", 1), h * w * c
            for sub, fan in RECURRENT[kind]:
                add((f"{sub}.biases", n), (f"{sub}.weights", n * (inputs if fan == "in" else n)))
                if bn:
                    add(*((f"{sub}.{t}", n) for t in ("scales", "rolling_mean", "rolling_variance")))
            h, w, c = 1, 1, n
        elif kind == "crnn":
            hidden, out = _int(o, "hidden_filters", 1), _int(o, "output_filters", 1)
            for sub, (ci, co) in (
                ("input", (c, hidden)),
                ("self", (hidden, hidden)),
                ("output", (hidden, out)),
            ):
                sizes = {"biases": co, "weights": co * ci * 9}
                add(
                    *(
                        (f"{sub}.{t}", sizes.get(t, co))
                        for t in (BN_CONV_ORDER if bn else ("biases", "weights"))
                    )
                )
            h, w, c = w, h, out  # parse_crnn calls make_crnn_layer(batch, w, h, ...)
        elif kind == "crop":
            h, w = _int(o, "crop_height", 1), _int(o, "crop_width", 1)
        elif kind == "batchnorm":
            add(("scales", c), ("rolling_mean", c), ("rolling_variance", c))
        elif kind in ("maxpool", "max", "avgpool", "avg"):
            if kind in ("avgpool", "avg"):
                h, w = 1, 1
            else:
                size, stride = _int(o, "size", 1), _int(o, "stride", 1)
                padding = _int(o, "padding", size - 1)
                h, w = (h + padding - size) // stride + 1, (w + padding - size) // stride + 1
        elif kind == "upsample":
            stride = _int(o, "stride", 2)
            h, w = (h * stride, w * stride) if stride > 0 else (h // -stride, w // -stride)
        elif kind == "reorg":
            stride = _int(o, "stride", 1)
            if _int(o, "reverse", 0):
                h, w, c = h * stride, w * stride, c // (stride * stride)
            else:
                h, w, c = h // stride, w // stride, c * stride * stride
        elif kind == "route":
            picked = []
            for part in o.get("layers", "").split(","):
                j = int(part) if part.lstrip("-").isdigit() else None
                if j is None:
                    raise ArraysError(f"{name}: layer {index} (route): bad layers={o.get('layers')}")
                j = index + j if j < 0 else j
                if not 0 <= j < index:
                    raise ArraysError(f"{name}: layer {index} (route): no layer {part}")
                picked.append(shapes[j])
            h, w, c = picked[0][0], picked[0][1], sum(s[2] for s in picked)
        elif kind == "shortcut":
            pass  # output shape of the previous layer
        elif kind in NO_PARAMETERS:
            pass
        else:
            raise ArraysError(f"{name}: layer {index} is [{kind}]: not supported by the arrays codec")
        shapes.append((h, w, c))
    return tensors


def header_size(data: bytes) -> int:
    """16 or 20: where the parameters start (Darknet's rule for the width of `seen`)."""
    if len(data) < 16:
        raise ArraysError("not a weights file: shorter than the 16-byte header")
    major, minor, _revision = struct.unpack_from("<iii", data, 0)
    return 20 if major * 10 + minor >= 2 and major < 1000 and minor < 1000 else 16


def seen(header: bytes) -> int:
    """The images seen so far, as the header says (4 or 8 bytes, little endian)."""
    return int.from_bytes(header[12:], "little")


def decode(cfg: Sections, data: bytes, name: str = "weights") -> tuple[bytes, dict[str, np.ndarray]]:
    """(header bytes, arrays in file order) of a weights file; its length must fit the cfg exactly."""
    try:
        offset = header_size(data)
    except ArraysError as e:
        raise ArraysError(f"{name}: {e}") from None
    tensors = tensor_shapes(cfg)
    need = 4 * sum(n for _, n in tensors)
    if len(data) - offset != need:
        raise ArraysError(
            f"{name}: {len(data) - offset} bytes of parameters after the header, the cfg needs {need}"
        )
    flat = np.frombuffer(data, dtype="<f4", offset=offset)
    arrays, at = {}, 0
    for tensor, n in tensors:
        arrays[tensor] = flat[at : at + n].copy()
        at += n
    return data[:offset], arrays


def check_arrays(cfg: Sections, arrays: dict[str, np.ndarray], name: str = "arrays") -> None:
    """Refuse arrays that are not exactly the cfg's tensors (names, order, dtype, sizes)."""
    tensors = tensor_shapes(cfg)
    if list(arrays) != [t for t, _ in tensors]:
        missing = [t for t, _ in tensors if t not in arrays]
        extra = [k for k in arrays if k not in dict(tensors)]
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra else "out of order"
        raise ArraysError(f"{name}: not the cfg's tensors ({what})")
    for tensor, n in tensors:
        a = arrays[tensor]
        if a.dtype != np.float32 or a.ndim != 1 or a.size != n:
            raise ArraysError(f"{name}: {tensor} is {a.dtype}{list(a.shape)}, the cfg needs float32[{n}]")


def encode(cfg: Sections, header: bytes, arrays: dict[str, np.ndarray], name: str = "arrays") -> bytes:
    """The weights file of (header, arrays); the arrays must be exactly the cfg's tensors."""
    if len(header) not in (16, 20) or header_size(header + bytes(4)) != len(header):
        raise ArraysError(f"{name}: a header of {len(header)} bytes does not fit its version")
    check_arrays(cfg, arrays, name)
    return header + b"".join(np.ascontiguousarray(a, dtype="<f4").tobytes() for a in arrays.values())


def read_cfg(path: str | Path) -> Sections:
    try:
        return parse_cfg(Path(path).read_text(), str(path))
    except (OSError, UnicodeDecodeError) as e:
        raise ArraysError(f"{path}: cannot read cfg: {e}") from None
