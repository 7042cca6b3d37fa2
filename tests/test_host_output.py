"""The host passes on everything the guest prints, however large its writes.

Regression: with wasmtime-py 50, `WasiConfig.stdout_custom` passed on at most 8192 bytes
of one guest write and dropped the rest silently; `classifier valid` writes the lines of
100 images (~10 KB) at a time, so a third of each write was lost, the final `top 1:`
line included.  The host now sends the guest's stdout/stderr to files it tails.
"""

import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from dlserver_host import cli, runtime
from dlserver_host.darknet_output import top_line

REPO = Path(__file__).resolve().parent.parent
WASM = Path(os.environ.get("DL_SERVER_WASM", REPO / "dl-server.wasm"))
LENET_PARAMETERS = 456 + 906 + 35400 + 10164 + 850
IMAGES = 250

pytestmark = [
    pytest.mark.component,
    pytest.mark.skipif(not WASM.is_file(), reason=f"{WASM} is not built (run `make`)"),
]


def gray_png() -> bytes:
    rows = b"".join(b"\x00" + bytes(255 if abs(x - y) < 2 else 0 for x in range(28)) for y in range(28))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("dump", [False, True])
def test_every_line_of_a_long_valid_arrives(tmp_path, monkeypatch, capfd, dump):
    ws = tmp_path / "ws"
    (ws / "cfg").mkdir(parents=True)
    shutil.copy(REPO / "cfg" / "mnist_lenet.cfg", ws / "cfg")
    (ws / "images").mkdir()
    png = gray_png()
    names = [f"images/{'long' * 12}_{i:05d}_c{i % 10}.png" for i in range(IMAGES)]  # ~100 bytes per line
    for name in names:
        (ws / name).write_bytes(png)
    (ws / "valid.list").write_text("".join(n + "\n" for n in names))
    (ws / "labels.list").write_text("".join(f"c{i}\n" for i in range(10)))
    (ws / "v.dataset").write_text("classes=10\nvalid=valid.list\nlabels=labels.list\ntop=2\n")
    (ws / "zero.weights").write_bytes(struct.pack("<iiiQ", 0, 2, 0, 0) + bytes(4 * LENET_PARAMETERS))
    (ws / "args.cfg").write_text("classifier\nvalid\nv.dataset\ncfg/mnist_lenet.cfg\nzero.weights\n")
    monkeypatch.chdir(ws)
    runtime.load_component(runtime.make_engine(interruptible=False), WASM, runtime.default_cache_dir())
    flags = ["-d", "-e"] if dump else []
    status = cli.main(
        [
            "--program",
            str(WASM),
            "--no-progress",
            "-i",
            "args.cfg",
            "cfg",
            "images",
            "valid.list",
            "labels.list",
            "v.dataset",
            "zero.weights",
            *flags,
        ]
    )
    out, err = capfd.readouterr()
    assert status == 0, err
    if dump:
        assert out.startswith("---- stdout dump ----\n") and out.endswith("---- stdout dump end ----\n")
        out = out[len("---- stdout dump ----\n") : -len("---- stdout dump end ----\n")]
        assert err.rstrip().endswith("---- stderr dump end ----")
    lines = out.splitlines()
    assert lines[:5] == [
        f"argv[{i}] = '{a}'"
        for i, a in enumerate(["classifier", "valid", "v.dataset", "cfg/mnist_lenet.cfg", "zero.weights"], 1)
    ]
    body = lines[5:]
    assert len(body) == 2 * IMAGES
    assert [line.split(",")[0] for line in body[0::2]] == names
    assert [top_line(line).index for line in body[1::2]] == list(range(IMAGES))
    assert "Loading weights from zero.weights...Done!" in err
