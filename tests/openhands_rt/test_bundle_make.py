"""make_bundle here: made once by concurrent makers; its interpreter runs the server's imports.

Needs Debian's bash-static (scripts/setup.sh installs it). No Docker: the
bundle's interpreter runs here through the bundle's own loader, with the
bundle's lib/ as its only library path, as the launcher runs it in a container.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest

from openhands_rt.bundle import Bundle, make_bundle
from openhands_rt.bundle.elf import resolve
from openhands_rt.bundle.layout import BUNDLE_MOUNT, MANIFEST


class Made(NamedTuple):
    bundles: list[Bundle]
    root: Path
    seconds: float
    python: Path | None


# The default choice (the system's interpreter of this version, where there is one),
# and the running interpreter (a pyenv or venv build, linked to libpython).
INTERPRETERS = [
    pytest.param(None, id="default"),
    pytest.param(Path(sys.executable), id="running"),
]


@pytest.fixture(scope="module", params=INTERPRETERS)
def made(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Made:
    python: Path | None = request.param
    root = tmp_path_factory.mktemp("bundles")
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        bundles = list(pool.map(lambda _: make_bundle(root=root, python=python), range(2)))
    return Made(bundles, root, time.monotonic() - started, python)


@pytest.mark.timeout(180)
def test_concurrent_makers_share_one_bundle(made: Made) -> None:
    bundles, root, seconds, _ = made
    first, second = bundles
    assert first == second
    assert first.path == root / first.key
    # No temporary directory is left behind, only the bundle and its lock.
    assert sorted(p.name for p in root.iterdir()) == [first.key, f"{first.key}.lock"]
    assert (first.path / MANIFEST).is_file()
    assert make_bundle(root=root, python=made.python) == first  # found, not made again
    print(f"bundle made in {seconds:.2f} s")


@pytest.mark.timeout(180)
def test_the_bundle_holds_its_interpreter_libraries_and_shell(
    made: Made,
) -> None:
    bundle = made[0][0]
    lib = bundle.path / "lib"
    # libnss_compat: glibc loads it when an image's nsswitch.conf says `passwd: compat`.
    for name in ("ld-linux-x86-64.so.2", "libc.so.6", "libssl.so.3", "libnss_compat.so.2"):
        assert (lib / name).is_file()
        assert not (lib / name).is_symlink()
    # Everything the interpreter links (libpython, where it is not built in) is here.
    binary = bundle.path / bundle.manifest.python
    needed = resolve([binary])[str(binary)]
    assert needed
    assert all((lib / library.name).is_file() for library in needed), needed
    stdlib = lib / f"python{bundle.manifest.python_version}"
    assert (stdlib / "asyncio" / "__init__.py").is_file()
    assert any((stdlib / "__pycache__").glob("os.*.pyc"))
    for pruned in ("test", "idlelib", "tkinter", "ensurepip", "lib2to3"):
        assert not (stdlib / pruned).exists()
    site = bundle.path / bundle.manifest.site
    assert site.parent.parent == lib
    assert site.name in ("site-packages", "dist-packages")
    assert any((site / "container_server" / "__pycache__").glob("main.*.pyc"))
    assert (site / "aiohttp").is_dir()
    assert not (site / "websockets").exists()  # host-only
    assert not (site / "openhands_rt").exists()
    for path in (bundle.path, site, bundle.path / "bin" / "bash"):
        assert path.stat().st_mode & stat.S_IROTH
    assert os.access(bundle.path / "bin" / "bash", os.X_OK)


@pytest.mark.timeout(120)
def test_the_interpreter_runs_through_its_own_loader(
    made: Made,
) -> None:
    bundle = made[0][0]
    command = bundle.python_command(mount=str(bundle.path), isolated=True)
    site = bundle.path / bundle.manifest.site
    code = (
        f"import sys; sys.path[:0] = [{str(site)!r}]; "
        "import ssl, sqlite3, ctypes, container_server.main, aiohttp, msgspec; "
        "print(sys.prefix); print(container_server.main.__file__); print(sys.flags.isolated)"
    )
    done = subprocess.run(
        [*command, "-c", code], capture_output=True, text=True, check=False, env={}, timeout=60
    )
    assert done.returncode == 0, done.stderr
    prefix, main_file, isolated = done.stdout.split()
    assert prefix == str(bundle.path)
    assert main_file.startswith(str(site))
    assert isolated == "1"


# Run by the bundle's interpreter: the server's TLS context from a --tls-file, and a
# handshake with a client that pins the certificate, over a socket pair.
TLS_HANDSHAKE = """
import socket, ssl, sys, threading
from container_server.tls import server_context

tls_file, cert_file, name = sys.argv[1:4]
server_side, client_side = socket.socketpair()
served = []

def serve():
    with server_context(tls_file).wrap_socket(server_side, server_side=True) as tls:
        served.append(tls.recv(5))
        tls.sendall(b"pong!")

thread = threading.Thread(target=serve)
thread.start()
client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
client.load_verify_locations(cafile=cert_file)
with client.wrap_socket(client_side, server_hostname=name) as tls:
    tls.sendall(b"ping!")
    answer = tls.recv(5)
    print(tls.version(), answer.decode(), served[0].decode() if served else "-")
thread.join()
"""


@pytest.mark.timeout(120)
def test_the_bundles_interpreter_serves_tls_from_a_tls_file(made: Made, tmp_path: Path) -> None:
    # A remote sandbox's server serves TLS (--tls-file): the bundle carries _ssl and libssl.
    bundle = made[0][0]
    name = "sandbox.openhands-rt.test"
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    request = ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    subject = ["-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}"]
    subprocess.run(
        ["openssl", *request, *subject, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    tls_file = tmp_path / "tls.pem"
    tls_file.write_bytes(key.read_bytes() + cert.read_bytes())
    site = bundle.path / bundle.manifest.site
    code = f"import sys; sys.path[:0] = [{str(site)!r}]\n{TLS_HANDSHAKE}"
    python = bundle.python_command(mount=str(bundle.path), isolated=True)
    done = subprocess.run(
        [*python, "-c", code, str(tls_file), str(cert), name],
        capture_output=True,
        text=True,
        check=False,
        env={},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["TLSv1.3", "pong!", "ping!"]


@pytest.mark.timeout(120)
def test_the_plugins_interpreter_finds_the_bundles_packages_by_itself(
    made: Made, tmp_path: Path
) -> None:
    # A kernel's interpreter: not isolated, so site finds site-packages from the prefix.
    bundle = made[0][0]
    code = (
        "import sys, aiohttp; print(sys.prefix); print(aiohttp.__file__); print(sys.path[0]); "
        "print(sys.executable)"
    )
    done = subprocess.run(
        [*bundle.python_command(mount=str(bundle.path)), "-c", code],
        capture_output=True,
        text=True,
        check=False,
        env={},
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    prefix, aiohttp_file, first, executable = done.stdout.split("\n")[:4]
    assert prefix == str(bundle.path)
    assert aiohttp_file.startswith(str(bundle.path / bundle.manifest.site))
    assert first == ""  # the working directory, as for any `python -c`
    # What the agent's code starts again: the launcher (where the loader can say so).
    assert bundle.manifest.argv0  # glibc 2.36 here
    assert executable == str(bundle.path / bundle.manifest.launcher)


@pytest.mark.timeout(120)
def test_the_launcher_is_a_script_for_the_bundles_mount_point(made: Made) -> None:
    bundle = made[0][0]
    script = (bundle.path / bundle.manifest.launcher).read_text()
    first, command = script.splitlines()
    assert first == f"#!{BUNDLE_MOUNT}/bin/bash"
    assert command.startswith(f"exec {BUNDLE_MOUNT}/lib/ld-linux")
    assert command.endswith(f' {BUNDLE_MOUNT}/libexec/python3 "$@"')
    assert os.access(bundle.path / bundle.manifest.launcher, os.X_OK)
