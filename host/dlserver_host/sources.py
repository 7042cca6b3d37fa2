"""Map the FEE's input and output sources onto WASI preopens, and write outputs back.

The guest sees one tree rooted at ``/`` whose paths are the host's paths relative
to the current directory (``data/mnist/x.png`` on the host is ``/data/mnist/x.png``
in the guest, and the guest's cwd is ``/``).  That tree is built from preopens:

* an input directory is preopened read-only where it lies (no copy);
* an input file is copied into a private staging directory, never its parent
  preopened, so that its siblings stay invisible;
* an output source is a private writable directory, seeded with the host's
  contents when the guest could otherwise read that path (it is, or lies inside,
  an input directory), and preopened at its own path;
* a private directory at ``/`` holds staged files and the mount points of the
  other preopens (the guest's libc picks the longest matching preopen prefix).

After a successful run :meth:`StagedSources.write_back` copies every file that is
new or changed in an output directory to the host, each through a temporary name
in its destination directory and ``os.replace``, never through a symlink.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from .atomic import copy_beside
from .tempdirs import OwnedDir, remove_abandoned, remove_abandoned_files

ROOT = PurePosixPath(".")
CLEANUP_SECONDS = 0.5


class SourceError(Exception):
    """A source path that cannot be used, or a failed write-back (message is user-facing)."""


class Mount(NamedTuple):
    """One preopen: ``host_dir`` appears to the guest at ``guest_path``."""

    guest_path: str
    host_dir: Path
    writable: bool


class _Area:
    """A directory of the guest tree backed by one preopen (private or the host's own)."""

    def __init__(self, rel: PurePosixPath, host_dir: Path, *, is_output: bool, private: bool):
        self.rel = rel
        self.host_dir = host_dir
        self.private = private  # our temp dir (True) or the host's input dir (False)
        self.is_output = is_output  # writable to the guest, written back
        self.baseline: dict[PurePosixPath, tuple[int, int]] = {}  # file -> (size, mtime_ns)


def source_relpath(text: str, cwd: Path) -> PurePosixPath:
    """Return the cwd-relative path named by a source argument, or raise SourceError.

    Relative paths are taken as they are; an absolute path must lie inside ``cwd``.
    Any ``..`` component is refused.  ``.`` and ``./`` name the root.
    """
    if not text:
        raise SourceError("empty source path")
    path = PurePosixPath(text)
    if ".." in path.parts:
        raise SourceError(f"source path must not contain '..': {text}")
    if path.is_absolute():
        try:
            path = path.relative_to(PurePosixPath(os.fspath(cwd)))
        except ValueError:
            raise SourceError(
                f"source path is outside the current directory: {text} "
                "(sources are relative to the current directory)"
            ) from None
    return PurePosixPath(*path.parts) if path.parts else ROOT


def check_resolves_inside(cwd: Path, rel: PurePosixPath, text: str) -> None:
    """Refuse a source that is, or lies below, a symlink leading out of ``cwd`` (like '..'),
    naming where it leads. The check is by path: a hard link to an outside file is an
    ordinary file of the tree and cannot be told apart (do not hard-link what the guest
    must not see into the working directory)."""
    root = os.path.realpath(cwd)
    target = os.path.realpath(cwd / rel)
    if target != root and not target.startswith(root.rstrip(os.sep) + os.sep):
        raise SourceError(
            f"source path resolves outside the current directory: {text} -> {target} "
            "(a symlink; sources are relative to the current directory, '..' is refused)"
        )


def _contains(outer: PurePosixPath, inner: PurePosixPath) -> bool:
    """True if ``inner`` is ``outer`` or lies below it."""
    return outer == ROOT or inner.parts[: len(outer.parts)] == outer.parts


def _below(outer: PurePosixPath, inner: PurePosixPath) -> PurePosixPath:
    """``inner`` relative to ``outer`` (which contains it)."""
    return ROOT if inner == outer else PurePosixPath(*inner.parts[len(outer.parts) :])


def _guest_path(rel: PurePosixPath) -> str:
    return "/" if rel == ROOT else "/" + rel.as_posix()


def _dedupe(paths: list[PurePosixPath]) -> list[PurePosixPath]:
    return list(dict.fromkeys(paths))


class StagedSources:
    """The preopens for one run, and the private directories behind them.

    Use as a context manager: the private directories are removed on exit,
    whatever happened.
    """

    def __init__(self, cwd: Path, areas: list[_Area], owned: OwnedDir):
        self.cwd = cwd
        self._areas = areas
        self._owned = owned
        self._temp_dir = owned.path

    @property
    def mounts(self) -> list[Mount]:
        """The preopens, shallowest first."""
        return [Mount(_guest_path(a.rel), a.host_dir, a.is_output) for a in self._areas]

    def __enter__(self) -> StagedSources:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        """Remove every private directory (again while an abandoned guest still writes into
        it, for up to CLEANUP_SECONDS)."""
        deadline = time.monotonic() + CLEANUP_SECONDS
        shutil.rmtree(self._temp_dir, ignore_errors=True)
        while os.path.lexists(self._temp_dir) and time.monotonic() < deadline:
            time.sleep(0.01)
            shutil.rmtree(self._temp_dir, ignore_errors=True)
        self._owned.release()

    def changed_outputs(self) -> list[OutputFile]:
        """Every new or changed regular file in the output directories.

        Symlinks and special files the guest made are ignored, as is anything
        under another preopen's mount point.
        """
        changes = []
        for area in self._areas:
            if not area.is_output:
                continue
            nested = {
                _below(area.rel, other.rel)
                for other in self._areas
                if other is not area and _contains(area.rel, other.rel)
            }
            for rel, st in _regular_files(area.host_dir, skip=nested):
                if area.baseline.get(rel) != (st.st_size, st.st_mtime_ns):
                    changes.append(OutputFile(area.host_dir / rel, self.cwd / area.rel, rel))
        return changes

    def write_back(self, unbroken: Callable[[], AbstractContextManager] = nullcontext) -> list[Path]:
        """Copy new or changed output files to the host; return the host paths written.

        All or nothing: every destination is checked first (no symlink and no file
        among its parents below the output source, no directory in its place), then
        every file is copied beside its destination under a temporary name; a refusal
        or a failure there (a full disk) removes those copies and raises SourceError,
        with nothing written. Only then are they renamed into place, inside
        ``unbroken()`` (StopSignals.deferred: a signal waits for the last rename).
        """
        changes = self.changed_outputs()
        for change in changes:
            change.check_destination()
        for directory in {change.destination.parent for change in changes}:
            remove_abandoned_files(directory)  # what a write-back killed by SIGKILL left
        staged: list[tuple[Path, Path]] = []
        try:
            for change in changes:
                staged.append((copy_beside(change.private_file, change.destination), change.destination))
        except BaseException as e:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise SourceError(
                    f"cannot write back {change.destination}: {e.strerror or e}; nothing was written back"
                ) from None
            raise
        with unbroken():
            for tmp, dest in staged:
                try:
                    os.replace(tmp, dest)
                except OSError as e:
                    for rest, _ in staged:
                        rest.unlink(missing_ok=True)
                    raise SourceError(f"cannot write back {dest}: {e.strerror or e}") from None
        return [change.destination for change in changes]


class OutputFile(NamedTuple):
    """A file the guest wrote: its private copy and where it goes on the host."""

    private_file: Path
    output_root: Path  # the output source on the host
    rel: PurePosixPath  # path below the output source

    @property
    def destination(self) -> Path:
        return self.output_root / self.rel

    def check_destination(self) -> None:
        """Refuse a destination reached through a symlink, or with a directory in its place.

        Components below the output source are checked with lstat; missing ones
        are fine (they are created).  The output source's own path is the user's.
        """
        current = self.output_root
        for i, part in enumerate(self.rel.parts):
            current = current / part
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                return
            if i < len(self.rel.parts) - 1:
                if stat.S_ISLNK(st.st_mode):
                    raise SourceError(f"refusing to write back through a symlink: {current}")
                if not stat.S_ISDIR(st.st_mode):
                    raise SourceError(f"cannot write back {self.destination}: {current} is not a directory")
            elif stat.S_ISDIR(st.st_mode):
                raise SourceError(f"cannot write back {self.destination}: a directory is in the way")


def _regular_files(top: Path, skip: set[PurePosixPath]):
    """Yield (relative path, lstat) of regular files under ``top``, not following links."""
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        rel_dir = PurePosixPath(Path(dirpath).relative_to(top).as_posix())
        dirnames[:] = [d for d in dirnames if PurePosixPath(rel_dir, d) not in skip]
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                yield PurePosixPath(rel_dir, name), st


def _source_kind(cwd: Path, rel: PurePosixPath, role: str) -> str:
    """'dir', 'file' or 'missing' (outputs only); raise SourceError otherwise."""
    host = cwd / rel
    try:
        st = os.stat(host)
    except FileNotFoundError:
        if role == "output":
            return "missing"
        raise SourceError(f"input source not found: {rel}") from None
    except OSError as e:
        raise SourceError(f"cannot use {role} source {rel}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if role == "output":
        raise SourceError(f"output source is not a directory: {rel} (name its directory, e.g. ./)")
    if stat.S_ISREG(st.st_mode):
        return "file"
    raise SourceError(f"input source is neither a file nor a directory: {rel}")


def stage_sources(
    inputs: list[str], outputs: list[str], cwd: Path | None = None, temp_parent: str | None = None
) -> StagedSources:
    """Check the sources, prepare the private directories and return the preopens.

    ``inputs`` and ``outputs`` are the paths as given on the command line.
    Raises SourceError (nothing left behind) for a bad or missing source.
    """
    cwd = Path(cwd or os.getcwd())
    input_paths = _dedupe([source_relpath(p, cwd) for p in inputs])
    output_paths = _dedupe([source_relpath(p, cwd) for p in outputs])
    for text in [*inputs, *outputs]:
        check_resolves_inside(cwd, source_relpath(text, cwd), text)
    input_kinds = {rel: _source_kind(cwd, rel, "input") for rel in input_paths}
    for rel in output_paths:
        if input_kinds.get(rel) == "file":
            raise SourceError(f"output source is not a directory: {rel} (name its directory, e.g. ./)")
        _source_kind(cwd, rel, "output")
    input_dirs = [rel for rel in input_paths if input_kinds[rel] == "dir"]
    input_files = [rel for rel in input_paths if input_kinds[rel] == "file"]

    remove_abandoned(temp_parent)  # what runs killed by SIGKILL left
    try:
        owned = OwnedDir("dl-server-", temp_parent)
        temp_dir = owned.path
    except OSError as e:
        raise SourceError(
            f"cannot make the staging directory in {tempfile.gettempdir()}: {e.strerror}"
        ) from None
    try:
        areas = _plan_areas(cwd, temp_dir, input_dirs, output_paths)
        _populate(cwd, temp_dir, areas, input_dirs, input_files)
    except OSError as e:
        owned.release()
        where = f"{e.filename}: " if e.filename else ""
        raise SourceError(
            f"cannot stage the sources in {temp_dir.parent}: {where}{e.strerror or e}"
        ) from None
    except BaseException:
        owned.release()
        raise
    return StagedSources(cwd, areas, owned)


def _nearest_area(areas: list[_Area], rel: PurePosixPath, strict: bool = False) -> _Area | None:
    """The deepest area containing ``rel`` (strictly, if asked)."""
    best = None
    for area in areas:
        if (
            _contains(area.rel, rel)
            and not (strict and area.rel == rel)
            and (best is None or len(area.rel.parts) > len(best.rel.parts))
        ):
            best = area
    return best


def _plan_areas(
    cwd: Path, temp_dir: Path, input_dirs: list[PurePosixPath], output_paths: list[PurePosixPath]
) -> list[_Area]:
    """Decide the preopens: outputs, uncovered input dirs, and a private root if needed."""
    areas = [
        _Area(rel, temp_dir / f"out{i}", is_output=True, private=True) for i, rel in enumerate(output_paths)
    ]
    for rel in sorted(input_dirs, key=lambda p: len(p.parts)):
        if rel in output_paths:
            continue
        enclosing = _nearest_area(areas, rel)
        if enclosing is not None and not enclosing.private:
            continue  # already visible, read-only, through an enclosing input dir
        areas.append(_Area(rel, cwd / rel, is_output=False, private=False))
    if not any(a.rel == ROOT for a in areas):
        areas.append(_Area(ROOT, temp_dir / "root", is_output=False, private=True))
    areas.sort(key=lambda a: len(a.rel.parts))
    return areas


def _populate(
    cwd: Path,
    temp_dir: Path,
    areas: list[_Area],
    input_dirs: list[PurePosixPath],
    input_files: list[PurePosixPath],
) -> None:
    """Seed outputs, stage input files, make mount points, record the baseline."""
    for area in areas:
        if area.private:
            area.host_dir.mkdir()
    for area in areas:
        if area.is_output and _guest_could_read(area.rel, input_dirs) and (cwd / area.rel).is_dir():
            nested = [cwd / a.rel for a in areas if a is not area and _contains(area.rel, a.rel)]
            _seed_copy(cwd / area.rel, area.host_dir, skip=[*nested, temp_dir])
    for rel in input_files:
        holder = _nearest_area(areas, rel)
        assert holder is not None  # the root area holds every path
        if not holder.private:
            continue  # inside an input dir preopened where it lies
        inner = _below(holder.rel, rel)
        (holder.host_dir / inner).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(cwd / rel, holder.host_dir / inner)
    for area in areas:
        if area.rel == ROOT:
            continue
        enclosing = _nearest_area(areas, area.rel, strict=True)
        assert enclosing is not None  # the root area holds every other area
        if enclosing.private:
            (enclosing.host_dir / _below(enclosing.rel, area.rel)).mkdir(parents=True, exist_ok=True)
    for area in areas:
        if area.is_output:
            area.baseline = {
                rel: (st.st_size, st.st_mtime_ns) for rel, st in _regular_files(area.host_dir, skip=set())
            }


def _guest_could_read(rel: PurePosixPath, input_dirs: list[PurePosixPath]) -> bool:
    """True if ``rel`` is, or lies inside, an input directory."""
    return any(_contains(d, rel) for d in input_dirs)


def _seed_copy(src: Path, dst: Path, skip: list[Path]) -> None:
    """Copy the host tree ``src`` into ``dst``; symlinks stay symlinks, ``skip`` paths are left out,
    and so are FIFOs, sockets and devices (copying a FIFO waits for a writer, /dev/zero never
    ends: the guest finds no file there).

    ``skip`` holds host paths of nested mounts and of our own temp directory
    (mapped back to where they would be met under ``src``).
    """
    skip_real = {os.path.realpath(p) for p in skip}
    skip_names = {os.path.basename(p) for p in skip_real}

    def ignore(dirpath: str, names: list[str]) -> set[str]:
        return {
            n
            for n in names
            if n in skip_names
            and os.path.realpath(os.path.join(dirpath, n)) in skip_real
            or _is_special(os.path.join(dirpath, n))
        }

    shutil.copytree(src, dst, symlinks=True, ignore=ignore, dirs_exist_ok=True)


def _is_special(path: str) -> bool:
    """Neither a regular file, a directory nor a symlink (not followed)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode))
