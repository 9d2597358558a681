"""A seccomp filter that keeps setuid and setgid bits out of everything the agent writes.

The agent's files can land on the host (the workspace is the host user's
directory). An unprivileged process may set the setuid/setgid bits on its own
files, and a setuid copy of a shell in a host directory is a way into the host
user's account for anyone who can run it. The filter, installed by the server
on itself before it starts anything (so bash, the Jupyter kernel and every
process the agent starts inherit it; it can never be removed), refuses with
``EPERM``:

- ``chmod``, ``fchmod``, ``fchmodat``, ``fchmodat2`` with ``S_ISUID`` or ``S_ISGID``
  in the mode;
- ``open``, ``openat``, ``creat`` creating a file (``O_CREAT``/``O_TMPFILE``) with
  those bits, and ``mknod``/``mknodat`` with them (device nodes already need
  ``CAP_MKNOD``, which nothing in the sandbox has);

and answers ``ENOSYS`` (so callers fall back to the calls above) to
``openat2``, whose mode is behind a pointer a filter cannot read, and to
``io_uring_setup``, whose requests no filter sees. x32 system calls are
refused the same way. Other calls and architectures are left to the
container's own profile. The filter is classic BPF, assembled here: no
libseccomp needed in the image.
"""

from __future__ import annotations

import ctypes
import errno
import struct
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["SUID_SGID", "assemble_filter", "install_filter"]

SUID_SGID = 0o6000
_CREATE_FLAGS = 0o100 | 0o20000000  # O_CREAT | __O_TMPFILE (the same on every arch here)

_AUDIT_ARCH_X86_64 = 0xC000003E
_AUDIT_ARCH_I386 = 0x40000003
_AUDIT_ARCH_AARCH64 = 0xC00000B7
_X32_SYSCALL_BIT = 0x40000000

_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]
_NR_OFFSET = 0
_ARCH_OFFSET = 4


def _arg_low(index: int) -> int:
    return 16 + 8 * index  # the low 32 bits of args[index] (little-endian)


# BPF opcodes
_LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET = 0x06  # BPF_RET | BPF_K


@dataclass(frozen=True)
class _Rule:
    """A system call whose ``mode`` argument must not carry setuid/setgid bits."""

    nr: int
    mode_arg: int
    flags_arg: int | None = None  # checked only when these flags create a file


# (rules, system calls answered ENOSYS) per architecture.
_X86_64 = (
    [
        _Rule(2, mode_arg=2, flags_arg=1),  # open
        _Rule(85, mode_arg=1),  # creat
        _Rule(90, mode_arg=1),  # chmod
        _Rule(91, mode_arg=1),  # fchmod
        _Rule(133, mode_arg=1),  # mknod
        _Rule(257, mode_arg=3, flags_arg=2),  # openat
        _Rule(259, mode_arg=2),  # mknodat
        _Rule(268, mode_arg=2),  # fchmodat
        _Rule(452, mode_arg=2),  # fchmodat2
    ],
    [425, 437],  # io_uring_setup, openat2
)
_I386 = (
    [
        _Rule(5, mode_arg=2, flags_arg=1),  # open
        _Rule(8, mode_arg=1),  # creat
        _Rule(14, mode_arg=1),  # mknod
        _Rule(15, mode_arg=1),  # chmod
        _Rule(94, mode_arg=1),  # fchmod
        _Rule(295, mode_arg=3, flags_arg=2),  # openat
        _Rule(297, mode_arg=2),  # mknodat
        _Rule(306, mode_arg=2),  # fchmodat
        _Rule(452, mode_arg=2),  # fchmodat2
    ],
    [425, 437],
)
_AARCH64 = (
    [
        _Rule(33, mode_arg=2),  # mknodat
        _Rule(52, mode_arg=1),  # fchmod
        _Rule(53, mode_arg=2),  # fchmodat
        _Rule(56, mode_arg=3, flags_arg=2),  # openat
        _Rule(452, mode_arg=2),  # fchmodat2
    ],
    [425, 437],
)


class _Assembler:
    """Classic BPF with forward jumps to labels, resolved at the end."""

    def __init__(self) -> None:
        self._code: list[tuple[int, object, object, int]] = []
        self._labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self._labels[name] = len(self._code)

    def op(self, code: int, k: int, jt: object = 0, jf: object = 0) -> None:
        self._code.append((code, jt, jf, k))

    def assemble(self) -> bytes:
        out = bytearray()
        for pc, (code, jt, jf, k) in enumerate(self._code):
            offsets = []
            for target in (jt, jf):
                offset = self._labels[target] - pc - 1 if isinstance(target, str) else target
                if not isinstance(offset, int) or not 0 <= offset <= 255:
                    raise ValueError(f"jump from {pc} to {target!r} out of range")
                offsets.append(offset)
            out += struct.pack("<HBBI", code, offsets[0], offsets[1], k)
        return bytes(out)


def _arch_block(
    asm: _Assembler, name: str, rules: Sequence[_Rule], refused: Sequence[int], *, x32: bool
) -> None:
    allow, eperm, enosys = f"{name}_allow", f"{name}_eperm", f"{name}_enosys"
    asm.label(name)
    asm.op(_LD_ABS, _NR_OFFSET)
    if x32:
        asm.op(_JSET, _X32_SYSCALL_BIT, enosys, 0)
    for nr in refused:
        asm.op(_JEQ, nr, enosys, 0)
    for i, rule in enumerate(rules):
        next_rule = f"{name}_rule{i + 1}"
        asm.op(_JEQ, rule.nr, 0, next_rule)
        if rule.flags_arg is not None:
            asm.op(_LD_ABS, _arg_low(rule.flags_arg))
            asm.op(_JSET, _CREATE_FLAGS, 0, allow)
        asm.op(_LD_ABS, _arg_low(rule.mode_arg))
        asm.op(_JSET, SUID_SGID, eperm, allow)
        asm.label(next_rule)
    asm.label(allow)
    asm.op(_RET, _RET_ALLOW)
    asm.label(eperm)
    asm.op(_RET, _RET_ERRNO | errno.EPERM)
    asm.label(enosys)
    asm.op(_RET, _RET_ERRNO | errno.ENOSYS)


def assemble_filter() -> bytes:
    """The filter program (``struct sock_filter`` array, native little-endian)."""
    asm = _Assembler()
    asm.op(_LD_ABS, _ARCH_OFFSET)
    asm.op(_JEQ, _AUDIT_ARCH_X86_64, "x86_64", 0)
    asm.op(_JEQ, _AUDIT_ARCH_I386, "i386", 0)
    asm.op(_JEQ, _AUDIT_ARCH_AARCH64, "aarch64", 0)
    asm.op(_RET, _RET_ALLOW)
    _arch_block(asm, "x86_64", *_X86_64, x32=True)
    _arch_block(asm, "i386", *_I386, x32=False)
    _arch_block(asm, "aarch64", *_AARCH64, x32=False)
    return asm.assemble()


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2


def install_filter() -> None:
    """Install the filter on this process (and so on every thread and child it makes later).

    Sets ``no_new_privs`` first (the kernel requires it of an unprivileged
    caller). Call before any thread exists: a filter binds the calling thread
    and what it creates afterwards. Raises OSError when the kernel refuses.
    """
    program = assemble_filter()
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "cannot set no_new_privs")
    if (
        libc.prctl(_PR_SET_SECCOMP, ctypes.c_ulong(_SECCOMP_MODE_FILTER), ctypes.byref(fprog), 0, 0)
        != 0
    ):
        err = ctypes.get_errno()
        raise OSError(err, "cannot install the seccomp filter")
