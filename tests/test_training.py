"""classifier train (docs/darknet-contract.md §5) on a small synthetic set: loss, saves, resume, errors."""

from array import array

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from dlserver.commands.classifier import load_network
from dlserver.main import main
from dlserver.rng import Random
from dlserver.schedule import learning_rate
from dlserver_host.darknet_output import TRAIN_LINE as BATCH_LINE


def lenet_cfg(max_batches=60, batch=20, policy="poly", extra=""):
    text = (ROOT / "cfg" / "mnist_lenet.cfg").read_text()
    text = text.replace("batch=100", f"batch={batch}").replace(
        "max_batches=2000", f"max_batches={max_batches}"
    )
    return text.replace("policy=poly", f"policy={policy}\n{extra}")


@pytest.fixture
def tiny(workdir):
    """40 images per... 4 classes of simple patterns, a dataset file and a cfg."""
    rng = np.random.default_rng(0)
    images = workdir / "data" / "tiny"
    images.mkdir(parents=True)
    paths = []
    for i in range(120):
        label = i % 4
        pixels = rng.integers(0, 40, (28, 28), dtype=np.uint8)
        pixels[label * 7 : (label + 1) * 7, :] = 220
        path = f"data/tiny/t_{i:05d}_c{label}.png"
        Image.fromarray(pixels, "L").save(workdir / path)
        paths.append(path)
    (workdir / "data" / "tiny.list").write_text("\n".join(paths) + "\n")
    (workdir / "data" / "labels.list").write_text("c0\nc1\nc2\nc3\n")
    (workdir / "cfg" / "tiny.dataset").write_text(
        "classes=4\ntrain=data/tiny.list\nvalid=data/tiny.list\nbackup=model\nlabels=data/labels.list\n"
        "names=data/labels.list\ntop=2\n"
    )
    cfg = lenet_cfg().replace("output= 10", "output= 4")
    (workdir / "cfg" / "tiny.cfg").write_text(cfg)
    return workdir


def train(capsys, *extra, cfg="cfg/tiny.cfg"):
    status = main(["dl-server", "classifier", "train", "cfg/tiny.dataset", cfg, *extra])
    out, err = capsys.readouterr()
    return status, out, err


def test_training_prints_darknets_lines_and_loss_decreases(tiny, capsys, monkeypatch):
    monkeypatch.setenv("DL_SERVER_CLOCK", "0")
    status, out, err = train(capsys)
    assert status == 0, err
    lines = out.splitlines()
    assert lines[:4] == ["tiny", "Learning Rate: 0.01, Momentum: 0.9, Decay: 5e-05", "120", "28 28"]
    batches = [BATCH_LINE.match(line) for line in lines[4:]]
    assert all(batches) and len(batches) == 60
    assert batches[0].group(1) == "1" and batches[0].group(5) == "0.009350" and batches[0].group(7) == "20"
    assert all(m.group(6) == "0.000000" for m in batches)
    first = np.mean([float(m.group(3)) for m in batches[:10]])
    last = np.mean([float(m.group(3)) for m in batches[-10:]])
    assert last < 0.9 * first
    assert err.count("Saving weights to") == 11  # 10 epochs of 120 images, then the final file
    assert (tiny / "model" / "tiny_10.weights").exists() and (tiny / "model" / "tiny.weights").exists()
    csv = (tiny / "model" / "tiny.loss.csv").read_text().splitlines()
    assert csv[0] == "batch,loss,avg,rate" and len(csv) == 61


def test_same_seed_same_weights_and_reload_predicts_the_same(tiny, capsys):
    assert train(capsys, "-seed", "7")[0] == 0
    first = (tiny / "model" / "tiny.weights").read_bytes()
    assert train(capsys, "-seed", "7")[0] == 0
    assert (tiny / "model" / "tiny.weights").read_bytes() == first
    assert train(capsys, "-seed", "8")[0] == 0
    assert (tiny / "model" / "tiny.weights").read_bytes() != first
    # the seed-7 weights, reloaded, predict like the network that wrote them
    (tiny / "model" / "a.weights").write_bytes(first)
    net = load_network("cfg/tiny.cfg", "model/a.weights")
    net.set_batch(1)
    x = array("f", np.random.default_rng(3).random(3 * 28 * 28, dtype=np.float32))
    again = load_network("cfg/tiny.cfg", "model/a.weights")
    again.set_batch(1)
    assert net.predict(x).tobytes() == again.predict(x).tobytes()


def test_resume_from_backup_continues_seen(tiny, capsys, monkeypatch):
    (tiny / "cfg" / "tiny.cfg").write_text(lenet_cfg(max_batches=10).replace("output= 10", "output= 4"))
    assert train(capsys)[0] == 0
    (tiny / "cfg" / "tiny.cfg").write_text(lenet_cfg(max_batches=16).replace("output= 10", "output= 4"))
    status, out, _ = train(capsys, "model/tiny.weights")
    assert status == 0
    numbers = [int(BATCH_LINE.match(line).group(1)) for line in out.splitlines()[4:]]
    assert numbers == list(range(11, 17))
    status, out, _ = train(capsys, "model/tiny.weights", "-clear")
    assert [int(BATCH_LINE.match(line).group(1)) for line in out.splitlines()[4:]][0] == 1


def test_learning_rate_policies():
    class Net:
        learning_rate, power, burn_in, batch, subdivisions = 0.01, 4.0, 0, 100, 1
        max_batches, policy, step, scale, gamma = 2000, "poly", 10, 0.5, 0.99
        steps, scales, rng = [5, 8], [0.1, 0.5], Random()
        seen = 100
        current_batch = property(lambda self: self.seen // (self.batch * self.subdivisions))

    net = Net()
    assert f"{learning_rate(net):.9g}" == "0.00998001359"
    net.seen = 100000
    assert learning_rate(net) == pytest.approx(0.000625, rel=1e-6)
    net.seen, net.policy = 900, "steps"
    assert learning_rate(net) == pytest.approx(0.01 * 0.1 * 0.5)
    net.policy = "step"
    assert learning_rate(net) == pytest.approx(0.01)
    net.seen, net.policy = 2500, "exp"
    assert learning_rate(net) == pytest.approx(0.01 * 0.99**25, rel=1e-6)
    net.policy, net.burn_in = "constant", 100
    assert learning_rate(net) == pytest.approx(0.01 * (25 / 100) ** 4, rel=1e-6)


def _write(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "setup, problem",
    [
        (
            lambda d: _write(d / "data" / "tiny" / "t_00003_c3.png", b"\x89PNG\r\n\x1a\nbroken"),
            "t_00003_c3.png: bad PNG",
        ),
        (lambda d: (d / "data" / "tiny" / "t_00004_c0.png").unlink(), "t_00004_c0.png: cannot open image"),
        (lambda d: _write(d / "data" / "tiny.list", b""), "the train list is empty"),
        (
            lambda d: _write(d / "data" / "tiny.list", b"data/tiny/unlabelled.png\n"),
            "exactly one of the 4 labels",
        ),
        (
            lambda d: _write(
                d / "cfg" / "tiny.cfg", lenet_cfg(max_batches=0).replace("output= 10", "output= 4").encode()
            ),
            "max_batches=0",
        ),
        (
            lambda d: _write(d / "cfg" / "tiny.cfg", lenet_cfg().encode()),
            "10 outputs but cfg/tiny.dataset says classes=4",
        ),
        (
            lambda d: _write(
                d / "cfg" / "tiny.cfg",
                lenet_cfg()
                .replace("output= 10", "output= 4")
                .replace("size=5", "size=40", 1)
                .replace("pad=1", "pad=0", 1)
                .encode(),
            ),
            "does not fit",
        ),
    ],
)
def test_bad_training_input_fails_before_touching_weights(tiny, capsys, setup, problem):
    old = tiny / "model" / "tiny.weights"
    old.write_bytes(b"earlier weights")
    setup(tiny)
    status, _, err = train(capsys)
    assert status == 1
    assert problem in err.strip().splitlines()[-1]
    assert old.read_bytes() == b"earlier weights"
    assert sorted(p.name for p in (tiny / "model").iterdir()) == ["tiny.weights"]
