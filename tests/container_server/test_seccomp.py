"""The setuid/setgid seccomp filter: its program (interpreted here), the real kernel's verdicts."""

from __future__ import annotations

import errno
import json
import os
import stat
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from container_server.seccomp import SUID_SGID, assemble_filter

X86_64, I386, AARCH64 = 0xC000003E, 0x40000003, 0xC00000B7
ALLOW = 0x7FFF0000
EPERM = 0x00050000 | errno.EPERM
ENOSYS = 0x00050000 | errno.ENOSYS
CREATE = 0o100 | 0o20000000

# What the filter must do, written independently of its tables: syscall -> (mode arg, flags arg).
MODE_RULES = {
    X86_64: {2: (2, 1), 85: (1, None), 90: (1, None), 91: (1, None), 133: (1, None),
             257: (3, 2), 259: (2, None), 268: (2, None), 452: (2, None)},
    I386: {5: (2, 1), 8: (1, None), 14: (1, None), 15: (1, None), 94: (1, None),
           295: (3, 2), 297: (2, None), 306: (2, None), 452: (2, None)},
    AARCH64: {33: (2, None), 52: (1, None), 53: (2, None), 56: (3, 2), 452: (2, None)},
}  # fmt: skip
REFUSED = {425, 437}  # io_uring_setup, openat2


def expected(arch: int, nr: int, args: list[int]) -> int:
    if arch not in MODE_RULES:
        return ALLOW
    if arch == X86_64 and nr & 0x40000000:
        return ENOSYS
    if nr in REFUSED:
        return ENOSYS
    rule = MODE_RULES[arch].get(nr)
    if rule is None:
        return ALLOW
    mode_arg, flags_arg = rule
    if flags_arg is not None and not args[flags_arg] & CREATE:
        return ALLOW
    return EPERM if args[mode_arg] & SUID_SGID else ALLOW


def run_bpf(program: bytes, data: bytes) -> int:
    """A classic-BPF interpreter for the four opcodes the filter uses."""
    insns = [struct.unpack_from("<HBBI", program, off) for off in range(0, len(program), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:  # ld [k]
            (acc,) = struct.unpack_from("<I", data, k)
        elif code == 0x15:  # jeq k
            pc += jt if acc == k else jf
        elif code == 0x45:  # jset k
            pc += jt if acc & k else jf
        elif code == 0x06:  # ret k
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def seccomp_data(arch: int, nr: int, args: list[int]) -> bytes:
    return struct.pack("<iIQ6Q", nr, arch, 0, *args)


syscalls = st.one_of(
    st.sampled_from(sorted({n for rules in MODE_RULES.values() for n in rules} | REFUSED)),
    st.integers(0, 0x4000_0000 + 600),
)
modes = st.one_of(st.integers(0, 0o7777), st.integers(0, 2**64 - 1))


@given(
    arch=st.sampled_from([X86_64, I386, AARCH64, 0x12345678]),
    nr=syscalls,
    args=st.lists(modes, min_size=6, max_size=6),
)
def test_program_matches_the_rules(arch: int, nr: int, args: list[int]) -> None:
    program = assemble_filter()
    assert len(program) % 8 == 0
    assert len(program) // 8 < 4096
    # The kernel hands the filter 64-bit arguments; the filter reads their low half.
    low = [a & 0xFFFFFFFF for a in args]
    got = run_bpf(program, seccomp_data(arch, nr, args))
    assert got == expected(arch, nr, low), (hex(arch), nr, [oct(a) for a in low])


def test_high_bits_of_a_mode_do_not_hide_the_setuid_bit() -> None:
    program = assemble_filter()
    data = seccomp_data(X86_64, 90, [0, (1 << 40) | 0o4755, 0, 0, 0, 0])
    assert run_bpf(program, data) == EPERM


PROBE = textwrap.dedent(
    """
    import ctypes, json, os, stat, subprocess, sys
    from container_server.seccomp import install_filter
    install_filter()
    d = sys.argv[1]
    plain = os.path.join(d, "plain")
    open(plain, "w").close()
    libc = ctypes.CDLL(None, use_errno=True)
    results = {}
    def attempt(name, call):
        try:
            call()
            results[name] = "ok"
        except OSError as exc:
            results[name] = errno_name(exc.errno)
    def errno_name(n):
        import errno
        return errno.errorcode.get(n, str(n))
    def raw(nr):
        def call():
            if libc.syscall(nr, 0, 0, 0, 0) == -1:
                raise OSError(ctypes.get_errno(), "")
        return call
    attempt("chmod 0755", lambda: os.chmod(plain, 0o755))
    attempt("chmod 4755", lambda: os.chmod(plain, 0o4755))
    attempt("chmod 2755", lambda: os.chmod(plain, 0o2755))
    attempt("fchmod 6755", lambda: os.fchmod(os.open(plain, os.O_RDONLY), 0o6755))
    attempt("create 4755", lambda: os.open(os.path.join(d, "c"), os.O_CREAT | os.O_WRONLY, 0o4755))
    attempt("create 0755", lambda: os.open(os.path.join(d, "e"), os.O_CREAT | os.O_WRONLY, 0o755))
    attempt("open, no create", lambda: os.open(plain, os.O_RDONLY, 0o4755))
    attempt("mknod 4755", lambda: os.mknod(os.path.join(d, "m"), stat.S_IFREG | 0o4755))
    attempt("mkfifo", lambda: os.mkfifo(os.path.join(d, "fifo")))
    attempt("io_uring_setup", raw(425))
    attempt("openat2", raw(437))
    shell = subprocess.run(
        ["bash", "-c", "cp /bin/true t && chmod u+s t; echo $?"],
        cwd=d, capture_output=True, text=True,
    )
    results["child chmod u+s"] = shell.stdout.strip()
    print(json.dumps(results))
    """
)


def test_the_kernel_refuses_setuid_bits(tmp_path: Path) -> None:
    """Installed for real (in a child process): the bits are refused, everything else works."""
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path)],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    results = json.loads(out)
    assert results == {
        "chmod 0755": "ok",
        "chmod 4755": "EPERM",
        "chmod 2755": "EPERM",
        "fchmod 6755": "EPERM",
        "create 4755": "EPERM",
        "create 0755": "ok",
        "open, no create": "ok",
        "mknod 4755": "EPERM",
        "mkfifo": "ok",
        "io_uring_setup": "ENOSYS",
        "openat2": "ENOSYS",
        "child chmod u+s": "1",
    }
    for path in tmp_path.iterdir():
        assert not os.lstat(path).st_mode & (stat.S_ISUID | stat.S_ISGID), path
