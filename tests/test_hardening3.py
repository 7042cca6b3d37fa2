"""Hostile-input classes found in session 19 (issue 11), below the corpus: the learning-rate
policies at C's float limits, FIFOs and oversized files at the one file reader and the C bulk
reader, the run's budget of decoded pixels, and a host --timeout over before the guest starts."""

import math
import os
import shutil
from types import SimpleNamespace

import pytest

from conftest import NEEDS_HOST_WASM, ROOT, flat_lenet_weights
from dlserver import kernels, limits
from dlserver.errors import DLServerError
from dlserver.files import read_input_file
from dlserver.schedule import learning_rate


def net(policy: str, seen_batches: int, **options) -> SimpleNamespace:
    values = {"learning_rate": 0.01, "power": 4.0, "burn_in": 0, "policy": policy, "max_batches": 10**6}
    values.update(options)
    return SimpleNamespace(current_batch=seen_batches, **values)


@pytest.mark.parametrize(
    "case, expected",
    [
        (net("step", 400, step=1, scale=10.0), math.inf),  # 10^400: Python's pow raised
        (net("step", 401, step=1, scale=-10.0), -math.inf),
        (net("step", 400, step=-2, scale=10.0), 0.01),  # size_t division: a huge divisor, 10^0
        (net("constant", 0, burn_in=100, power=-3.0), math.inf),  # 0^-3: Python's pow raised
        (net("exp", 401, gamma=-10.0), -math.inf),
        (net("poly", 5, power=-1e30), math.inf),
    ],
)
def test_learning_rate_at_the_float_limits_is_c_pow(case, expected):
    rate = learning_rate(case)
    assert rate == pytest.approx(expected) if math.isfinite(expected) else rate == expected


def test_a_fifo_is_refused_before_it_is_opened(tmp_path):
    fifo = tmp_path / "f.cfg"
    os.mkfifo(fifo)
    with pytest.raises(DLServerError, match=r"f.cfg: cannot open cfg: not a regular file \(a FIFO\)"):
        read_input_file(str(fifo), "cfg")
    assert kernels.read_files([str(fifo), str(tmp_path)], -1) == [None, None]


def test_files_over_the_size_limits_are_refused_before_the_read(tmp_path, monkeypatch):
    big = tmp_path / "big.weights"
    with open(big, "wb") as f:
        f.truncate(3 << 30)
    with pytest.raises(DLServerError, match="3221225472 bytes is over the limit 536870912 .DL_SERVER_MAX_FI"):
        read_input_file(str(big), "weights file")
    small = tmp_path / "small"
    small.write_bytes(bytes(100))
    assert kernels.read_files([str(small), str(big)], 99) == [None, None]
    assert kernels.read_files([str(small)], 100) == [bytes(100)]
    monkeypatch.setenv("DL_SERVER_MAX_TEXT_BYTES", "99")
    limits.refresh()
    try:
        with pytest.raises(DLServerError, match="100 bytes is over the limit 99 .DL_SERVER_MAX_TEXT_BYTES"):
            read_input_file(str(small), "names list", limit=limits.text_bytes())
    finally:
        monkeypatch.delenv("DL_SERVER_MAX_TEXT_BYTES")
        limits.refresh()


def test_decoded_pixels_are_counted_per_run(monkeypatch):
    monkeypatch.setenv("DL_SERVER_MAX_DECODED_PIXELS", "1000")
    limits.refresh()
    try:
        limits.charge_pixels(20, 25)
        limits.charge_pixels(20, 25)
        with pytest.raises(limits.DecodeBudgetError, match="1001 pixels with this one .1 x 1., over"):
            limits.charge_pixels(1, 1)
        limits.charging_pixels = False  # training's batches after its first decode of each image
        limits.charge_pixels(1000, 1000)
    finally:
        monkeypatch.delenv("DL_SERVER_MAX_DECODED_PIXELS")
        limits.refresh()
    assert limits.decoded_pixels == 0 and limits.charging_pixels


@pytest.mark.parametrize("mark", NEEDS_HOST_WASM)
def test_a_timeout_over_before_the_guest_starts_writes_nothing(tmp_path, monkeypatch, program, capfd, mark):
    """--timeout 1e-9 fires while the program compiles, before the store's epoch deadline is
    set: that bump was lost, the run went on to succeed and wrote its output back."""
    from dlserver_host import cli

    (tmp_path / "cfg").mkdir()
    shutil.copy(ROOT / "cfg" / "mnist_lenet.cfg", tmp_path / "cfg" / "mnist_lenet.cfg")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "a.weights").write_bytes(flat_lenet_weights(0.5))
    monkeypatch.chdir(tmp_path)
    argv = ["aggregation", "darknet", "cfg/mnist_lenet.cfg", "model/avg.weights", "model/a.weights"]
    flags = ["--program", program, "--timeout", "1e-9", "-i", "cfg", "model", "-o", "model"]
    status = cli.main([*flags, "--", *argv])
    err = capfd.readouterr().err
    assert status == 1 and "time" in err.splitlines()[-1], err[-500:]
    assert os.listdir(tmp_path / "model") == ["a.weights"]


def test_buffers_held_only_by_a_reference_cycle_do_not_count_against_the_budget(monkeypatch):
    """An earlier network kept alive only by a cycle (a traceback, a layer pointing back at
    its network) is garbage: the ledger collects it before refusing a buffer."""
    import gc

    from dlserver import buffers

    monkeypatch.setattr(buffers, "_budget", buffers.live_bytes() + 3 * 2**20)

    class Holder:
        pass

    gc.disable()
    try:
        holder = Holder()
        holder.me = holder
        holder.data = buffers.zeros(2**19)  # 2 MiB
        del holder
        assert len(buffers.zeros(2**19)) == 2**19  # fits only once the cycle is collected
    finally:
        gc.enable()
