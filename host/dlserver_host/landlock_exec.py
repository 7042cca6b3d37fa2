"""Exec a program under Landlock: writes only beneath the given directories (docs/host-io.md).

The CLI engine (cli_engine.py) starts the wasmtime CLI through this launcher, as a script of
its own (``python -S -I landlock_exec.py ...``: standard library only, no site, ~20 ms), never
in a ``preexec_fn`` (the host has threads). In order, it:

1. dies with its parent (PR_SET_PDEATHSIG), so a killed host leaves no guest running;
2. sets PR_SET_NO_NEW_PRIVS (required by Landlock and seccomp, and kept across exec);
3. restricts itself with a Landlock ruleset that handles every write access to the file
   system (write, truncate, create, remove, rename/link across directories) and allows them
   only beneath the ``--write`` directories; reading is left to wasmtime's preopens. Where the
   kernel's ABI has them, TCP bind/connect are denied and signals/abstract sockets scoped;
4. installs a seccomp filter failing the calls that set file times (``utimensat`` and its
   older forms) with EPERM: Landlock does not handle them, and the CLI's preopens, unlike the
   in-process engine's read-only ones, would let a guest set the times of an input file;
5. execs the program with an empty environment.

Any failure before the exec is written to the status descriptor (``--status FD``, closed on
exec, so the host reads nothing when the exec succeeded) and ends the launcher: the program
never runs without its sandbox. The exit status says which kind of failure it was:
UNAVAILABLE_STATUS (125) when the system does not allow a step of the sandbox (a prctl,
Landlock or seccomp refused: an old kernel, or a container forbidding seccomp filters), where
the host's ``--engine auto`` runs the guest in-process instead; 127 for anything else (the host
gone, a directory that cannot be opened, a program that cannot be run).

    python -S -I landlock_exec.py --parent PID --status FD [--write DIR]... -- PROGRAM ARG...
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct
import sys

SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
PR_SET_PDEATHSIG, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS = 1, 22, 38
SECCOMP_MODE_FILTER = 2
MIN_ABI = 2  # REFER (ABI 2): a rename or link cannot move an input file into an output

# Landlock's file-system access rights (linux/landlock.h), with the ABI that brought them
WRITE_FILE, REMOVE_DIR, REMOVE_FILE = 1 << 1, 1 << 4, 1 << 5
MAKE_CHAR, MAKE_DIR, MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = (1 << n for n in range(6, 13))
REFER, TRUNCATE = 1 << 13, 1 << 14  # ABI 2, ABI 3
HANDLED_WRITES = (
    WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_CHAR | MAKE_DIR | MAKE_REG | MAKE_SOCK | MAKE_FIFO
) | (MAKE_BLOCK | MAKE_SYM | REFER)
ALLOWED_WRITES = WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_DIR | MAKE_REG | MAKE_SYM | REFER
NET_BIND_TCP, NET_CONNECT_TCP = 1, 2  # ABI 4: handled, no rule: every TCP bind/connect denied
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1, 2  # ABI 6

# seccomp: the calls that set a file's times, per architecture (AUDIT_ARCH_*)
SET_TIMES_CALLS = {
    0xC000003E: (280, 261, 235, 132),  # x86_64: utimensat, futimesat, utimes, utime
    0xC00000B7: (88,),  # aarch64: utimensat
}
EPERM = 1
UNAVAILABLE_STATUS, FAILED_STATUS = 125, 127  # the launcher's exit status after a LaunchError


class LaunchError(Exception):
    """The sandbox could not be set up (message for the host's one error line)."""


class Unavailable(LaunchError):
    """The system does not allow a step of the sandbox (a confinement call refused, or none for
    this machine): the program could not run confined here, however it was asked."""


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _check(result: int, what: str) -> int:
    """``result`` of a confinement call; Unavailable when it failed."""
    if result < 0:
        errno = ctypes.get_errno()
        raise Unavailable(f"{what}: {os.strerror(errno)}")
    return result


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is missing, disabled or blocked."""
    libc = _libc()
    version = libc.syscall(
        SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), LANDLOCK_CREATE_RULESET_VERSION
    )
    return max(int(version), 0)


def restrict_writes(writable: list[str]) -> int:
    """Landlock: from now on this process (and what it execs) writes only beneath ``writable``;
    returns the ABI version used. Needs PR_SET_NO_NEW_PRIVS first."""
    libc = _libc()
    abi = abi_version()
    if abi < MIN_ABI:
        raise Unavailable(f"Landlock ABI {abi} (at least {MIN_ABI} needed)")
    handled, allowed = HANDLED_WRITES, ALLOWED_WRITES
    if abi >= 3:
        handled, allowed = handled | TRUNCATE, allowed | TRUNCATE
    # struct landlock_ruleset_attr {u64 handled_access_fs; u64 handled_access_net; u64 scoped}
    if abi >= 6:
        attr = struct.pack(
            "=QQQ", handled, NET_BIND_TCP | NET_CONNECT_TCP, SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        )
    elif abi >= 4:
        attr = struct.pack("=QQ", handled, NET_BIND_TCP | NET_CONNECT_TCP)
    else:
        attr = struct.pack("=Q", handled)
    buffer = ctypes.create_string_buffer(attr, len(attr))
    ruleset = _check(
        libc.syscall(SYS_LANDLOCK_CREATE_RULESET, buffer, ctypes.c_size_t(len(attr)), 0), "landlock"
    )
    try:
        for directory in writable:
            try:
                fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as e:
                raise LaunchError(f"cannot open {directory}: {e.strerror}") from None
            try:
                # struct landlock_path_beneath_attr {u64 allowed_access; s32 parent_fd} (packed)
                rule = ctypes.create_string_buffer(struct.pack("=Qi", allowed, fd), 12)
                _check(
                    libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, rule, 0),
                    "landlock rule",
                )
            finally:
                os.close(fd)
        _check(libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock restrict")
    finally:
        os.close(ruleset)
    return abi


def deny_setting_file_times() -> None:
    """seccomp: utimensat and its older forms fail with EPERM (other calls are untouched)."""
    machine = os.uname().machine
    arch = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}.get(machine)
    if arch is None:
        raise Unavailable(f"no seccomp filter for {machine}")
    calls = SET_TIMES_CALLS[arch]
    ld_abs, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
    allow, errno = 0x7FFF0000, 0x00050000 | EPERM  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO
    kill = 0x80000000  # SECCOMP_RET_KILL_PROCESS: another architecture's calls
    program = [(ld_abs, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, kill), (ld_abs, 0, 0, 0)]
    for i, number in enumerate(calls):  # on a match, jump to the ERRNO return after the list
        program.append((jeq, len(calls) - i, 0, number))
    program += [(ret, 0, 0, allow), (ret, 0, 0, errno)]
    filters = b"".join(struct.pack("=HBBI", *op) for op in program)  # struct sock_filter
    buffer = ctypes.create_string_buffer(filters, len(filters))
    fprog = struct.pack("=HxxxxxxQ", len(program), ctypes.addressof(buffer))  # struct sock_fprog
    fprog_buffer = ctypes.create_string_buffer(fprog, len(fprog))
    _check(_libc().prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, fprog_buffer, 0, 0), "seccomp")


def launch(parent: int, writable: list[str], argv: list[str]) -> None:
    """Steps 1-5 of the module's docstring; returns only by raising LaunchError."""
    libc = _libc()
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "PR_SET_PDEATHSIG")
    if os.getppid() != parent:  # the host died before PR_SET_PDEATHSIG took effect
        raise LaunchError("the host has gone")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
    restrict_writes(writable)
    deny_setting_file_times()
    try:
        os.execve(argv[0], argv, {})
    except OSError as e:
        raise LaunchError(f"cannot run {argv[0]}: {e.strerror}") from None


def main(args: list[str]) -> int:
    separator = args.index("--")
    options, argv = args[:separator], args[separator + 1 :]
    parent = int(options[options.index("--parent") + 1])
    status = int(options[options.index("--status") + 1])
    writable = [options[i + 1] for i, option in enumerate(options) if option == "--write"]
    os.set_inheritable(status, False)  # closed by the exec: the host reads EOF on success
    try:
        launch(parent, writable, argv)
    except LaunchError as e:
        os.write(status, str(e).encode())
        return UNAVAILABLE_STATUS if isinstance(e, Unavailable) else FAILED_STATUS
    return FAILED_STATUS  # not reached: launch returns only by raising (no typing.NoReturn: ~5 ms)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
