"""The host checks a sandbox's Unix socket before it sends the key (``connect_checked``)."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from openhands_rt.channel import connect_checked
from openhands_rt.errors import SandboxConnectionError


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    path = directory / "server.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    try:
        yield path
    finally:
        server.close()


async def test_the_expected_peer_is_accepted(listener: Path) -> None:
    sock = await connect_checked(str(listener), peer_uid=os.geteuid())
    try:
        assert sock.getpeername() in (str(listener), "")  # connected through /proc/self/fd
        assert not sock.getblocking()
    finally:
        sock.close()


async def test_another_uid_listening_is_refused(listener: Path) -> None:
    other = os.geteuid() + 4242
    with pytest.raises(SandboxConnectionError, match=f"served by uid {os.geteuid()}"):
        await connect_checked(str(listener), peer_uid=other)


async def test_a_directory_others_can_write_is_refused(listener: Path) -> None:
    listener.parent.chmod(0o777)
    with pytest.raises(SandboxConnectionError, match="not private"):
        await connect_checked(str(listener), peer_uid=os.geteuid())


async def test_something_else_than_a_socket_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    (directory / "server.sock").write_text("not a socket")
    with pytest.raises(SandboxConnectionError, match="not a socket"):
        await connect_checked(str(directory / "server.sock"), peer_uid=os.geteuid())


async def test_a_symlinked_directory_is_not_followed(listener: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(listener.parent)
    with pytest.raises(OSError, match=r"Too many levels|Not a directory") as info:
        await connect_checked(str(link / "server.sock"), peer_uid=os.geteuid())
    assert info.value.errno in (errno.ELOOP, errno.ENOTDIR)  # O_NOFOLLOW
