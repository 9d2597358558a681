"""The Dockerfile template's three variants and the build's other pure parts (no Docker)."""

from __future__ import annotations

import importlib.util
import io
import json
import marshal
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from openhands_rt.errors import SandboxBuildError
from openhands_rt.image.buildlog import BuildOutput, summarize_error
from openhands_rt.image.context import build_context, can_compile_for
from openhands_rt.image.dockerfile import (
    CODE_DIR,
    CODE_ROOT,
    SERVER_PORT,
    VENV_DIR,
    WHEELS_DIR,
    instruction_section,
    render_dockerfile,
    render_prelude,
    system_packages_step,
)
from openhands_rt.image.probe import PythonInfo, parse_probe_output
from openhands_rt.image.project import render_plugin_lock, requirement_name
from openhands_rt.image.wheelhouse import PIP_WHEEL, platform_tags, wheel_pins

APT_STEP = system_packages_step("apt-get", ["python3", "bash"])
LABELS = {"org.openhands-rt.version": "0.9.9", "org.openhands-rt.source-tag": "oh_v0.9.9_x_y"}
SOURCE_ID = "0123456789abcdef"


def instructions(dockerfile: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    joined = dockerfile.replace("\\\n", " ")
    return [line for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def keywords(dockerfile: str) -> list[str]:
    return [line.split()[0] for line in instructions(dockerfile)]


def scratch(**kwargs: object) -> str:
    params: dict[str, object] = {
        "source_id": SOURCE_ID,
        "python": "/usr/bin/python3",
        "pip_wheel": PIP_WHEEL,
        "labels": LABELS,
    }
    params.update(kwargs)
    return render_dockerfile("scratch", "base:1", **params)  # type: ignore[arg-type]


def test_scratch_has_every_section() -> None:
    text = scratch(system_step=APT_STEP)
    steps = instructions(text)
    assert steps[0] == "FROM base:1"
    assert APT_STEP in steps
    assert "useradd -m -s /bin/bash $uid_flag openhands" in text
    assert "/workspace" in text
    assert f"-m venv --without-pip {VENV_DIR}" in text
    assert f"COPY wheels {WHEELS_DIR}" in steps
    assert f"{WHEELS_DIR}/{PIP_WHEEL}/pip install --no-index" in text
    assert f"COPY code {CODE_ROOT}" in steps
    assert f"RUN {VENV_DIR}/bin/python -m compileall -q {CODE_ROOT}/{SOURCE_ID}" in steps
    assert f"echo {CODE_DIR} > " in text  # the .pth file naming the current source
    assert f"EXPOSE {SERVER_PORT}" in steps
    assert f'ENTRYPOINT ["{VENV_DIR}/bin/python", "-I", "-m", "container_server"]' in steps
    cmd = json.loads(next(s for s in steps if s.startswith("CMD "))[4:])
    assert cmd == ["--host", "0.0.0.0", "--port", str(SERVER_PORT), "--working-dir", "/workspace"]
    assert keywords(text)[-1] == "LABEL"


def test_precompiled_source_needs_no_compile_step() -> None:
    assert "compileall" not in scratch(compile_in_image=False)
    lock = render_dockerfile("lock", "r:t", source_id=SOURCE_ID, compile_in_image=False)
    assert keywords(lock) == ["FROM", "COPY"]


def test_scratch_without_missing_packages_has_no_system_step() -> None:
    text = scratch()
    assert "apt-get" not in text
    assert keywords(text)[:3] == ["FROM", "USER", "RUN"]
    assert "useradd" in instructions(text)[2]


def test_versioned_reinstalls_dependencies_and_copies_the_source() -> None:
    text = render_dockerfile(
        "versioned", "repo:oh_v1_base", source_id=SOURCE_ID, pip_wheel=PIP_WHEEL, labels=LABELS
    )
    steps = instructions(text)
    assert steps[0] == "FROM repo:oh_v1_base"
    assert steps.index(f"COPY wheels {WHEELS_DIR}") < steps.index(f"COPY code {CODE_ROOT}")
    assert "pip install --no-index" in text
    assert "-r /tmp/openhands-rt-wheels/requirements.txt" in text
    for absent in ("useradd", "-m venv", "apt-get", "ENTRYPOINT", "CMD", "EXPOSE", "USER"):
        assert absent not in text


def test_lock_only_copies_the_source() -> None:
    text = render_dockerfile(
        "lock", "repo:oh_v1_0123456789abcdef", source_id=SOURCE_ID, labels=LABELS
    )
    assert keywords(text) == ["FROM", "COPY", "RUN", "LABEL"]
    steps = instructions(text)
    assert steps[0] == "FROM repo:oh_v1_0123456789abcdef"
    assert steps[1] == f"COPY code {CODE_ROOT}"
    assert steps[2] == f"RUN {VENV_DIR}/bin/python -m compileall -q {CODE_ROOT}/{SOURCE_ID}"
    for absent in ("wheels", "pip", "useradd", "venv --without-pip", "ENTRYPOINT", "USER"):
        assert absent not in text


def test_labels_are_one_instruction_with_quoted_values() -> None:
    text = render_dockerfile("lock", "r:t", source_id="s", labels={"b": 'say "hi"', "a": "1"})
    label = instructions(text)[-1]
    assert label.startswith("LABEL ")
    assert label.split()[1:] == ['a="1"', 'b="say', '\\"hi\\""']


def test_prelude_is_the_start_of_the_scratch_variant() -> None:
    # The scratch build reuses the prelude's layers only if its first steps are the same.
    prelude = instructions(render_prelude("base:1", APT_STEP))
    assert prelude == instructions(scratch(system_step=APT_STEP))[: len(prelude)]


def test_render_rejects_impossible_combinations() -> None:
    with pytest.raises(ValueError, match="pip_wheel"):
        render_dockerfile("versioned", "x", source_id="s")
    with pytest.raises(ValueError, match="system packages"):
        render_dockerfile("lock", "x", source_id="s", system_step=APT_STEP)
    with pytest.raises(ValueError, match="package manager"):
        system_packages_step("pacman", ["python3"])


@pytest.mark.parametrize(
    ("manager", "expected"),
    [
        ("apt-get", "apt-get install -y -q --no-install-recommends python3 bash"),
        ("apk", "apk add --no-cache python3 bash"),
        ("dnf", "dnf install -y python3 bash"),
    ],
)
def test_system_packages_step(manager: str, expected: str) -> None:
    assert expected in system_packages_step(manager, ["python3", "bash"])


@pytest.mark.parametrize("variant", ["scratch", "versioned", "lock"])
def test_every_run_step_is_valid_posix_shell(variant: str) -> None:
    kwargs: dict[str, object] = {"source_id": SOURCE_ID}
    if variant != "lock":
        kwargs["pip_wheel"] = PIP_WHEEL
    if variant == "scratch":
        kwargs.update(python="/usr/bin/python3", system_step=APT_STEP)
    text = render_dockerfile(variant, "img", **kwargs)  # type: ignore[arg-type]
    runs = [s[4:] for s in instructions(text) if s.startswith("RUN ")]
    assert runs
    for script in runs:
        # The engine runs RUN lines with /bin/sh -c; -n parses without executing.
        subprocess.run(["sh", "-n", "-c", script], check=True)


@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="needs /usr/bin/python3")
def test_setup_step_makes_a_working_venv_without_the_venv_module(tmp_path: Path) -> None:
    # Run the manual-layout branch for real, with a "venv" module that fails (as
    # on an image whose python3 has none).
    text = scratch()
    setup = next(s[4:] for s in instructions(text) if "useradd" in s)
    start = setup.index("if ! /usr/bin/python3 -m venv")
    end = setup.index("fi;", setup.index("pyvenv.cfg")) + 3
    branch = setup[start:end].replace(VENV_DIR, str(tmp_path / "venv"))
    shadow = tmp_path / "shadow" / "venv"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise SystemExit(1)\n")
    env = {**os.environ, "PYTHONPATH": str(shadow.parent)}
    subprocess.run(["sh", "-c", branch], check=True, env=env)
    assert (tmp_path / "venv" / "bin" / "python").is_symlink()
    config = (tmp_path / "venv" / "pyvenv.cfg").read_text()
    assert config.startswith("home = /usr/bin\n")
    assert "executable" not in config  # written by the manual branch, not by venv
    done = subprocess.run(
        [str(tmp_path / "venv" / "bin" / "python"), "-c", "import sys; print(sys.prefix)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == str(tmp_path / "venv")


# --- build context ---------------------------------------------------------------


def _tree(root: Path, mtime: float, mode: int) -> Path:
    for rel, data in {"events/a.py": b"A", "events/sub/b.py": b"B", "events/x.pyc": b"no"}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
        os.utime(path, (mtime, mtime))
    return root / "events"


def test_build_context_is_deterministic_and_normalized(tmp_path: Path) -> None:
    wheel = tmp_path / "w" / "pkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"zip")

    def context(root: Path, mtime: float, mode: int) -> bytes:
        return build_context(
            "FROM x\n", source_dirs=[_tree(root, mtime, mode)], source_id="s1", wheel_files=[wheel]
        )

    one = context(tmp_path / "1", 1.0, 0o600)
    assert one == context(tmp_path / "2", 9e8, 0o755)
    with tarfile.open(fileobj=io.BytesIO(one)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile("Dockerfile").read() == b"FROM x\n"  # type: ignore[union-attr]
        assert tar.extractfile("code/s1/events/sub/b.py").read() == b"B"  # type: ignore[union-attr]
    assert sorted(members) == [
        "Dockerfile",
        "code",
        "code/current",
        "code/s1",
        "code/s1/events",
        "code/s1/events/a.py",
        "code/s1/events/sub",
        "code/s1/events/sub/b.py",
        "wheels",
        "wheels/pkg-1.0-py3-none-any.whl",
    ]
    assert members["code/current"].issym()
    assert members["code/current"].linkname == "s1"
    assert {m.mode for m in members.values() if m.isfile()} == {0o644}
    assert {m.mode for m in members.values() if m.isdir()} == {0o755}
    assert {(m.uid, m.gid, m.mtime) for m in members.values()} == {(0, 0, 0)}


def test_precompiled_context_carries_checked_hash_byte_code(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    root.mkdir()
    (root / "mod.py").write_text("VALUE = 41 + 1\n")
    data = build_context("FROM x\n", source_dirs=[root], source_id="s", precompile=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        name = f"code/s/pkg/__pycache__/mod.{sys.implementation.cache_tag}.pyc"
        pyc = tar.extractfile(name).read()  # type: ignore[union-attr]
    assert pyc[:4] == importlib.util.MAGIC_NUMBER
    assert int.from_bytes(pyc[4:8], "little") == 0b11  # hash-based, checked (PEP 552)
    namespace: dict[str, object] = {}
    exec(marshal.loads(pyc[16:]), namespace)
    assert namespace["VALUE"] == 42
    assert can_compile_for("cpython", sys.version_info[:3])
    assert not can_compile_for("cpython", (3, sys.version_info[1] + 1, 0))
    assert not can_compile_for("pypy", sys.version_info[:3])


def test_a_module_that_does_not_compile_is_named(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    root.mkdir()
    (root / "broken.py").write_text("def broken(:\n")
    with pytest.raises(SandboxBuildError, match=r"cannot compile pkg/broken\.py"):
        build_context("FROM x\n", source_dirs=[root], source_id="s", precompile=True)


# --- build output ------------------------------------------------------------------


def test_build_output_lines_errors_and_image_id() -> None:
    out = BuildOutput(tail_lines=3)
    assert out.feed({"stream": "Step 1/2 : FROM x\n ---> abc"}) == ["Step 1/2 : FROM x"]
    assert out.feed({"stream": "123\n"}) == [" ---> abc123"]
    assert out.feed({"stream": "50%\r100%\n"}) == ["100%"]
    assert out.feed({"aux": {"ID": "sha256:feed"}}) == []
    assert out.image_id == "sha256:feed"
    error = {"errorDetail": {"code": 1, "message": "returned a non-zero code: 1"}, "error": "x"}
    assert out.feed(error) == ["ERROR: returned a non-zero code: 1"]
    assert out.feed({"stream": "tail"}) == []
    assert out.finish() == ["tail"]
    assert out.error == "returned a non-zero code: 1"
    assert list(out.tail) == ["100%", "ERROR: returned a non-zero code: 1", "tail"]


def test_build_output_drops_terminal_colours() -> None:
    out = BuildOutput()
    assert out.feed({"stream": "\x1b[91mmkdir: cannot create\n\x1b[0mRemoving x\n"}) == [
        "mkdir: cannot create",
        "Removing x",
    ]


def test_summarize_error_shortens_the_failed_command() -> None:
    long_command = "/bin/sh -c set -eu;   " + "x" * 300
    summary = summarize_error(f"The command '{long_command}' returned a non-zero code: 2")
    assert summary.startswith("a build step returned a non-zero code: 2 (/bin/sh -c set -eu; x")
    assert len(summary) < 160
    assert summarize_error("no such image") == "no such image"


# --- probe, wheels, plugin pins ----------------------------------------------------


def _python(**overrides: object) -> PythonInfo:
    fields: dict[str, object] = {
        "executable": "/usr/bin/python3.11",
        "version": (3, 11, 2),
        "implementation": "cpython",
        "abi": "cp311",
        "machine": "x86_64",
        "libc": "glibc",
        "libc_version": "2.36",
        "has_venv": True,
        "has_ensurepip": False,
    }
    fields.update(overrides)
    return PythonInfo(**fields)  # type: ignore[arg-type]


def test_parse_probe_output() -> None:
    python = _python()
    text = "\n".join(
        [
            "probe=1",
            "bash=/usr/bin/bash",
            "package_manager=apt-get",
            "useradd=1",
            "python_path=/usr/bin/python3",
            "python=" + json.dumps({**{f: getattr(python, f) for f in python.__struct_fields__}}),
        ]
    )
    probe = parse_probe_output("sha256:1", text)
    assert probe.python == python
    assert probe.usable_python == python
    assert (probe.bash, probe.package_manager, probe.has_useradd, probe.has_adduser) == (
        "/usr/bin/bash",
        "apt-get",
        True,
        False,
    )


def test_parse_probe_output_without_python_or_with_an_old_one() -> None:
    bare = parse_probe_output("id", "probe=1\n")
    assert bare.python is None
    assert bare.python_problem() == "no python3"
    old = _python(version=(3, 8, 10), abi="cp38")
    assert old.unusable_reason() == "python3 is 3.8.10, older than 3.10"
    with pytest.raises(ValueError, match="not a probe output"):
        parse_probe_output("id", "exec format error")


def test_platform_tags() -> None:
    tags = platform_tags(_python(libc_version="2.36"))
    assert tags[0] == "manylinux_2_36_x86_64"
    assert tags[-3:] == ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    assert "manylinux_2_17_x86_64" in tags
    arm = platform_tags(_python(machine="aarch64", libc_version="2.31"))
    assert arm[-2:] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]
    musl = platform_tags(_python(libc="musl", libc_version="1.2"))
    assert musl == ["musllinux_1_2_x86_64", "musllinux_1_1_x86_64", "musllinux_1_0_x86_64"]


def test_wheel_pins() -> None:
    names = [
        "aiohttp-3.14.5-cp311-cp311-manylinux_2_17_x86_64.whl",
        PIP_WHEEL,
        "typing_extensions-4.16.0-py3-none-any.whl",
        "Jupyter_Client-8.10.0-1-py3-none-any.whl",
    ]
    assert wheel_pins(names) == [
        "aiohttp==3.14.5",
        "jupyter-client==8.10.0",
        "typing-extensions==4.16.0",
    ]


def test_plugin_lock_is_sorted_pinned_and_empty_without_plugins() -> None:
    pins = {"ipykernel": "7.4.0", "jupyter-client": "8.10.0"}
    one = render_plugin_lock({"jupyter": ["jupyter_client>=8.6", "ipykernel>=6.29"]}, pins)
    two = render_plugin_lock({"jupyter": ["ipykernel", "jupyter_client"]}, pins)
    assert one == two
    assert re.findall(r"^[a-z-]+==[0-9.]+$", one.decode(), re.M) == [
        "ipykernel==7.4.0",
        "jupyter-client==8.10.0",
    ]
    assert render_plugin_lock({}, pins) == b""
    assert requirement_name("Jupyter_Client >= 8 ; python_version > '3'") == "jupyter-client"


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        (
            "scratch",
            [
                *("header", "header", "system", "setup", "deps", "deps", "source", "source"),
                *("runtime", "runtime", "runtime", "runtime", "labels"),
            ],
        ),
        ("versioned", ["header", "deps", "deps", "source", "source", "labels"]),
        ("lock", ["header", "source", "source", "labels"]),
    ],
)
def test_every_instruction_has_its_section(variant: str, expected: list[str]) -> None:
    params: dict[str, object] = {"source_id": SOURCE_ID, "labels": LABELS}
    if variant != "lock":
        params["pip_wheel"] = PIP_WHEEL
    if variant == "scratch":
        params["system_step"] = APT_STEP
    text = render_dockerfile(variant, "base:1", **params)  # type: ignore[arg-type]
    assert [instruction_section(step) for step in instructions(text)] == expected


@pytest.mark.parametrize("manager", ["apt-get", "apk", "dnf", "microdnf", "yum", "zypper"])
def test_every_system_step_is_the_system_section(manager: str) -> None:
    assert instruction_section(system_packages_step(manager, ["python3"])) == "system"


def test_other_instructions_have_no_section() -> None:
    assert instruction_section("RUN echo hello") is None
    assert instruction_section("COPY other /x") is None
    assert instruction_section("") is None
