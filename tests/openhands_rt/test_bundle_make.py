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
