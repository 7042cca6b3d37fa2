"""The host passes on everything the guest prints, however large its writes.

Regression: with wasmtime-py 50, `WasiConfig.stdout_custom` passed on at most 8192 bytes
of one guest write and dropped the rest silently; `classifier valid` writes the lines of
100 images (~10 KB) at a time, so a third of each write was lost, the final `top 1:`
line included.  The host now sends the guest's stdout/stderr to files it tails.
"""

import shutil

import pytest

from conftest import NEEDS_HOST_WASM, ROOT, flat_lenet_weights, gray_png, run_host
from dlserver_host.darknet_output import top_line

IMAGES = 250

pytestmark = NEEDS_HOST_WASM


@pytest.mark.parametrize("dump", [False, True])
def test_every_line_of_a_long_valid_arrives(program, tmp_path, monkeypatch, capfd, dump):
    ws = tmp_path / "ws"
    (ws / "cfg").mkdir(parents=True)
    shutil.copy(ROOT / "cfg" / "mnist_lenet.cfg", ws / "cfg")
    (ws / "images").mkdir()
    png = gray_png()
    names = [f"images/{'long' * 12}_{i:05d}_c{i % 10}.png" for i in range(IMAGES)]  # ~100 bytes per line
    for name in names:
        (ws / name).write_bytes(png)
    (ws / "valid.list").write_text("".join(n + "\n" for n in names))
    (ws / "labels.list").write_text("".join(f"c{i}\n" for i in range(10)))
    (ws / "v.dataset").write_text("classes=10\nvalid=valid.list\nlabels=labels.list\ntop=2\n")
    (ws / "zero.weights").write_bytes(flat_lenet_weights())
    monkeypatch.chdir(ws)
    args = ["classifier", "valid", "v.dataset", "cfg/mnist_lenet.cfg", "zero.weights"]
    flags = ["-d", "-e"] if dump else []
    status = run_host(
        program,
        args,
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
    )
    out, err = capfd.readouterr()
    assert status == 0, err
    if dump:
        assert out.startswith("---- stdout dump ----\n") and out.endswith("---- stdout dump end ----\n")
        out = out[len("---- stdout dump ----\n") : -len("---- stdout dump end ----\n")]
        assert err.rstrip().endswith("---- stderr dump end ----")
    lines = out.splitlines()
    assert lines[:5] == [f"argv[{i}] = '{a}'" for i, a in enumerate(args, 1)]
    body = lines[5:]
    assert len(body) == 2 * IMAGES
    assert [line.split(",")[0] for line in body[0::2]] == names
    assert [top_line(line).index for line in body[1::2]] == list(range(IMAGES))
    assert "Loading weights from zero.weights...Done!" in err
