"""Flower's deployment runtime on this machine: one ``flower-superlink`` and N
``flower-supernode`` processes on loopback, TLS on (a CA and a server certificate for
127.0.0.1 made here) and SuperNode authentication on (one P-384 key pair per node, each
public key registered with ``flwr supernode register`` before its node starts).

Each node names its shard and the project in ``--node-config`` (``partition-id``,
``num-partitions``, ``root``); a SuperNode starts a ``flwr-clientapp`` process per message.
Across machines it is the same with the SuperLink's address instead of 127.0.0.1.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import ipaddress
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class DeploymentError(Exception):
    """A process of the federation did not come up: one line naming it and its log."""


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """(ca.crt, server.pem, server.key): a one-day CA and a server certificate for 127.0.0.1."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("dl-server test CA"))
        .issuer_name(_name("dl-server test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.crt", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(_pem_key(key))
    return paths


def make_node_key(directory: Path, name: str) -> tuple[Path, Path]:
    """(private, public) OpenSSH files of a P-384 key pair: a SuperNode's identity."""
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = directory / name, directory / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    return private, public


def _wait_health(url: str, proc: subprocess.Popen, what: str, log: Path, context=None) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DeploymentError(f"{what} exited with {proc.returncode} (log: {log})")
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise DeploymentError(f"{what} did not answer at {url} within 60 s (log: {log})")


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def register(tool, env: dict[str, str], public_key: Path, connection: str) -> str:
    """Register a SuperNode's public key with the SuperLink; its node ID."""
    out = subprocess.run(
        [tool("flwr"), "supernode", "register", str(public_key), connection, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
    )
    try:
        return str(json.loads(out.stdout)["node-id"])
    except (ValueError, KeyError):
        raise DeploymentError(
            f"flwr supernode register {public_key.name}: {(out.stdout + out.stderr).strip()[-300:]}"
        ) from None


@contextlib.contextmanager
def deployment(
    tool, env: dict[str, str], home: Path, root: Path, num_clients: int, port: int, stop
) -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """A TLS + node-auth federation of ``num_clients`` SuperNodes; yields (connection name,
    the processes); stops them all (by PID) at the end."""
    import ssl

    tls = home / "tls"
    ca, cert, key = make_certificates(tls)
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\n'
        f'address = "127.0.0.1:{port}"\nroot-certificates = "{ca}"\n'
    )
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    try:
        link_log = logs / "superlink.log"
        procs.append(
            _start(
                [
                    tool("flower-superlink"),
                    "--ssl-ca-certfile",
                    str(ca),
                    "--ssl-certfile",
                    str(cert),
                    "--ssl-keyfile",
                    str(key),
                    "--enable-supernode-auth",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--database",
                    str(home / "deploy-state.db"),
                    "--disable-runtime-dependency-installation",
                ],  # fmt: skip
                env,
                link_log,
            )
        )
        context = ssl.create_default_context(cafile=str(ca))
        _wait_health(f"https://127.0.0.1:{port}/health", procs[0], "flower-superlink", link_log, context)
        keys = [make_node_key(tls, f"node{k + 1}") for k in range(num_clients)]
        with concurrent.futures.ThreadPoolExecutor(num_clients) as pool:  # each `flwr` call: ~2 s
            node_ids = list(pool.map(lambda key: register(tool, env, key[1], "deploy"), keys))
        # the server's map from authenticated node to client (run config node-clients)
        (home / "node-clients").write_text(",".join(f"{node}:{k + 1}" for k, node in enumerate(node_ids)))
        for k, (private, _public) in enumerate(keys):
            node_config = f'partition-id={k} num-partitions={num_clients} root="{root}"'
            node_log = logs / f"supernode{k + 1}.log"
            procs.append(
                _start(
                    [
                        tool("flower-supernode"),
                        "--superlink",
                        f"127.0.0.1:{port}",
                        "--root-certificates",
                        str(ca),
                        "--auth-supernode-private-key",
                        str(private),
                        "--node-config",
                        node_config,
                        "--port",
                        str(port + 10 + k),
                    ],  # fmt: skip
                    env,
                    node_log,
                )
            )
            (logs / f"supernode{k + 1}.pid").write_text(f"{procs[-1].pid}\n")  # for an operator (or a test)
        yield "deploy", procs
    finally:
        for proc in reversed(procs):
            stop(proc)
