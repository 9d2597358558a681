"""The three-tag system: tag-safe base names, the directory hash, compute_tags (no Docker)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from openhands_rt.image import ImageTags, compute_tags, dir_hash, tag_safe_base_name
from openhands_rt.image.tags import source_files

DOCKER_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")

# Hypothesis writes hundreds of small trees: a RAM-backed directory keeps that fast.
_FAST_TMP = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


def scratch_dir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(dir=_FAST_TMP)


# --- strategies ------------------------------------------------------------

_lower = "abcdefghijklmnopqrstuvwxyz0123456789"
_component = st.text(alphabet=_lower + _lower.upper() + "._-", min_size=1, max_size=24).filter(
    lambda c: c[0].isalnum()
)
_registry = st.builds(
    lambda host, port: host + (f":{port}" if port is not None else ""),
    st.from_regex(r"[a-z0-9]{1,12}(\.[a-z0-9]{1,8}){0,2}", fullmatch=True),
    st.none() | st.integers(1, 65535),
)
_suffix = (
    st.none()
    | st.builds(
        lambda tag: ":" + tag, st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,40}", fullmatch=True)
    )
    | st.builds(lambda hex_: "@sha256:" + hex_, st.from_regex(r"[0-9a-f]{64}", fullmatch=True))
)
image_refs = st.builds(
    lambda registry, path, suffix: (
        (registry + "/" if registry else "") + "/".join(path) + (suffix or "")
    ),
    st.none() | _registry,
    st.lists(_component, min_size=1, max_size=6),
    _suffix,
)

_name = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=8)
_rel_path = st.lists(_name, min_size=1, max_size=3).map(lambda parts: "/".join(parts) + ".py")


def _no_prefix_clash(tree: Mapping[str, bytes]) -> bool:
    """No file path may also be a directory of another file."""
    dirs = {"/".join(p.split("/")[:i]) for p in tree for i in range(1, p.count("/") + 1)}
    return not any(p in dirs for p in tree)


trees = st.dictionaries(_rel_path, st.binary(max_size=64), min_size=1, max_size=8).filter(
    _no_prefix_clash
)


def write_tree(
    root: Path,
    tree: Mapping[str, bytes],
    *,
    order: list[str] | None = None,
    mtime: Callable[[int], float] = lambda i: 1_000_000_000.0,
    mode: Callable[[int], int] = lambda i: 0o644,
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, rel in enumerate(order if order is not None else sorted(tree)):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tree[rel])
        path.chmod(mode(i))
        os.utime(path, (mtime(i), mtime(i)))
    return root


def lock_files_in(
    directory: Path, pyproject: bytes = b"[project]\n", lock: bytes = b"v1"
) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_bytes(pyproject)
    (directory / "uv.lock").write_bytes(lock)
    return [directory / "pyproject.toml", directory / "uv.lock"]


# --- tag_safe_base_name ------------------------------------------------------


def test_seed_example() -> None:
    assert (
        tag_safe_base_name("nikolaik/python-nodejs:python3.12-nodejs22")
        == "nikolaik_s_python-nodejs_t_python3.12-nodejs22"
    )


def test_seed_example_version_tag(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"a.py": b"x"})
    tags = compute_tags(
        "nikolaik/python-nodejs:python3.12-nodejs22",
        version="0.9.9",
        lock_files=lock_files_in(tmp_path / "lock"),
        source_dirs=[src],
    )
    assert tags.version_tag == "oh_v0.9.9_nikolaik_s_python-nodejs_t_python3.12-nodejs22"


def test_digest_and_registry_port() -> None:
    digest = "a" * 64
    name = tag_safe_base_name(f"Registry.Example:5000/Team/App@sha256:{digest}")
    full = f"registry.example_t_5000_s_team_s_app_sha256_t_{digest}"
    assert len(full) > 96
    assert name == full[-96:]


def test_cut_keeps_the_last_96_characters() -> None:
    ref = "r/" + "x" * 200 + ":the-tag"
    name = tag_safe_base_name(ref)
    assert len(name) == 96
    assert name.endswith("x_t_the-tag")


@given(image_refs)
def test_version_tag_fits_docker_tag_grammar(ref: str) -> None:
    name = tag_safe_base_name(ref)
    assert re.fullmatch(r"[a-z0-9_.-]{1,96}", name)
    for version in ("0.1.0", "0.9.9", "12.34.56rc7", "1.0.0.dev3"):
        assert DOCKER_TAG.fullmatch(f"oh_v{version}_{name}")


@given(st.text(min_size=1, max_size=300))
def test_any_text_becomes_tag_safe(ref: str) -> None:
    assert re.fullmatch(r"[a-z0-9_.-]{1,96}", tag_safe_base_name(ref))


@given(image_refs)
def test_mapping_is_reversible_without_underscores(ref: str) -> None:
    # Names without "_" or "@" map one to one: "/" and ":" come back from "_s_"/"_t_".
    assume("_" not in ref and "@" not in ref)
    name = tag_safe_base_name(ref)
    assume(len(name) < 96)
    assert name.replace("_s_", "/").replace("_t_", ":") == ref.lower()


@given(st.text(max_size=120), image_refs)
def test_the_most_specific_end_is_kept(prefix: str, ref: str) -> None:
    whole = tag_safe_base_name(prefix + ref)
    assert whole.endswith(tag_safe_base_name(ref)) or len(tag_safe_base_name(ref)) == 96


# --- dir_hash ------------------------------------------------------------------


def test_dir_hash_byte_recipe(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "pkg", {"b.py": b"bee", "a/c.py": b""})
    expected = hashlib.md5(
        b"F\0pkg/a/c.py\0" + b"0\0" + b"" + b"F\0pkg/b.py\0" + b"3\0" + b"bee"
    ).hexdigest()
    assert dir_hash([src]) == expected
    assert re.fullmatch(r"[0-9a-f]{32}", expected)


def test_dir_hash_is_independent_of_where_the_tree_lives(tmp_path: Path) -> None:
    tree = {"m.py": b"1", "sub/n.py": b"2"}
    one = write_tree(tmp_path / "a" / "events", tree)
    two = write_tree(tmp_path / "deeper" / "b" / "events", tree)
    assert dir_hash([one]) == dir_hash([two])


def test_dir_hash_sees_the_directory_name_and_argument_order_does_not_matter(
    tmp_path: Path,
) -> None:
    events = write_tree(tmp_path / "events", {"m.py": b"1"})
    server = write_tree(tmp_path / "container_server", {"m.py": b"2"})
    renamed = write_tree(tmp_path / "x" / "events2", {"m.py": b"1"})
    assert dir_hash([events, server]) == dir_hash([server, events])
    assert dir_hash([events, server]) != dir_hash([renamed, server])


def test_dir_hash_rejects_bad_directories(tmp_path: Path) -> None:
    one = write_tree(tmp_path / "a" / "src", {"m.py": b"1"})
    two = write_tree(tmp_path / "b" / "src", {"m.py": b"1"})
    with pytest.raises(ValueError, match="share a name"):
        dir_hash([one, two])
    with pytest.raises(ValueError, match="does not exist"):
        dir_hash([tmp_path / "missing"])


@given(trees, st.data())
def test_dir_hash_ignores_order_mtimes_and_permissions(
    tree: dict[str, bytes], data: st.DataObject
) -> None:
    order = data.draw(st.permutations(sorted(tree)))
    mtimes = data.draw(st.lists(st.integers(0, 2**31 - 1), min_size=len(tree), max_size=len(tree)))
    modes = data.draw(
        st.lists(
            st.sampled_from([0o400, 0o600, 0o644, 0o755]), min_size=len(tree), max_size=len(tree)
        )
    )
    with scratch_dir() as tmp:
        first = write_tree(Path(tmp, "1", "src"), tree)
        second = write_tree(
            Path(tmp, "2", "src"),
            tree,
            order=list(order),
            mtime=lambda i: float(mtimes[i]),
            mode=lambda i: modes[i],
        )
        assert dir_hash([first]) == dir_hash([second])


_ignored = st.sampled_from(
    [
        "__pycache__/m.cpython-311.pyc",
        "sub/__pycache__/x.py",
        "stale.pyc",
        "sub/deep/old.pyc",
        ".hidden.py",
        ".git/config",
        "sub/.env",
        ".venv/lib/site.py",
    ]
)


@given(trees, st.lists(_ignored, min_size=1, max_size=4, unique=True), st.binary(max_size=32))
def test_ignored_entries_never_change_the_hash(
    tree: dict[str, bytes], ignored: list[str], content: bytes
) -> None:
    with scratch_dir() as tmp:
        src = write_tree(Path(tmp, "src"), tree)
        before = dir_hash([src])
        for rel in ignored:
            path = src / rel
            if any(p in tree for p in (rel.split("/")[0], rel)):
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        assert dir_hash([src]) == before
        assert all(not f.relative.endswith(".pyc") for f in source_files([src]))


# --- compute_tags ----------------------------------------------------------


def test_compute_tags_follows_the_api_recipe(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "events", {"a.py": b"x"})
    locks = lock_files_in(tmp_path / "lock", b"[project]\nname='x'\n", b"lock-bytes")
    base = "python:3.12-slim"
    tags = compute_tags(base, version="0.9.9", lock_files=locks, source_dirs=[src])
    lock16 = hashlib.md5(base.encode() + b"".join(f.read_bytes() for f in locks)).hexdigest()[:16]
    assert tags == ImageTags(
        version_tag="oh_v0.9.9_python_t_3.12-slim",
        lock_tag=f"oh_v0.9.9_{lock16}",
        source_tag=f"oh_v0.9.9_{lock16}_{dir_hash([src])[:16]}",
    )


_MUTATIONS = ["change_byte", "rename", "add", "remove"]


@given(trees, st.sampled_from(_MUTATIONS), st.data())
def test_a_source_change_changes_the_source_tag_only(
    tree: dict[str, bytes], mutation: str, data: st.DataObject
) -> None:
    victim = data.draw(st.sampled_from(sorted(tree)))
    changed = dict(tree)
    if mutation == "change_byte":
        content = tree[victim]
        if content:
            index = data.draw(st.integers(0, len(content) - 1))
            flipped = bytes([content[index] ^ data.draw(st.integers(1, 255))])
            changed[victim] = content[:index] + flipped + content[index + 1 :]
        else:
            changed[victim] = b"\0"
    elif mutation == "rename":
        new_name = victim[:-3] + "_renamed.py"
        assume(new_name not in tree)
        changed[new_name] = changed.pop(victim)
    elif mutation == "add":
        new_name = data.draw(_rel_path)
        assume(new_name not in tree)
        changed[new_name] = data.draw(st.binary(max_size=16))
        assume(_no_prefix_clash(changed))
    else:
        assume(len(tree) > 1)
        del changed[victim]
    with scratch_dir() as tmp:
        locks = lock_files_in(Path(tmp, "lock"))
        before = compute_tags(
            "base:1",
            version="1.0",
            lock_files=locks,
            source_dirs=[write_tree(Path(tmp, "1", "src"), tree)],
        )
        after = compute_tags(
            "base:1",
            version="1.0",
            lock_files=locks,
            source_dirs=[write_tree(Path(tmp, "2", "src"), changed)],
        )
    assert after.source_tag != before.source_tag
    assert after.lock_tag == before.lock_tag
    assert after.version_tag == before.version_tag


@given(
    st.sampled_from(["base", "pyproject", "lock"]),
    st.binary(min_size=1, max_size=16),
)
def test_a_base_or_lock_change_changes_the_lock_and_source_tags(which: str, extra: bytes) -> None:
    with scratch_dir() as tmp:
        src = write_tree(Path(tmp, "src"), {"a.py": b"a"})
        locks = lock_files_in(Path(tmp, "1"), b"[project]\n", b"lock")
        before = compute_tags("img:1", version="1.0", lock_files=locks, source_dirs=[src])
        base = "img:1"
        if which == "base":
            base = "img:1" + extra.hex()
        elif which == "pyproject":
            locks = lock_files_in(Path(tmp, "2"), b"[project]\n" + extra, b"lock")
        else:
            locks = lock_files_in(Path(tmp, "2"), b"[project]\n", b"lock" + extra)
        after = compute_tags(base, version="1.0", lock_files=locks, source_dirs=[src])
    assert after.lock_tag != before.lock_tag
    assert after.source_tag != before.source_tag
    assert after.source_tag.endswith(before.source_tag[-17:])  # same source hash
    assert (after.version_tag != before.version_tag) == (which == "base")


def test_a_version_with_a_local_part_stays_tag_safe(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"a.py": b"a"})
    tags = compute_tags(
        "img", version="1.0+local.1", lock_files=lock_files_in(tmp_path / "l"), source_dirs=[src]
    )
    assert tags.version_tag == "oh_v1.0_local.1_img"
    assert DOCKER_TAG.fullmatch(tags.source_tag)


_SUBPROCESS = """
import json, sys
from pathlib import Path
from openhands_rt.image import compute_tags
cases = json.loads(sys.stdin.read())
out = []
for base, locks, dirs in cases:
    tags = compute_tags(base, version="0.9.9", lock_files=[Path(p) for p in locks],
                        source_dirs=[Path(p) for p in dirs])
    out.append([tags.version_tag, tags.lock_tag, tags.source_tag])
print(json.dumps(out))
"""


def test_same_inputs_give_the_same_tags_in_another_process() -> None:
    # Hypothesis draws the cases; one other process (slow to start) checks them all.
    with scratch_dir() as tmp:
        specs: list[list[object]] = []
        expected: list[list[str]] = []
        written: list[tuple[Path, dict[str, bytes]]] = []

        @given(image_refs, trees, st.binary(max_size=32))
        def collect(base: str, tree: dict[str, bytes], lock: bytes) -> None:
            case = Path(tmp, str(len(specs)))
            src = write_tree(case / "src", tree)
            locks = lock_files_in(case / "lock", b"[project]\n", lock)
            tags = compute_tags(base, version="0.9.9", lock_files=locks, source_dirs=[src])
            specs.append([base, [str(p) for p in locks], [str(src)]])
            expected.append([tags.version_tag, tags.lock_tag, tags.source_tag])
            written.append((src, tree))

        collect()
        # Rewrite every tree in reverse creation order with other mtimes and modes:
        # the other process must still agree.
        for src, tree in written:
            for rel in sorted(tree, reverse=True):
                (src / rel).unlink()
                (src / rel).write_bytes(tree[rel])
                (src / rel).chmod(0o600)
                os.utime(src / rel, (12345.0, 12345.0))
        done = subprocess.run(
            [sys.executable, "-c", _SUBPROCESS],
            input=json.dumps(specs),
            capture_output=True,
            text=True,
            check=True,
        )
    assert len(expected) > 10
    assert json.loads(done.stdout) == expected
