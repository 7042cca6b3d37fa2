"""Server optimisers (`-method fedavgm|fedadam|fedyogi|fedadagrad`, dlserver.rules): three
rounds chained through -global and the state file, each equal to Flower 1.42's FedAvgM,
FedAdam, FedYogi and FedAdagrad fed the same clients and the same (float32) global model."""

import numpy as np
import pytest

from test_rules_common import (
    CFG,
    SHAPES,
    assert_refused,
    clients,
    darknet_inputs,
    flat_of,
    flower,
    reply,
    run,
    split,
    write_weights,
)

OPTIMISERS = [
    ("fedavgm:1.0:0.9", "FedAvgM", {"server_learning_rate": 1.0, "server_momentum": 0.9}),
    ("fedavgm:0.5:0", "FedAvgM", {"server_learning_rate": 0.5, "server_momentum": 0.0}),
    ("fedadam:0.1:0.9:0.99:0.001", "FedAdam", {"eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}),
    ("fedyogi:0.05:0.8:0.95:0.01", "FedYogi", {"eta": 0.05, "beta_1": 0.8, "beta_2": 0.95, "tau": 1e-2}),
    ("fedadagrad:0.1:0.001", "FedAdagrad", {"eta": 0.1, "tau": 1e-3}),
]


def current(strategy, name, flat):
    """Flower's global model before a round (what configure_train would store)."""
    from flwr.app import Array, ArrayRecord

    arrays = {f"t{i}": np.ascontiguousarray(a) for i, a in enumerate(split(flat))}
    if name == "FedAvgM":
        strategy.current_arrays = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    else:
        strategy.current_arrays = arrays


@pytest.mark.parametrize("method, name, kwargs", OPTIMISERS)
@pytest.mark.parametrize("fmt", ["darknet", "onnx"])
def test_three_rounds_equal_flowers(tmp_path, monkeypatch, capsys, method, name, kwargs, fmt):
    monkeypatch.chdir(tmp_path)
    flower()
    import flwr.serverapp.strategy as fs

    from test_rules_common import ours_onnx, read_weights

    strategy = getattr(fs, name)(**kwargs)
    rng = np.random.default_rng(7)
    glob = rng.normal(size=sum(int(np.prod(s)) for s in SHAPES)).astype(np.float32)
    (tmp_path / "rule.cfg").write_text(CFG)
    flower_glob = glob
    for rnd in (1, 2, 3):
        models = clients(rng, 4, base=glob)
        examples = [int(e) for e in rng.integers(1, 100, size=4)]
        current(strategy, name, flower_glob)
        arrays, _ = strategy.aggregate_train(rnd, [reply(c, e) for c, e in zip(models, examples)])
        theirs = flat_of(arrays).astype(np.float32)
        state = ["-state", f"s{rnd - 1}"] if rnd > 1 else []
        flags = ["-weights", ",".join(map(str, examples)), *state, "-state-out", f"s{rnd}"]
        if fmt == "darknet":
            paths = []
            for i, m in enumerate(models):
                write_weights(tmp_path / f"r{rnd}c{i}.weights", m)
                paths.append(f"r{rnd}c{i}.weights")
            write_weights(tmp_path / f"g{rnd}.weights", glob)
            status, out, err = run(
                capsys, "darknet", "rule.cfg", f"g{rnd + 1}.weights", *paths, "-method", method,
                "-global", f"g{rnd}.weights", *flags,
            )  # fmt: skip
            assert status == 0, err
            ours = read_weights(tmp_path / f"g{rnd + 1}.weights")[1]
        else:
            (tmp_path / f"s{rnd}").unlink(missing_ok=True)
            ours, out = ours_onnx(capsys, tmp_path, models, method, *flags, raw="mixed", glob=glob)
        assert f"round {rnd}" in out
        np.testing.assert_array_equal(ours, theirs, err_msg=f"round {rnd}")
        assert (tmp_path / f"s{rnd}").exists()
        glob = flower_glob = ours


ADAM = "fedadam:0.1:0.9:0.99:0.001"
CHAINED = ["-state", "s0", "-state-out", "s1"]


@pytest.mark.parametrize(
    "method, setup, flags, message",
    [
        (ADAM, None, ["-state", "nowhere", "-state-out", "s1"], "nowhere: state file not found"),
        (ADAM, "fedadam-short", CHAINED, "state of the wrong shape"),
        ("fedyogi:0.1:0.9:0.99:0.001", "fedadam", CHAINED, "s0: state of -method fedadam, not fedyogi"),
        (ADAM, "junk", CHAINED, "s0: not a dl-server state file"),
        (ADAM, None, [], "needs -state-out <file>"),
        ("fedadam:0.1:1.0:0.99:0.001", None, ["-state-out", "s1"], "BETA1 and BETA2 must be in [0, 1)"),
        ("fedadam:0.1:0.9:0.99:0", None, ["-state-out", "s1"], "ETA and TAU must be > 0"),
        ("fedadagrad:0.1", None, ["-state-out", "s1"], "expected fedadagrad:ETA:TAU with numbers"),
        ("fedavgm:1:1.5", None, ["-state-out", "s1"], "LR must be > 0 and MOMENTUM in [0, 1)"),
        ("fedavgm:1:0.5", None, ["-state-out", "c1.weights"], "c1.weights: the output would overwrite"),
    ],
)  # fmt: skip
def test_bad_parameters_one_line_no_output(tmp_path, monkeypatch, capsys, method, setup, flags, message):
    monkeypatch.chdir(tmp_path)
    models = clients(np.random.default_rng(0), 4)
    paths = darknet_inputs(tmp_path, models, glob=models[0])
    if setup is not None:
        # a real state from a first round, then damaged as the case says
        status, _, err = run(
            capsys, "darknet", "rule.cfg", "first.weights", *paths, "-method", "fedadam:0.1:0.9:0.99:0.001",
            "-global", "g.weights", "-state-out", "s0",
        )  # fmt: skip
        assert status == 0, err
        (tmp_path / "first.weights").unlink()
        s0 = tmp_path / "s0"
        if setup == "fedadam-short":
            s0.write_bytes(s0.read_bytes()[:-8])
            data = bytearray(s0.read_bytes())
            data[32:40] = (int.from_bytes(data[32:40], "little") - 1).to_bytes(8, "little")
            s0.write_bytes(bytes(data))
        elif setup == "junk":
            s0.write_bytes(b"not a state at all, just text")
    args = ["darknet", "rule.cfg", "out.weights", *paths, "-method", method, "-global", "g.weights", *flags]
    assert_refused(capsys, tmp_path, args, message, ["out.weights", "s1"])


def test_optimiser_needs_the_global_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    paths = darknet_inputs(tmp_path, clients(np.random.default_rng(1), 3))
    method = "fedyogi:0.1:0.9:0.99:0.001"
    args = ["darknet", "rule.cfg", "out.weights", *paths, "-method", method, "-state-out", "s1"]
    assert_refused(capsys, tmp_path, args, f"-method {method} needs -global <the previous global model>")
