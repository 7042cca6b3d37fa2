"""Unit tests of the host's source mapping and write-back (no wasm involved)."""

import os
import shlex
from pathlib import Path, PurePosixPath

import pytest

from dlserver_host import cli, runtime
from dlserver_host.sources import Mount, SourceError, source_relpath, stage_sources


def make_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A project-like cwd with the seed's layout."""
    ws = tmp_path / "ws"
    make_tree(
        ws,
        {
            "args.cfg": "classifier\npredict\n",
            "cfg/mnist.dataset": "classes=10\n",
            "data/mnist/mnist.names.list": "0\n1\n",
            "data/mnist/sibling.txt": "hidden\n",
            "data/mnist/images_client1/t_00000_c5.png": "png",
            "model/a.weights": "A",
            "model/b.weights": "B",
        },
    )
    return ws


@pytest.fixture
def temp_parent(tmp_path: Path) -> Path:
    """Where the private directories go, so tests can see they are removed."""
    parent = tmp_path / "tmp"
    parent.mkdir()
    return parent


def mount_at(staged, guest_path: str) -> Mount:
    (mount,) = [m for m in staged.mounts if m.guest_path == guest_path]
    return mount


def guest_view(staged, rel: str) -> Path | None:
    """Resolve a guest-relative path the way wasi-libc does: longest preopen prefix wins."""
    best = None
    for mount in staged.mounts:
        prefix = PurePosixPath(mount.guest_path)
        target = PurePosixPath("/", rel)
        if (target == prefix or prefix in target.parents) and (
            best is None or len(prefix.parts) > len(PurePosixPath(best.guest_path).parts)
        ):
            best = mount
    assert best is not None  # "/" is always preopened
    path = best.host_dir / PurePosixPath("/", rel).relative_to(best.guest_path)
    return path if path.exists() else None


# ---- source paths ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("args.cfg", "args.cfg"),
        ("./", "."),
        (".", "."),
        ("data/", "data"),
        ("./data/./mnist", "data/mnist"),
    ],
)
def test_source_relpath_accepts_relative_paths(text, expected, tmp_path):
    assert source_relpath(text, tmp_path) == PurePosixPath(expected)


def test_source_relpath_maps_an_absolute_path_inside_cwd(tmp_path):
    assert source_relpath(str(tmp_path / "cfg"), tmp_path) == PurePosixPath("cfg")


@pytest.mark.parametrize("text", ["../x", "data/../../x", "data/../cfg", ".."])
def test_source_relpath_refuses_dotdot(text, tmp_path):
    with pytest.raises(SourceError, match=r"'\.\.'"):
        source_relpath(text, tmp_path)


def test_source_relpath_refuses_absolute_paths_outside_cwd(tmp_path):
    with pytest.raises(SourceError, match="outside the current directory: /etc/passwd"):
        source_relpath("/etc/passwd", tmp_path)


def test_missing_input_is_named_and_nothing_is_left_behind(workspace, temp_parent):
    with pytest.raises(SourceError, match="input source not found: data/nope"):
        stage_sources(["args.cfg", "data/nope"], [], workspace, str(temp_parent))
    assert list(temp_parent.iterdir()) == []


def test_output_source_must_be_a_directory(workspace, temp_parent):
    with pytest.raises(SourceError, match="output source is not a directory: args.cfg"):
        stage_sources([], ["args.cfg"], workspace, str(temp_parent))


# ---- the guest's view ------------------------------------------------------------------


def test_nested_file_and_directory_inputs(workspace, temp_parent):
    inputs = ["args.cfg", "cfg", "data/mnist/mnist.names.list", "data/mnist/images_client1"]
    with stage_sources(inputs, [], workspace, str(temp_parent)) as staged:
        root = mount_at(staged, "/")
        assert not root.writable and temp_parent in root.host_dir.parents
        assert mount_at(staged, "/cfg") == Mount("/cfg", workspace / "cfg", False)
        images = mount_at(staged, "/data/mnist/images_client1")
        assert images == Mount("/data/mnist/images_client1", workspace / "data/mnist/images_client1", False)
        assert guest_view(staged, "args.cfg").read_text() == "classifier\npredict\n"
        assert guest_view(staged, "data/mnist/mnist.names.list").read_text() == "0\n1\n"
        assert guest_view(staged, "data/mnist/images_client1/t_00000_c5.png").read_text() == "png"
        # the staged file's siblings stay hidden; mount points make directory listings right
        assert guest_view(staged, "data/mnist/sibling.txt") is None
        assert guest_view(staged, "model/a.weights") is None
        assert sorted(os.listdir(root.host_dir / "data/mnist")) == ["images_client1", "mnist.names.list"]
        staged_root = root.host_dir
    assert not staged_root.exists()
    assert list(temp_parent.iterdir()) == []


def test_inputs_inside_an_input_directory_are_not_mounted_again(workspace, temp_parent):
    inputs = ["data", "data/mnist", "data/mnist/mnist.names.list"]
    with stage_sources(inputs, [], workspace, str(temp_parent)) as staged:
        assert [m.guest_path for m in staged.mounts] == ["/", "/data"]
        assert not (mount_at(staged, "/").host_dir / "data/mnist/mnist.names.list").exists()


def test_an_input_directory_is_not_copied(workspace, temp_parent):
    with stage_sources(["data"], [], workspace, str(temp_parent)) as staged:
        assert mount_at(staged, "/data").host_dir == workspace / "data"
        copied = [p for p in temp_parent.rglob("*") if p.is_file() and p.name != ".owner"]  # tempdirs.py
        assert copied == []


def test_output_that_is_also_an_input_is_a_seeded_private_copy(workspace, temp_parent):
    with stage_sources(["model"], ["model"], workspace, str(temp_parent)) as staged:
        model = mount_at(staged, "/model")
        assert model.writable and model.host_dir != workspace / "model"
        assert (model.host_dir / "a.weights").read_text() == "A"
        assert staged.changed_outputs() == []


def test_output_that_is_not_an_input_starts_empty(workspace, temp_parent):
    with stage_sources([], ["model"], workspace, str(temp_parent)) as staged:
        assert list(mount_at(staged, "/model").host_dir.iterdir()) == []


def test_whole_root_as_output_keeps_input_directories_read_only(workspace, temp_parent):
    with stage_sources(["args.cfg", "cfg", "data"], ["./"], workspace, str(temp_parent)) as staged:
        root = mount_at(staged, "/")
        assert root.writable and temp_parent in root.host_dir.parents
        assert mount_at(staged, "/data") == Mount("/data", workspace / "data", False)
        assert (root.host_dir / "args.cfg").read_text() == "classifier\npredict\n"
        assert (root.host_dir / "data").is_dir()  # mount point


def test_output_inside_an_input_directory_is_seeded(workspace, temp_parent):
    inputs = ["data", "data/mnist/images_client1"]
    with stage_sources(inputs, ["data/mnist"], workspace, str(temp_parent)) as staged:
        out = mount_at(staged, "/data/mnist")
        assert out.writable
        assert (out.host_dir / "mnist.names.list").read_text() == "0\n1\n"
        # the read-only input directory inside it is mounted, not copied
        assert (out.host_dir / "images_client1").is_dir()
        assert not (out.host_dir / "images_client1/t_00000_c5.png").exists()


# ---- write-back ------------------------------------------------------------------------


def test_write_back_copies_only_new_or_changed_files(workspace, temp_parent):
    before_b = os.stat(workspace / "model/b.weights")
    with stage_sources(["model"], ["model"], workspace, str(temp_parent)) as staged:
        private = mount_at(staged, "/model").host_dir
        (private / "a.weights").write_text("A2")  # changed
        (private / "sub/deeper").mkdir(parents=True)
        (private / "sub/deeper/new.weights").write_text("N")  # new, nested
        written = staged.write_back()
    assert sorted(written) == [workspace / "model/a.weights", workspace / "model/sub/deeper/new.weights"]
    assert (workspace / "model/a.weights").read_text() == "A2"
    assert (workspace / "model/sub/deeper/new.weights").read_text() == "N"
    after_b = os.stat(workspace / "model/b.weights")
    assert (after_b.st_ino, after_b.st_mtime_ns) == (before_b.st_ino, before_b.st_mtime_ns)
    assert list(temp_parent.iterdir()) == []


def test_write_back_replaces_files_atomically(workspace, temp_parent):
    """The destination is replaced by rename: a reader holding the old file keeps it whole."""
    old_inode = os.stat(workspace / "model/a.weights").st_ino
    with open(workspace / "model/a.weights") as reader:
        with stage_sources(["model"], ["model"], workspace, str(temp_parent)) as staged:
            (mount_at(staged, "/model").host_dir / "a.weights").write_text("A2" * 1000)
            staged.write_back()
        assert reader.read() == "A"
    assert os.stat(workspace / "model/a.weights").st_ino != old_inode
    leftovers = [p.name for p in (workspace / "model").iterdir() if p.name.endswith(".dl-server-tmp")]
    assert leftovers == []


def test_write_back_keeps_the_file_mode(workspace, temp_parent):
    os.chmod(workspace / "model/a.weights", 0o640)
    with stage_sources(["model"], ["model"], workspace, str(temp_parent)) as staged:
        (mount_at(staged, "/model").host_dir / "a.weights").write_text("A2")
        staged.write_back()
    assert os.stat(workspace / "model/a.weights").st_mode & 0o777 == 0o640


def test_write_back_of_the_root_output(workspace, temp_parent):
    with stage_sources(["args.cfg", "cfg", "data"], ["./"], workspace, str(temp_parent)) as staged:
        (mount_at(staged, "/").host_dir / "predictions.jpg").write_bytes(b"\xff\xd8")
        assert staged.write_back() == [workspace / "predictions.jpg"]
    assert (workspace / "args.cfg").read_text() == "classifier\npredict\n"


def test_write_back_refuses_a_symlink_on_the_host_and_writes_nothing(workspace, temp_parent, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (workspace / "model/sub").symlink_to(elsewhere)
    with stage_sources([], ["model"], workspace, str(temp_parent)) as staged:
        private = mount_at(staged, "/model").host_dir
        (private / "first.weights").write_text("1")
        (private / "sub").mkdir()
        (private / "sub/escape.weights").write_text("x")
        with pytest.raises(SourceError, match="through a symlink"):
            staged.write_back()
    assert list(elsewhere.iterdir()) == []
    assert not (workspace / "model/first.weights").exists()


def test_write_back_ignores_symlinks_made_by_the_guest(workspace, temp_parent):
    with stage_sources([], ["model"], workspace, str(temp_parent)) as staged:
        private = mount_at(staged, "/model").host_dir
        (private / "passwd").symlink_to("/etc/passwd")
        (private / "dir").symlink_to("/etc", target_is_directory=True)
        assert staged.write_back() == []
    assert not (workspace / "model/passwd").exists()
    assert not (workspace / "model/dir").exists()


def test_write_back_never_leaves_its_output_source(workspace, temp_parent):
    """Files of nested mounts (read-only inputs, other outputs) are not written by the outer output."""
    with stage_sources(["data"], ["./", "model"], workspace, str(temp_parent)) as staged:
        (mount_at(staged, "/model").host_dir / "m.weights").write_text("M")
        (mount_at(staged, "/").host_dir / "top.txt").write_text("T")
        written = staged.write_back()
    assert sorted(written) == [workspace / "model/m.weights", workspace / "top.txt"]


# ---- the CLI's flow, with a fake guest -------------------------------------------------


class FakeGuestRun:
    """Stands in for runtime.GuestRun: writes into the output preopens, then ends with ``outcome``."""

    outcome = runtime.Outcome.SUCCEEDED

    def __init__(self, *, mounts, stdout, stderr, **kwargs):
        self._mounts = mounts
        self._stdout = stdout

    def start(self):
        for mount in self._mounts:
            if mount.writable:
                (mount.host_dir / "a.weights").write_text("guest wrote this")
                (mount.host_dir / "new.weights").write_text("new")
        self._stdout(b"guest says hi\n")
        return self

    def wait(self, poll=None):
        return runtime.RunResult(self.outcome)

    def stop(self, reason):
        pass


@pytest.fixture
def fake_guest(monkeypatch, workspace, tmp_path):
    class Fake(FakeGuestRun):
        """A class of this test's own: a test sets its ``outcome``."""

    class FakeProgram:
        def start(self, **settings):
            return Fake(**settings).start()

    monkeypatch.setattr(runtime, "load_program", lambda path, **kwargs: FakeProgram())
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    (workspace / "dl-server.wasm").write_bytes(b"\0asm")
    return Fake


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    "outcome",
    [
        runtime.Outcome.FAILED,
        runtime.Outcome.TRAPPED,
        runtime.Outcome.TIMED_OUT,
        runtime.Outcome.OUT_OF_MEMORY,
        runtime.Outcome.INTERRUPTED,
    ],
)
def test_nothing_is_written_back_when_the_guest_does_not_succeed(
    fake_guest, monkeypatch, workspace, outcome, capfd, tmp_path
):
    fake_guest.outcome = outcome
    before = snapshot(workspace / "model")
    status = cli.main(
        ["--program", "dl-server.wasm", "-i", "model", "-o", "model", "--timeout", "2", "--max-memory", "64M"]
    )
    assert status == (130 if outcome is runtime.Outcome.INTERRUPTED else 1)
    assert snapshot(workspace / "model") == before
    assert list((tmp_path / "tmp").iterdir()) == []
    err = capfd.readouterr().err
    expected = {
        runtime.Outcome.FAILED: "",
        runtime.Outcome.TRAPPED: "dl-server: error: guest crashed",
        runtime.Outcome.TIMED_OUT: "dl-server: error: guest exceeded --timeout 2s\n",
        runtime.Outcome.OUT_OF_MEMORY: "dl-server: error: guest ran out of memory (--max-memory 64M)\n",
        runtime.Outcome.INTERRUPTED: "dl-server: error: interrupted\n",
    }[outcome]
    assert err.startswith(expected) and err.count("\n") <= 1


def test_success_writes_back_and_dumps_like_the_fee(fake_guest, workspace, capfd, tmp_path):
    status = cli.main(
        [
            "--program",
            "dl-server.wasm",
            "--input-source",
            "args.cfg",
            "model",
            "--output-source",
            "model",
            "-d",
            "-e",
        ]
    )
    assert status == 0
    assert (workspace / "model/a.weights").read_text() == "guest wrote this"
    assert (workspace / "model/new.weights").read_text() == "new"
    assert (workspace / "model/b.weights").read_text() == "B"
    out, err = capfd.readouterr()
    assert out == "---- stdout dump ----\nguest says hi\n---- stdout dump end ----\n"
    assert err == "---- stderr dump ----\n---- stderr dump end ----\n"
    assert list((tmp_path / "tmp").iterdir()) == []


def test_without_dump_flags_output_passes_through(fake_guest, capfd):
    assert cli.main(["-r", "dl-server.wasm", "-i", "args.cfg"]) == 0
    assert capfd.readouterr() == ("guest says hi\n", "")


@pytest.mark.parametrize("source", ["../x", "/etc/passwd", "missing.cfg"])
def test_bad_sources_are_one_error_line(fake_guest, capfd, source):
    assert cli.main(["-r", "dl-server.wasm", "-i", "args.cfg", source]) == 1
    out, err = capfd.readouterr()
    assert out == "" and err.startswith("dl-server: error: ") and err.count("\n") == 1


def test_missing_program_is_one_error_line(fake_guest, capfd):
    assert cli.main(["-r", "nope.wasm"]) == 1
    assert capfd.readouterr().err == "dl-server: error: program not found: nope.wasm\n"


@pytest.mark.parametrize(
    "text, size",
    [
        ("65536", 65536),
        ("64K", 64 << 10),
        ("512M", 512 << 20),
        ("2G", 2 << 30),
        ("1.5g", 3 << 29),
        ("16MiB", 16 << 20),
    ],
)
def test_parse_size(text, size):
    assert cli.parse_size(text) == size


def test_fee_command_line_parses_verbatim():
    args = cli.build_parser().parse_args(
        shlex.split("--program dl-server.wasm --input-source args.cfg cfg data --output-source model -d -e")
    )
    assert (args.program, args.inputs, args.outputs, args.dump_stdout, args.dump_stderr) == (
        "dl-server.wasm",
        ["args.cfg", "cfg", "data"],
        ["model"],
        True,
        True,
    )
    args = cli.build_parser().parse_args(
        shlex.split("-r dl-server.wasm -i args.cfg -i cfg -o ./ -c --env A=1 --env B=x=y")
    )
    assert (args.program, args.inputs, args.outputs, args.enable_clock, args.env) == (
        "dl-server.wasm",
        ["args.cfg", "cfg"],
        ["./"],
        True,
        [("A", "1"), ("B", "x=y")],
    )
    assert cli.build_parser().parse_args(["--pipeline", "x.wasm"]).program == "x.wasm"
