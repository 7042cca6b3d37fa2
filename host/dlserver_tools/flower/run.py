"""`make federated`: the federation on Flower's simulation engine (Ray), fully offline.

By default the simulation runs in this process (flwr's run_simulation, Ray backend, one CPU
per client so clients train in parallel): no SuperLink, no `flwr` CLI, so ~20 s less of
fixed cost than `flwr run`; a ServerApp that fails raises here, and the app's results.json
must be there. With --flwr-run: as Flower's CLI does it, our own SuperLink in simulation mode
(FLWR_HOME under build/flwr) and `flwr run --stream` of the app in flower_app/, the run's real
status checked (`flwr run --stream` exits 0 when the ServerApp failed), the SuperLink stopped by
its PID. With --deployment: Flower's deployment runtime on loopback (deployment.py), also
through `flwr run`. The same app and settings give the same bytes in all three.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ..federated import METHOD_HELP, NOISE_SEED_HELP, FederatedError, check_data, checked_options
from . import steps
from .deployment import DeploymentError, deployment

OFFLINE = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # no GPUs: keep Ray from warning about their variables
    # Ray's memory monitor kills its workers (our clients) when the machine's memory is 95% used,
    # by whatever process: on a shared machine another job's made every client fail (the kernel's
    # OOM killer still applies)
    "RAY_memory_monitor_refresh_ms": "0",
}


class FlowerRunError(Exception):
    """The federation did not complete: one line saying why."""


def tool(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


def start_superlink(env: dict[str, str], home: Path) -> subprocess.Popen:
    """flower-superlink in simulation mode, as `flwr run` would start it, but ours to stop."""
    log = home / "local-superlink" / "superlink.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    port = env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"]
    cmd = [
        tool("flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
        "--host", "127.0.0.1", "--port", port, "--log-file", str(log),
        "--database", str(home / "local-superlink" / "state.db"),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FlowerRunError(f"flower-superlink exited with {proc.returncode} (log: {log})")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.2)
    stop(proc)
    raise FlowerRunError(f"flower-superlink did not answer on 127.0.0.1:{port} within 30 s (log: {log})")


def stop(proc: subprocess.Popen) -> None:
    """Stop the SuperLink we started (its process group: it and the simulation it spawned)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


def run_config(opts: argparse.Namespace, root: Path) -> dict[str, str | int | float]:
    """The app's run config (the keys its pyproject declares)."""
    return {
        "root": str(root),
        "program": str(opts.program.resolve()),
        "work": opts.work,
        "num-clients": opts.num_clients,
        "num-rounds": opts.rounds,
        "min-clients": opts.min_clients,
        "batches": opts.batches,
        "policy": opts.policy,
        "learning-rate": opts.learning_rate,
        "seed": opts.seed,
        "weighting": opts.weighting,
        "method": opts.method,
        "noise-seed": -1 if opts.noise_seed is None else opts.noise_seed,
        "valid-list": opts.valid_list,
        "base-cfg": "cfg/mnist_lenet.cfg",
        "timeout": float(opts.timeout or 0),
        "round-timeout": opts.round_timeout,
        "fraction-evaluate": opts.fraction_evaluate,
    }


def begin_round0(config: dict):
    """Round 0 of the ServerApp (server_app.begin), its module imported here (flwr with it)."""
    from .server_app import begin

    return begin(config)


def in_process(opts: argparse.Namespace, config: dict, env: dict[str, str]) -> dict[str, float]:
    """The simulation in this process (flwr's run_simulation): no SuperLink, no flwr CLI. Ray
    (one CPU per client, no dashboard, a small object store, with flwr's init arguments) starts
    here first, while round 0 (Darknet's init, its validation) runs in a thread: that hides
    round 0 and flwr's imports behind Ray's ~10 s start, and the workers Ray starts then take
    the actors (a runtime_env, as flwr's backend would pass, makes Ray start others: ~4 s more).
    The last global model is validated while Ray stops. An exception of the ServerApp
    propagates (so the run's real status is this call's).
    Returns when Ray was asked to start, was up, round 0 was done and the simulation (with Ray's
    stop) returned, as time.time() (`make bench-federated` shows where the time goes)."""
    import logging
    import warnings

    os.environ.update({k: v for k, v in env.items() if k in OFFLINE or k == "FLWR_HOME"})  # Ray's too
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    init_args: dict = {  # ray.init's (flwr's BackendConfig init_args)
        "num_cpus": cpus,
        "num_gpus": 0,
        "include_dashboard": False,
        "object_store_memory": 80 * 1024 * 1024,  # arrays of LeNet: 0.2 MB a message
        "logging_level": "ERROR",
        "log_to_driver": bool(opts.verbose),
    }
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        begun = pool.submit(begin_round0, config)  # flwr's imports too, while Ray starts
        import ray

        # Ray's processes inherit this environment (our sys.path included, as flwr's RayBackend
        # passes it); without a runtime_env the workers Ray starts with it serve the actors
        os.environ["PYTHONPATH"] = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])
        marks = {"ray_init": time.time()}
        ray.init(**init_args)  # flwr's RayBackend.init_ray then finds Ray up
        marks["ray_ready"] = time.time()
        try:
            started = begun.result()
            marks["round0_done"] = time.time()
        except BaseException:
            ray.shutdown()
            raise
    from flwr.simulation import run_simulation

    from . import server_app as server_module
    from .client_app import client_app

    if not opts.verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)  # run_simulation's deprecation warning, info
        warnings.filterwarnings("ignore", module="flwr")
    backend: dict = {"client_resources": {"num_cpus": 1, "num_gpus": 0}, "init_args": init_args}
    finish: list = []  # the last validation and results.json, done here while Ray stops
    run_simulation(
        server_module.server_app(config, started, finish),
        client_app(config),
        num_supernodes=opts.num_clients,
        backend_config=backend,  # flwr's BackendConfig
        verbose_logging=bool(opts.verbose),
    )
    marks["simulation_done"] = time.time()
    for then in finish:  # none if the ServerApp failed (run_simulation raised that then)
        then()
    return marks


def flower_federation(opts: argparse.Namespace) -> dict:
    root = opts.root.resolve()
    try:
        check_data(opts)  # MNIST prepared for this split, the test list there
    except FederatedError as e:
        raise FlowerRunError(str(e)) from None
    home = (root / "build" / ("flwr-deploy" if opts.deployment else "flwr")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **OFFLINE,
        "FLWR_HOME": str(home),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # flower-superexec
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(opts.port),
    }
    results = root / opts.work / "results.json"
    results.unlink(missing_ok=True)
    app_dir = Path(__file__).resolve().parents[3] / "flower_app"
    if opts.noise_seed is not None:
        print(steps.noise_note(opts.noise_seed), flush=True)
    started = time.perf_counter()
    config = run_config(opts, root)
    if not opts.deployment and not opts.flwr_run:
        try:
            marks = in_process(opts, config, env)
        except Exception as e:  # the ServerApp's, re-raised by run_simulation: the run failed
            raise FlowerRunError(f"the simulation failed: {type(e).__name__}: {e}") from None
        run_id: str | None = "in-process"
        status, log = "completed", home
        if results.is_file():
            (root / opts.work / "timeline.json").write_text(json.dumps(marks, indent=1) + "\n")
    else:
        if opts.deployment:
            federation = deployment(tool, env, home, root, opts.num_clients, opts.port, stop)
            extra: list[str] = []
            log = home / "logs"
        else:
            federation = simulation(env, home)
            extra = ["--federation-config", f"num-supernodes={opts.num_clients} client-resources-num-cpus=1"]
            log = home / "local-superlink" / "superlink.log"
        try:
            with federation as (connection, _processes):
                if opts.deployment:  # each reply is the client its node's registered key is
                    config["node-clients"] = (home / "node-clients").read_text()
                cmd = [tool("flwr"), "run", str(app_dir), connection, "--stream"]
                cmd += ["--run-config", " ".join(f"{k}={json.dumps(v)}" for k, v in config.items()), *extra]
                run_id = stream(cmd, env, root, opts.verbose)
                status = (
                    run_status(env, run_id, connection) if run_id else "unknown (no run ID in flwr's output)"
                )
        except DeploymentError as e:
            raise FlowerRunError(str(e)) from None
    seconds = time.perf_counter() - started
    if not status.endswith("completed") or not results.is_file():
        raise FlowerRunError(f"Flower run {run_id} {status}; see {log}")
    result = json.loads(results.read_text())
    result["wall_seconds"] = round(seconds, 1)
    result["mode"] = "deployment (TLS, SuperNode auth)" if opts.deployment else "simulation"
    if not opts.deployment:
        result["mode"] += " (flwr run, SuperLink)" if opts.flwr_run else " (in-process)"
    return result


def stream(cmd: list[str], env: dict[str, str], root: Path, verbose: bool) -> str | None:
    """Run `flwr run --stream`, showing the app's round lines and errors; the run ID."""
    proc = subprocess.Popen(
        cmd, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    run_id = None
    for line in proc.stdout:
        if verbose or re.search(r"round \d+:|refused:|no reply|error|Error|Traceback", line):
            print(line, end="", flush=True)
        found = re.search(r"run (?:ID )?(\d{6,})", line)
        if found and run_id is None:
            run_id = found.group(1)
    proc.wait()
    return run_id


@contextlib.contextmanager
def simulation(env: dict[str, str], home: Path) -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """Our own SuperLink in simulation mode, as `flwr run` would start it; stopped by PID."""
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
    )
    superlink = start_superlink(env, home)
    try:
        yield "local", [superlink]
    finally:
        stop(superlink)


def run_status(env: dict[str, str], run_id: str, connection: str) -> str:
    """The run's status as the SuperLink has it (e.g. finished:completed, finished:failed)."""
    out = subprocess.run(
        [tool("flwr"), "list", connection, "--run-id", run_id, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
    )
    try:
        runs = json.loads(out.stdout).get("runs", [])
        return str(runs[0]["status"])
    except (ValueError, KeyError, IndexError, AttributeError):
        return f"unknown (flwr list: {out.stdout.strip()[-200:] or out.stderr.strip()[-200:]})"


def print_table(result: dict) -> None:
    print()
    print("\n".join(steps.table_lines(result["table"])))
    print(f"\nFlower {result['mode']}: {result['wall_seconds']:.1f} s wall time")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dl-server-flower", description=__doc__.splitlines()[0])
    p.add_argument("--num-clients", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--data-dist", choices=["iid", "non-iid"], default="iid")
    p.add_argument("--policy", default="constant")
    p.add_argument("--learning-rate", type=float, default=0.01)
    p.add_argument("--weighting", choices=["auto", "examples", "equal"], default="auto")
    p.add_argument("--method", default="mean", help=METHOD_HELP)
    p.add_argument("--noise-seed", type=int, default=None, metavar="N", help=NOISE_SEED_HELP)
    p.add_argument("--min-clients", type=int, default=0, help="good replies a round needs (default: all)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--fraction-evaluate",
        type=float,
        default=0.0,
        help="clients that also validate each global model on their own test shard (default none)",
    )
    p.add_argument("--valid-list", default="data/mnist/mnist.valid.list")
    p.add_argument("--root", type=Path, default=Path("."))
    p.add_argument("--work", default="federated")
    p.add_argument("--program", type=Path, default=Path("dl-server.wasm"))
    p.add_argument("--timeout", type=float, default=None, help="per-run --timeout of the host")
    p.add_argument("--round-timeout", type=float, default=3600.0, help="seconds the server waits for replies")
    p.add_argument("--port", type=int, default=39091, help="SuperLink HTTP port (all its APIs)")
    p.add_argument("--verbose", action="store_true", help="all of flwr's output")
    p.add_argument(
        "--flwr-run",
        action="store_true",
        help="simulation through a SuperLink of our own and `flwr run` (as Flower's CLI does it) "
        "instead of in this process (flwr's run_simulation)",
    )
    p.add_argument(
        "--deployment",
        action="store_true",
        help="Flower's deployment runtime instead of the simulation: a SuperLink and one SuperNode per "
        "client on loopback, TLS and SuperNode authentication on (see deployment.py)",
    )
    return checked_options(p, p.parse_args(argv))


def main(argv=None) -> int:
    opts = parse_args(argv)
    try:
        if not opts.program.is_file():
            raise FlowerRunError(f"{opts.program} not built (run make)")
        print_table(flower_federation(opts))
    except FlowerRunError as e:
        print(f"federated: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
