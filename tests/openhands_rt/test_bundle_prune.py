"""stale_bundles/remove_bundles: what gc --bundles removes, and what it never touches."""

from __future__ import annotations

import fcntl
from pathlib import Path

from openhands_rt.bundle.layout import MANIFEST
from openhands_rt.bundle.prune import remove_bundles, stale_bundles


def bundle(root: Path, key: str) -> Path:
    path = root / key
    (path / "bin").mkdir(parents=True)
    (path / "bin" / "bash").write_bytes(b"\x7fELF")
    (path / MANIFEST).write_text("{}")
    (root / f"{key}.lock").touch()
    return path


def test_only_bundles_nobody_needs_are_stale(tmp_path: Path) -> None:
    old, current, mounted = (bundle(tmp_path, key) for key in ("old", "current", "mounted"))
    left = tmp_path / "old2.tmp-x1y2"  # a maker died here
    left.mkdir()
    (tmp_path / "notes").mkdir()  # no manifest: not a bundle, not ours
    (tmp_path / "file").write_text("x")
    stale = stale_bundles(tmp_path, keep=[current], in_use=[f"{mounted}", "/elsewhere"])
    assert stale == [old, left]
    # A mount inside a bundle keeps it too.
    assert stale_bundles(tmp_path, keep=[current], in_use=[f"{old}/bin"]) == [mounted, left]


def test_remove_takes_the_bundle_and_its_lock(tmp_path: Path) -> None:
    old = bundle(tmp_path, "old")
    left = tmp_path / "old.tmp-abc"
    left.mkdir()
    assert remove_bundles(tmp_path, [old, left]) == [old, left]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_bundle_being_made_is_left_alone(tmp_path: Path) -> None:
    old = bundle(tmp_path, "old")
    making = tmp_path / "old.tmp-abc"
    making.mkdir()
    with open(tmp_path / "old.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a maker (another process) works on key "old"
        assert remove_bundles(tmp_path, [old, making]) == []
    assert old.exists()
    assert making.exists()
    assert remove_bundles(tmp_path, [old, making]) == [old, making]


def test_a_missing_root_has_nothing_stale(tmp_path: Path) -> None:
    assert stale_bundles(tmp_path / "none") == []
