"""The runtime image builder against a real Docker engine.

Each test builds into a test-only repository with a version string unique to
this run, so every decision starts from nothing and the real tags are never
touched; everything made is labelled and removed at the end (see conftest).
"""

from __future__ import annotations

import asyncio
import io
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import anyio
import pytest

from openhands_rt.docker_client import import_image
from openhands_rt.errors import SandboxBuildError, SandboxError
from openhands_rt.image import (
    BuildProgress,
    BuildResult,
    bootstrap_base_image,
    build_runtime_image,
    compute_tags,
)
from openhands_rt.image.dockerfile import CODE_DIR, SERVER_PORT, VENV_PYTHON
from openhands_rt.image.probe import PythonInfo
from openhands_rt.image.project import (
    extra_requirements,
    find_project,
    image_requirements,
    locked_versions,
)
from openhands_rt.image.wheelhouse import prepare_wheelhouse

pytestmark = pytest.mark.docker

PROJECT = find_project()


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:3])


def copy_source(destination: Path) -> list[Path]:
    """A private copy of events/ and container_server/ a test may change freely."""
    dirs = []
    for source in PROJECT.source_dirs:
        target = destination / source.name
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        dirs.append(target)
    return dirs


@dataclass(frozen=True)
class Setup:
    """Where this run's test builds go and how they are labelled."""

    base_image: str
    repository: str
    labels: dict[str, str]
    run_id: str

    @property
    def version(self) -> str:
        # Unique per run: every tag is new, so each decision starts from nothing.
        return f"0.0.0.dev{int(self.run_id, 16) % 10**9}"

    async def build(
        self,
        source_dirs: Sequence[Path],
        *,
        base_image: str | None = None,
        version: str | None = None,
        lock_files: Sequence[Path] | None = None,
        force_rebuild: bool = False,
        events: list[BuildProgress] | None = None,
        docker: aiodocker.Docker | None = None,
    ) -> BuildResult:
        return await build_runtime_image(
            base_image or self.base_image,
            force_rebuild=force_rebuild,
            repository=self.repository,
            version=version or self.version,
            source_dirs=source_dirs,
            lock_files=lock_files,
            labels=self.labels,
            on_progress=events.append if events is not None else None,
            docker=docker,
        )

    def ref(self, tag: str) -> str:
        return f"{self.repository}:{tag}"


@pytest.fixture(scope="module")
def setup(
    base_image: str, test_repository: str, test_labels: dict[str, str], test_run_id: str
) -> Setup:
    return Setup(base_image, test_repository, test_labels, test_run_id)


def build_log_lines(events: Sequence[BuildProgress]) -> list[str]:
    """The raw lines of the build log the last event names."""
    assert events[-1].kind == "finished"
    assert events[-1].log_file is not None
    return Path(events[-1].log_file).read_text().splitlines()


async def image_id(docker: aiodocker.Docker, ref: str) -> str:
    return str((await docker.images.inspect(ref))["Id"])


async def run_in(
    docker: aiodocker.Docker, image: str, script: str, labels: dict[str, str]
) -> tuple[int, str]:
    """Run ``sh -c script`` in a throwaway container of ``image``: (exit code, output)."""
    container = await docker.containers.create(
        config={
            "Image": image,
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": [script],
            "Labels": labels,
            "HostConfig": {"NetworkMode": "none"},
        }
    )
    try:
        await container.start()
        status = await container.wait()
        output = "".join(await container.log(stdout=True, stderr=True))
        return int(status["StatusCode"]), output
    finally:
        await container.delete(force=True)


@pytest.fixture(scope="module")
def scratch(setup: Setup, tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    """One scratch build from the bootstrapped base, shared by the module's tests."""
    dirs = copy_source(tmp_path_factory.mktemp("scratch-source"))
    return asyncio.run(setup.build(dirs))


async def test_scratch_build_tags_all_three(
    docker: aiodocker.Docker, scratch: BuildResult, setup: Setup
) -> None:
    tags = scratch.tags
    assert scratch.build_from == "scratch"
    assert scratch.image == setup.ref(tags.source_tag)
    assert scratch.new_tags == (
        setup.ref(tags.source_tag),
        setup.ref(tags.lock_tag),
        setup.ref(tags.version_tag),
    )
    assert tags.version_tag == f"oh_v{setup.version}_openhands-rt_s_base_t_bookworm"
    for ref in scratch.new_tags:
        assert await image_id(docker, ref) == scratch.image_id
    labels = (await docker.images.inspect(scratch.image))["Config"]["Labels"]
    assert labels["org.openhands-rt.version"] == setup.version
    assert labels["org.openhands-rt.base-image"] == setup.base_image
    assert labels["org.openhands-rt.source-tag"] == tags.source_tag
    assert labels["org.openhands-rt.lock-tag"] == tags.lock_tag
    assert setup.labels.items() <= labels.items()


async def test_image_contents(docker: aiodocker.Docker, scratch: BuildResult, setup: Setup) -> None:
    script = (
        "set -e; id -u openhands; stat -c %U /workspace; command -v bash;"
        f" {VENV_PYTHON} -c 'import sys, aiohttp, msgspec, anyio, events, container_server;"
        " print(sys.prefix); print(container_server.__file__)';"
        f" {VENV_PYTHON} -c 'import aiodocker' 2>/dev/null && echo host-only-dep || true;"
        f" ls {CODE_DIR}/events/__pycache__ | head -n 1;"
        " ls /tmp/openhands-rt-wheels 2>/dev/null | wc -l"
    )
    status, output = await run_in(docker, scratch.image, script, setup.labels)
    assert status == 0, output
    lines = output.splitlines()
    assert lines[0] == "1000"
    assert lines[1] == "openhands"
    assert lines[2].endswith("/bash")
    assert lines[3] == "/openhands_rt/venv"
    assert lines[4] == f"{CODE_DIR}/container_server/__init__.py"
    assert "host-only-dep" not in output
    assert lines[5].endswith(".pyc")
    assert lines[6] == "0"  # the wheelhouse is not left in the image


async def test_image_adds_at_most_150_mb(
    docker: aiodocker.Docker, scratch: BuildResult, setup: Setup
) -> None:
    runtime = await docker.images.inspect(scratch.image)
    base = await docker.images.inspect(setup.base_image)
    added = runtime["Size"] - base["Size"]
    assert 0 < added <= 150 * 1024 * 1024


async def test_second_call_builds_nothing(
    docker: aiodocker.Docker, scratch: BuildResult, setup: Setup, tmp_path: Path
) -> None:
    # How fast the no-op decision is, is benchmarks/image_build.py's to print, not a test's
    # to assert (it failed once at 0.31 s on a loaded machine).
    dirs = copy_source(tmp_path)
    again = await setup.build(dirs, docker=docker)
    assert again.build_from == "none"
    assert again.new_tags == ()
    assert again.image == scratch.image
    assert again.image_id == scratch.image_id


async def test_source_change_builds_from_the_lock_image(
    docker: aiodocker.Docker, scratch: BuildResult, setup: Setup, tmp_path: Path
) -> None:
    dirs = copy_source(tmp_path)
    events_dir = dirs[0]
    models = events_dir / "models.py"
    models.write_bytes(models.read_bytes() + b"\n# changed by the lock test\n")
    (events_dir / "added_by_test.py").write_text("ADDED = 1\n")
    (events_dir / "codec.py").unlink()
    events: list[BuildProgress] = []
    result = await setup.build(dirs, events=events, docker=docker)
    assert result.build_from == "lock"
    assert events[0].message.startswith("build decision 2/4 (lock): ")
    assert [e.stage for e in events if e.kind == "stage"] == ["copy source", "finish image", "tag"]
    assert result.tags.lock_tag == scratch.tags.lock_tag
    assert result.tags.source_tag != scratch.tags.source_tag
    assert result.new_tags == (setup.ref(result.tags.source_tag),)
    # The lock and version tags still name the scratch image.
    assert await image_id(docker, setup.ref(scratch.tags.lock_tag)) == scratch.image_id
    assert await image_id(docker, setup.ref(scratch.tags.version_tag)) == scratch.image_id
    status, output = await run_in(
        docker,
        result.image,
        f"tail -n 1 {CODE_DIR}/events/models.py; cat {CODE_DIR}/events/added_by_test.py;"
        f" test -e {CODE_DIR}/events/codec.py && echo stale || echo removed",
        setup.labels,
    )
    assert status == 0
    assert output.splitlines() == ["# changed by the lock test", "ADDED = 1", "removed"]


async def test_lock_change_with_the_version_image_builds_versioned(
    docker: aiodocker.Docker, scratch: BuildResult, setup: Setup, tmp_path: Path
) -> None:
    extra = tmp_path / "extra.lock"
    extra.write_text(f"changed lock {setup.run_id}\n")
    lock_files = [PROJECT.pyproject, PROJECT.lock_file, extra]
    events: list[BuildProgress] = []
    dirs = copy_source(tmp_path / "src")
    result = await setup.build(dirs, lock_files=lock_files, events=events, docker=docker)
    lines = build_log_lines(events)
    assert result.build_from == "versioned"
    assert events[0].message.startswith("build decision 3/4 (versioned): ")
    assert [e.stage for e in events if e.kind == "stage"] == [
        "inspect image",
        "prepare wheels",
        "install dependencies",
        "copy source",
        "finish image",
        "tag",
    ]
    assert result.tags.version_tag == scratch.tags.version_tag
    assert result.tags.lock_tag != scratch.tags.lock_tag
    assert result.new_tags == (setup.ref(result.tags.source_tag), setup.ref(result.tags.lock_tag))
    assert any(line.startswith("Step 1/") and scratch.tags.version_tag in line for line in lines)
    assert any("pip install --no-index" in line for line in lines)
    assert not any("useradd" in line for line in lines)
    assert await image_id(docker, setup.ref(scratch.tags.version_tag)) == scratch.image_id


async def _wait_for_listening(container: Any) -> str:
    async for line in container.log(stdout=True, stderr=True, follow=True):
        if line.startswith("listening on"):
            return str(line).strip()
    raise AssertionError("the server exited before listening")


async def test_built_image_serves_alive(
    docker: aiodocker.Docker, scratch: BuildResult, setup: Setup
) -> None:
    container = await docker.containers.create(
        config={
            "Image": scratch.image,
            "Env": ["SESSION_API_KEY=test-key"],
            "Labels": setup.labels,
            "ExposedPorts": {f"{SERVER_PORT}/tcp": {}},
            "HostConfig": {
                "PortBindings": {f"{SERVER_PORT}/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
            },
        }
    )
    try:
        await container.start()
        with anyio.fail_after(30):
            listening = await _wait_for_listening(container)
        assert listening == f"listening on http://0.0.0.0:{SERVER_PORT}"
        ports = await container.port(SERVER_PORT)
        assert ports is not None
        assert ports[0]["HostIp"] == "127.0.0.1"
        url = f"http://127.0.0.1:{ports[0]['HostPort']}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/alive") as response:
                assert response.status == 200
                assert (await response.text()).strip() == "ok"
            async with session.get(f"{url}/server_info") as response:
                assert response.status == 401  # every other endpoint needs the key
    finally:
        await container.delete(force=True)


async def test_force_rebuild_rebuilds(
    docker: aiodocker.Docker, setup: Setup, tmp_path: Path
) -> None:
    dirs = copy_source(tmp_path)
    version = setup.version + ".post1"
    first = await setup.build(dirs, version=version, docker=docker)
    assert first.build_from == "scratch"
    forced = await setup.build(dirs, version=version, force_rebuild=True, docker=docker)
    assert forced.build_from == "scratch"
    assert forced.tags == first.tags
    assert forced.image_id != first.image_id  # built anew, without the build cache
    for ref in forced.new_tags:
        assert await image_id(docker, ref) == forced.image_id


async def plain_build(docker: aiodocker.Docker, setup: Setup, dockerfile: str, name: str) -> str:
    """Build a helper image from ``dockerfile`` (labelled for removal); returns its name."""
    label = " ".join(f"{key}={value}" for key, value in setup.labels.items())
    text = f"{dockerfile.rstrip()}\nLABEL {label}\n".encode()
    image = f"openhands-rt-test/{name}:{setup.run_id}"
    await docker.images.build(
        fileobj=io.BytesIO(_tar({"Dockerfile": (text, 0o644)})),
        encoding="identity",
        tag=image,
        rm=True,
        forcerm=True,
    )
    return image


async def test_failed_build_raises_with_the_log_tail(
    docker: aiodocker.Docker, setup: Setup, tmp_path: Path
) -> None:
    # A file where the venv's directory must go: the setup step fails in the engine.
    blocked = await plain_build(
        docker, setup, f"FROM {setup.base_image}\nRUN touch /openhands_rt\n", "blocked"
    )
    with pytest.raises(SandboxBuildError) as caught:
        await setup.build(copy_source(tmp_path), base_image=blocked, docker=docker)
    error = caught.value
    assert "returned a non-zero code" in str(error)
    assert 0 < len(error.log_tail) <= 30
    assert any(line.startswith("mkdir: cannot create directory") for line in error.log_tail), (
        error.log_tail
    )
    assert "--- last build output ---" in str(error)


# Raw output of the engine, pip and apt: none of it may reach a progress event.
RAW_OUTPUT = re.compile(
    r"Step \d|--->|Collecting |Processing |Successfully |Running in |Removing intermediate"
    r"|Looking in|Installing collected|pip install|apt-get|useradd"
)


async def test_a_scratch_build_reports_stages_and_logs_its_output(
    docker: aiodocker.Docker, setup: Setup, tmp_path: Path
) -> None:
    events: list[BuildProgress] = []
    version = setup.version + ".post3"
    # Forced: nothing comes from the engine's cache, so pip really runs in the image.
    result = await setup.build(
        copy_source(tmp_path), version=version, force_rebuild=True, events=events, docker=docker
    )
    assert result.build_from == "scratch"
    assert len(result.new_tags) == 3
    assert 8 <= len(events) <= 25
    assert events[0].kind == "decision"
    assert events[0].message == (
        f"build decision 4/4 (scratch): forced rebuild; building {result.image}"
    )
    assert [e.stage for e in events if e.kind == "stage"] == [
        "inspect image",
        "prepare wheels",
        "bootstrap python",
        "install dependencies",
        "copy source",
        "finish image",
        "tag",
    ]
    installing = [e for e in events if e.detail == "installing"]
    assert len(installing) == 1
    assert installing[0].done == installing[0].total
    assert installing[0].total is not None
    assert installing[0].total > 5
    last = events[-1]
    assert last.kind == "finished"
    assert last.log_file is not None
    assert last.message.endswith(f"; build log: {last.log_file}")
    log = Path(last.log_file)
    assert log.parent.name == "build-logs"
    raw = [line for line in log.read_text().splitlines() if not line.startswith("== ")]
    assert any(line.startswith("Step 1/") for line in raw)
    assert sum(line.startswith("Processing ") for line in raw) == installing[0].total
    for event in events:
        assert not RAW_OUTPUT.search(event.message), event.message
        assert not any(len(line) > 8 and line in event.message for line in raw), event.message
    elapsed = [e.elapsed for e in events]
    assert elapsed == sorted(elapsed)
    assert elapsed[-1] <= result.seconds


async def test_a_failed_build_names_its_log_and_quotes_its_last_lines(
    docker: aiodocker.Docker, setup: Setup, tmp_path: Path
) -> None:
    blocked = await plain_build(
        docker, setup, f"FROM {setup.base_image}\nRUN touch /openhands_rt\n", "blocked-log"
    )
    events: list[BuildProgress] = []
    with pytest.raises(SandboxBuildError) as caught:
        await setup.build(copy_source(tmp_path), base_image=blocked, events=events, docker=docker)
    error = caught.value
    assert error.log_file is not None
    log_lines = Path(error.log_file).read_text().splitlines()
    assert f"build log: {error.log_file}" in str(error)
    assert 0 < len(error.log_tail) <= 30
    assert error.log_tail == log_lines[-len(error.log_tail) :]
    assert "\n".join(log_lines[-5:]) in str(error)
    assert any(line.startswith("mkdir: cannot create directory") for line in error.log_tail)
    assert "returned a non-zero code" in error.message
    assert [e.stage for e in events if e.kind == "stage"][-1] == "bootstrap python"
    assert all(e.kind != "finished" for e in events)


async def test_source_that_does_not_compile_is_named(
    docker: aiodocker.Docker, scratch: BuildResult, setup: Setup, tmp_path: Path
) -> None:
    dirs = copy_source(tmp_path)
    (dirs[0] / "broken_by_test.py").write_text("def broken(:\n")
    with pytest.raises(SandboxBuildError, match=r"events/broken_by_test\.py"):
        await setup.build(dirs, docker=docker)


async def test_an_image_of_another_template_layout_is_not_reused(
    docker: aiodocker.Docker, setup: Setup, tmp_path: Path
) -> None:
    dirs = copy_source(tmp_path)
    version = setup.version + ".post2"
    tags = compute_tags(
        setup.base_image,
        version=version,
        lock_files=[PROJECT.pyproject, PROJECT.lock_file],
        source_dirs=dirs,
    )
    old = await plain_build(
        docker, setup, f"FROM {setup.base_image}\nLABEL org.openhands-rt.layout=1\n", "old-layout"
    )
    for tag in (tags.source_tag, tags.lock_tag, tags.version_tag):
        await docker.images.tag(old, setup.repository, tag=tag)
    result = await setup.build(dirs, version=version, docker=docker)
    assert result.build_from == "scratch"
    assert result.tags == tags
    for ref in result.new_tags:
        assert await image_id(docker, ref) == result.image_id != await image_id(docker, old)


async def test_missing_base_image_fails_fast_naming_it(setup: Setup, tmp_path: Path) -> None:
    missing = "openhands-rt-test/no-such-base:1"
    started = time.monotonic()
    with pytest.raises(SandboxError, match=f"base image {missing} does not exist"):
        await setup.build(copy_source(tmp_path), base_image=missing)
    assert time.monotonic() - started < 2


async def _tar_chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _tar(files: dict[str, tuple[bytes, int]], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


async def _import(docker: aiodocker.Docker, setup: Setup, tar: bytes, name: str) -> str:
    tag = f"{name}-{setup.run_id}"
    label = " ".join(f"{key}={value}" for key, value in setup.labels.items())
    await import_image(
        docker,
        _tar_chunks(tar),
        repository="openhands-rt-test/tiny",
        tag=tag,
        changes=[f"LABEL {label}"],
    )
    return f"openhands-rt-test/tiny:{tag}"


async def test_image_with_only_a_file_is_refused_naming_what_is_missing(
    docker: aiodocker.Docker, setup: Setup, tmp_path: Path
) -> None:
    image = await _import(docker, setup, _tar({"hello.txt": (b"hi\n", 0o644)}), "file")
    with pytest.raises(SandboxBuildError, match=f"base image {image} has no /bin/sh"):
        await setup.build(copy_source(tmp_path), base_image=image, docker=docker)


def _shell_only_rootfs() -> bytes:
    """A root filesystem with the host's dash and the libraries it links: a shell, no more."""
    dash = Path("/bin/dash").resolve()
    ldd = subprocess.run(["ldd", str(dash)], capture_output=True, text=True, check=True).stdout
    libraries = [part for line in ldd.splitlines() for part in line.split() if part.startswith("/")]
    files = {"bin/dash": (dash.read_bytes(), 0o755)}
    for library in libraries:
        files[library.lstrip("/")] = (Path(library).resolve().read_bytes(), 0o755)
    return _tar(files, links={"bin/sh": "dash"})


@pytest.mark.skipif(shutil.which("ldd") is None or not Path("/bin/dash").exists(), reason="no dash")
async def test_image_without_python_or_package_manager_is_refused(
    docker: aiodocker.Docker, setup: Setup, tmp_path: Path
) -> None:
    image = await _import(docker, setup, _shell_only_rootfs(), "shell")
    status, output = await run_in(docker, image, "echo shell works", setup.labels)
    assert (status, output.strip()) == (0, "shell works")
    with pytest.raises(SandboxBuildError) as caught:
        await setup.build(copy_source(tmp_path), base_image=image, docker=docker)
    message = str(caught.value)
    assert f"base image {image} has no python3 and no bash" in message
    assert "no package manager" in message


@pytest.mark.slow
async def test_python_is_installed_with_the_package_manager(
    docker: aiodocker.Docker, setup: Setup, tmp_path: Path
) -> None:
    # A Debian image without python3 (but with apt-get): the build installs python3
    # over plain http from the Debian mirror, then goes on as usual.
    no_python = await plain_build(
        docker,
        setup,
        f"FROM {setup.base_image}\n"
        "RUN apt-get purge -y -q --allow-remove-essential python3 python3.11 python3-minimal"
        " python3.11-minimal libpython3.11-minimal libpython3.11-stdlib >/dev/null"
        " && ! command -v python3\n",
        "no-python",
    )
    events: list[BuildProgress] = []
    result = await setup.build(
        copy_source(tmp_path), base_image=no_python, events=events, docker=docker
    )
    lines = build_log_lines(events)
    assert result.build_from == "scratch"
    assert any("apt-get install" in line for line in lines)
    status, output = await run_in(
        docker, result.image, f"{VENV_PYTHON} -c 'import aiohttp, events'", setup.labels
    )
    assert status == 0, output


async def test_bootstrap_is_idempotent(docker: aiodocker.Docker, setup: Setup) -> None:
    before = await image_id(docker, setup.base_image)
    lines: list[str] = []
    started = time.monotonic()
    name = await bootstrap_base_image(setup.base_image, on_progress=lines.append, docker=docker)
    assert time.monotonic() - started < 1
    assert name == setup.base_image
    assert lines == []
    assert await image_id(docker, setup.base_image) == before


async def test_bootstrap_without_debootstrap_says_so(
    docker: aiodocker.Docker, setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SandboxError, match="debootstrap is not installed"):
        await bootstrap_base_image(f"openhands-rt-test/never:{setup.run_id}", docker=docker)


@pytest.mark.slow
async def test_wheelhouse_for_an_older_python_relaxes_the_pins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # uv.lock is resolved for the host's Python (>= 3.11); ipython's locked 9.x needs
    # 3.11, so a 3.10 image gets the newest versions not newer than the lock.
    monkeypatch.setenv("OPENHANDS_RT_CACHE_DIR", str(tmp_path / "cache"))
    python = PythonInfo(
        executable="/usr/bin/python3.10",
        version=(3, 10, 12),
        implementation="cpython",
        abi="cp310",
        machine="x86_64",
        libc="glibc",
        libc_version="2.35",
        has_venv=True,
        has_ensurepip=False,
    )
    pins = locked_versions(PROJECT.lock_file)
    requirements = [
        *image_requirements(PROJECT.pyproject),
        *extra_requirements(PROJECT.pyproject, "jupyter"),
    ]
    lines: list[str] = []
    wheelhouse = await prepare_wheelhouse(python, requirements, pins, on_progress=lines.append)
    versions = dict(pin.split("==") for pin in wheelhouse.pins)
    assert "locked versions do not fit Python 3.10.12" in lines
    assert versions["msgspec"] == pins["msgspec"]
    assert version_tuple(versions["ipython"]) < version_tuple(pins["ipython"])
    wheels = [p.name for p in wheelhouse.files() if p.suffix == ".whl"]
    assert any(name.startswith("msgspec-") and "-cp310-" in name for name in wheels)
    assert (wheelhouse.directory / "requirements.txt").read_text().splitlines() == sorted(
        wheelhouse.pins
    )
