"""The repository stands on its own: a fresh clone anywhere has all it needs.

- no tracked file names a path of one particular machine, or a document or
  directory beside the repository: the tests' data, the API reference and
  everything they point to are in the repository;
- the real OpenHands trajectories under ``tests/data/`` are kept byte for byte.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAJECTORIES = REPO / "tests" / "data" / "openhands-trajectories"

# Built from pieces so that this file does not match its own patterns.
_SLASH = "/"
FORBIDDEN = re.compile(
    "|".join(
        [
            re.escape(_SLASH + "work" + _SLASH),  # the development machine's checkout
            re.escape(_SLASH + "root" + _SLASH),  # somebody's home directory
            re.escape(".." + _SLASH + "shared"),  # a folder beside the repository
            # Documents that lived outside the repository (the API reference is docs/api.md).
            r"(?<![\w/.])(?:API|SPEC|" + "STYLE" + r")\.md\b",
        ]
    ).encode()
)

# sha256 of each file as recorded by OpenHands (tests/runtime/trajs/ of its repository).
TRAJECTORY_SHA256 = {
    "basic.json": "e80ea691272569f24291ee6cbf3d4daa62e6f0ddb7bedd2177c6896a502558fb",
    "basic_gui_mode.json": "2132fbda813f75ac6d731a439d510b0a99a4b72b5aa7e51dc7541ccf02a09b18",
    "basic_interactions.json": "32d1bb759064b37fafc43936591c2b8851370e01de1a6e6b6d1e55689f00958a",
    "wrong_initial_state.json": "1cc111115cf292079b00aa6313929843eda2fd9b62a605c6ebe5bad458d7d3ef",
}


def tracked_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True
    ).stdout
    return [REPO / name for name in listed.decode().split("\0") if name]


def machine_specific_lines(path: Path) -> list[str]:
    """``path:line: text`` for each line of ``path`` matching ``FORBIDDEN``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # deleted in the work tree, not yet in the index
        return []
    return [
        f"{path.relative_to(REPO)}:{number}: {line.decode(errors='replace').strip()}"
        for number, line in enumerate(data.splitlines(), 1)
        if FORBIDDEN.search(line)
    ]


@pytest.mark.parametrize(
    "line",
    [
        b'REAL = Path("' + b"/work" + b'/shared/data/openhands-trajectories")',
        b"# the data sits in " + b".." + b"/shared beside the repository",
        b"cache in " + b"/root" + b"/.cache/uv",
        b'"""Configuration of one sandbox (see ' + b"API" + b'.md)."""',
        b"# the house style (" + b"STYLE" + b".md)",
    ],
)
def test_the_patterns_catch_machine_paths(line: bytes) -> None:
    assert FORBIDDEN.search(line), line


@pytest.mark.parametrize(
    "line",
    [
        b"cd /workspace && ls",
        b"/home/openhands is the sandbox user's home",
        b"the reference is docs/api.md",
        b"shared/ in a sentence, ../data beside it",
    ],
)
def test_the_patterns_leave_ordinary_text_alone(line: bytes) -> None:
    assert not FORBIDDEN.search(line), line


def test_no_tracked_file_holds_a_machine_path_or_an_outside_document() -> None:
    files = tracked_files()
    assert REPO / "pyproject.toml" in files
    found = [hit for path in files for hit in machine_specific_lines(path)]
    assert not found, "machine-specific paths or outside documents:\n" + "\n".join(found)


def test_real_trajectories_are_in_the_repository_unchanged() -> None:
    present = {p.name for p in TRAJECTORIES.glob("*.json")}
    assert present == set(TRAJECTORY_SHA256)
    for name, expected in TRAJECTORY_SHA256.items():
        digest = hashlib.sha256((TRAJECTORIES / name).read_bytes()).hexdigest()
        assert digest == expected, f"{name} was changed: it must stay as OpenHands recorded it"
    readme = (TRAJECTORIES / "README.md").read_text()
    assert "tests/runtime/trajs/" in readme
    for name in TRAJECTORY_SHA256:
        assert f"`{name}`" in readme, f"the README does not say what {name} holds"
