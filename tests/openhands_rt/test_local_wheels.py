"""Plugins installed from this host: requirements on a wheel file or a project directory."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

from openhands_rt import JupyterRequirement, PluginRequirement, SandboxBuildError
from openhands_rt.image.build import runtime_image_tags
from openhands_rt.image.local_wheels import (
    LocalWheel,
    build_local_wheel,
    local_reference,
    resolve_local_requirements,
)
from openhands_rt.image.project import render_plugin_lock

SHOUT_DIR = Path(__file__).resolve().parents[1] / "plugins" / "shout"
BASE = "example.org/base:1"


def test_local_reference_recognizes_host_paths_only() -> None:
    assert local_reference("pkg @ file:///opt/w/pkg-1.0-py3-none-any.whl") == Path(
        "/opt/w/pkg-1.0-py3-none-any.whl"
    )
    assert local_reference("pkg@file://localhost/opt/my%20plugin") == Path("/opt/my plugin")
    assert local_reference("pkg @ file:///opt/p#sha256=00 ; python_version >= '3.10'") == Path(
        "/opt/p"
    )
    assert local_reference("/opt/wheels/pkg-1.0-py3-none-any.whl") == Path(
        "/opt/wheels/pkg-1.0-py3-none-any.whl"
    )
    for index_requirement in ("ipykernel", "jupyter_client>=8.6", "pkg @ https://e.org/p.whl"):
        assert local_reference(index_requirement) is None
    with pytest.raises(ValueError, match="another host"):
        local_reference("pkg @ file://fileserver/share/pkg.whl")


def test_plugin_lock_keeps_direct_references_unpinned() -> None:
    entry = "oh-shout-plugin @ oh_shout_plugin-0.1.0-py3-none-any.whl#sha256=ab"
    lock = render_plugin_lock({"shout": [entry]}, {"oh-shout-plugin": "9.9"})
    assert lock.decode().splitlines()[-1] == entry


def fake_wheel(directory: Path, content: bytes, name: str = "oh_shout_plugin-0.1.0") -> Path:
    """A wheel-named zip file: enough for hashing, not for installing."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("oh_shout_plugin/__init__.py", content)
    return path


async def lock_tag(*plugins: PluginRequirement) -> str:
    return (await runtime_image_tags(BASE, plugins=plugins)).lock_tag


async def test_lock_tag_follows_the_wheel_bytes_not_its_place(tmp_path: Path) -> None:
    one = fake_wheel(tmp_path / "a", b"X = 1\n")
    moved = fake_wheel(tmp_path / "elsewhere", b"X = 1\n")
    changed = fake_wheel(tmp_path / "b", b"X = 2\n")

    def shout(wheel: Path) -> PluginRequirement:
        return PluginRequirement("shout", (f"oh-shout-plugin @ {wheel.as_uri()}",))

    plain = await lock_tag()
    with_one = await lock_tag(shout(one))
    assert with_one != plain
    assert await lock_tag(shout(moved)) == with_one
    assert await lock_tag(shout(changed)) not in (plain, with_one)
    # A bare path is the same requirement as the file URL.
    assert await lock_tag(PluginRequirement("shout", (str(one),))) == with_one
    # Plugins add up: jupyter and shout together are neither alone.
    both = await lock_tag(JupyterRequirement(), shout(one))
    assert both not in (plain, with_one, await lock_tag(JupyterRequirement()))


async def test_wrong_or_missing_local_wheels_are_refused(tmp_path: Path) -> None:
    wheel = fake_wheel(tmp_path, b"X = 1\n")
    with pytest.raises(SandboxBuildError, match=r"is oh-shout-plugin 0\.1\.0, not other-plugin"):
        await resolve_local_requirements([f"other_plugin @ {wheel.as_uri()}"])
    with pytest.raises(SandboxBuildError, match="does not exist"):
        await resolve_local_requirements([f"x @ {(tmp_path / 'gone.whl').as_uri()}"])
    at_sign = fake_wheel(tmp_path / "user@host", b"X = 1\n")
    assert list(await resolve_local_requirements([str(at_sign), at_sign.as_uri()])) == [
        str(at_sign),
        at_sign.as_uri(),
    ]
    not_a_wheel = tmp_path / "plugin.zip"
    not_a_wheel.write_bytes(b"PK")
    with pytest.raises(SandboxBuildError, match="not named like a wheel"):
        await resolve_local_requirements([str(not_a_wheel)])
    resolved = await resolve_local_requirements(
        ["ipykernel", f"oh-shout-plugin @ {wheel.as_uri()}"]
    )
    assert list(resolved) == [f"oh-shout-plugin @ {wheel.as_uri()}"]
    local = resolved[f"oh-shout-plugin @ {wheel.as_uri()}"]
    assert local.install_requirement == f"oh-shout-plugin @ {wheel.as_uri()}#sha256={local.sha256}"
    assert local.lock_entry == f"oh-shout-plugin @ {wheel.name}#sha256={local.sha256}"


async def test_project_directory_is_built_once_into_a_wheel(tmp_path: Path) -> None:
    # pip builds it with the project's backend (hatchling), which makes reproducible
    # wheels: the same source, copied anywhere, gives the same bytes and lock tag.
    project = tmp_path / "shout"
    shutil.copytree(SHOUT_DIR, project, ignore=shutil.ignore_patterns("__pycache__"))
    wheel = await build_local_wheel(project)
    assert wheel.name == "oh-shout-plugin"
    assert wheel.path.name == "oh_shout_plugin-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel.path) as archive:
        entry_points = archive.read("oh_shout_plugin-0.1.0.dist-info/entry_points.txt").decode()
    assert "[openhands_rt.plugins]" in entry_points
    assert "shout = oh_shout_plugin:ShoutPlugin" in entry_points
    assert await build_local_wheel(SHOUT_DIR) == wheel
    assert LocalWheel.from_file(wheel.path) == wheel

    from_dir = PluginRequirement("shout", (f"oh-shout-plugin @ {project.as_uri()}",))
    from_wheel = PluginRequirement("shout", (f"oh-shout-plugin @ {wheel.path.as_uri()}",))
    assert await lock_tag(from_dir) == await lock_tag(from_wheel)

    # A change to the plugin's source is a new wheel and a new lock tag.
    module = project / "oh_shout_plugin" / "plugins.py"
    module.write_text(module.read_text() + "\n# changed by test_local_wheels\n")
    changed = await build_local_wheel(project)
    assert changed.sha256 != wheel.sha256
    assert changed.path.name == wheel.path.name
    assert await lock_tag(from_dir) != await lock_tag(from_wheel)


async def test_project_that_does_not_build_reports_pip_output(tmp_path: Path) -> None:
    project = tmp_path / "broken-project"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "no_such_backend_module"\n'
    )
    with pytest.raises(SandboxBuildError, match="cannot build a wheel of") as info:
        await build_local_wheel(project)
    assert info.value.log_tail
