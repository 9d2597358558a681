"""The bundle's pure parts: key, stdlib pruning, manifest, launcher, ldd's output, the closure."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openhands_rt.bundle import BundleError, Manifest, server_command
from openhands_rt.bundle.elf import Needed, parse_ldd
from openhands_rt.bundle.layout import (
    BUNDLE_FORMAT,
    BUNDLE_MOUNT,
    BundleInputs,
    bundle_key,
    keeps_extension,
    keeps_stdlib_file,
    launcher_script,
    python_command,
)
from openhands_rt.bundle.requirements import Distribution, closure

INPUTS = BundleInputs(
    source_hash="0" * 32,
    python_path="/opt/python/bin/python3.11",
    python_version="3.11.7 (main)",
    distributions=("aiohttp==3.14.5", "msgspec==0.22.0"),
    bash_sha256="b" * 64,
)
MANIFEST = Manifest(
    key="k",
    python="bin/python3",
    loader="lib/ld-linux-x86-64.so.2",
    bash="bin/bash",
    python_version="3.11",
    site="lib/python3.11/site-packages",
)


def test_the_key_is_stable_and_short() -> None:
    assert bundle_key(INPUTS) == bundle_key(dataclasses.replace(INPUTS))
    assert len(bundle_key(INPUTS)) == 24
    int(bundle_key(INPUTS), 16)


@pytest.mark.parametrize(
    "change",
    [
        {"source_hash": "1" * 32},
        {"python_path": "/usr/bin/python3.11"},
        {"python_version": "3.11.8 (main)"},
        {"distributions": ("aiohttp==3.14.6", "msgspec==0.22.0")},
        {"bash_sha256": "c" * 64},
        {"requirements": ("ipykernel", "jupyter-client")},
    ],
)
def test_every_input_changes_the_key(change: dict[str, object]) -> None:
    assert bundle_key(dataclasses.replace(INPUTS, **change)) != bundle_key(INPUTS)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("relative", "kept"),
    [
        ("os.py", True),
        ("__pycache__/os.cpython-311.pyc", True),
        ("__pycache__/os.cpython-311.opt-1.pyc", False),
        ("__pycache__/os.cpython-311.opt-2.pyc", False),
        ("asyncio/base_events.py", True),
        ("test/test_os.py", False),
        ("unittest/test/test_case.py", False),
        ("idlelib/idle.py", False),
        ("tkinter/__init__.py", False),
        ("turtledemo/clock.py", False),
        ("ensurepip/_bundled/pip.whl", False),
        ("lib2to3/main.py", False),
        ("site-packages/aiohttp/__init__.py", False),
        ("config-3.11-x86_64-linux-gnu/libpython3.11.a", False),
        ("lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so", True),
        ("lib-dynload/_tkinter.cpython-311-x86_64-linux-gnu.so", False),
        ("lib-dynload/_testcapi.cpython-311-x86_64-linux-gnu.so", False),
        ("lib-dynload/xxlimited.cpython-311-x86_64-linux-gnu.so", False),
        ("email/test.py", True),  # a module named test, not a test directory
    ],
)
def test_the_stdlib_is_pruned_of_what_the_server_never_imports(relative: str, kept: bool) -> None:
    assert keeps_stdlib_file(relative) is kept


def test_extensions_for_tests_and_tk_are_dropped() -> None:
    assert keeps_extension("_socket.cpython-311-x86_64-linux-gnu.so")
    assert not keeps_extension("_testinternalcapi.cpython-311-x86_64-linux-gnu.so")


def test_the_launcher_runs_the_server_through_the_bundles_loader_isolated() -> None:
    argv = server_command(MANIFEST)
    assert argv[:4] == [
        f"{BUNDLE_MOUNT}/lib/ld-linux-x86-64.so.2",
        "--library-path",
        f"{BUNDLE_MOUNT}/lib",
        f"{BUNDLE_MOUNT}/bin/python3",
    ]
    assert argv[4:7] == ["-I", "-S", "-c"]
    assert f"sys.path[:0] = ['{BUNDLE_MOUNT}/lib/python3.11/site-packages']" in argv[7]
    assert "run_module('container_server'" in argv[7]
    assert argv[8:10] == ["--bash", f"{BUNDLE_MOUNT}/bin/bash"]
    assert python_command(MANIFEST, isolated=True) == argv[:6]
    # The plugins' interpreter: the same, with site (it finds the bundle as its prefix).
    assert argv[10] == "--python-command"
    assert json.loads(argv[11]) == python_command(MANIFEST) == argv[:4]
    compile(argv[7], "<bootstrap>", "exec")


def test_a_loader_with_argv0_names_the_launcher_as_the_executable() -> None:
    manifest = dataclasses.replace(MANIFEST, argv0=True)
    assert python_command(manifest) == [
        f"{BUNDLE_MOUNT}/lib/ld-linux-x86-64.so.2",
        "--argv0",
        f"{BUNDLE_MOUNT}/bin/python3",
        "--library-path",
        f"{BUNDLE_MOUNT}/lib",
        f"{BUNDLE_MOUNT}/bin/python3",
    ]
    script = launcher_script(dataclasses.replace(manifest, python="libexec/python3"))
    assert script == (
        f"#!{BUNDLE_MOUNT}/bin/bash\n"
        f"exec {BUNDLE_MOUNT}/lib/ld-linux-x86-64.so.2 --argv0 {BUNDLE_MOUNT}/bin/python3 "
        f'--library-path {BUNDLE_MOUNT}/lib {BUNDLE_MOUNT}/libexec/python3 "$@"\n'
    )


def test_the_launcher_follows_the_mount_point() -> None:
    argv = server_command(MANIFEST, mount="/b/")
    assert argv[0] == "/b/lib/ld-linux-x86-64.so.2"
    assert argv[9] == "/b/bin/bash"
    assert json.loads(argv[-1])[-1] == "/b/bin/python3"
    for bad in ("relative", "/it's", "/a\\b"):
        with pytest.raises(BundleError):
            server_command(MANIFEST, mount=bad)


def test_the_manifest_round_trips_and_refuses_other_formats() -> None:
    assert Manifest.from_json(MANIFEST.to_json()) == MANIFEST
    with pytest.raises(BundleError):
        Manifest.from_json(MANIFEST.to_json().replace(f'"format": {BUNDLE_FORMAT}', '"format": 99'))
    for text in ("", "[]", f'{{"format": {BUNDLE_FORMAT}, "surprise": 2}}'):
        with pytest.raises(BundleError):
            Manifest.from_json(text)


LDD_ONE = """\
\tlinux-vdso.so.1 (0x00007ffd0c5f2000)
\tlibpython3.11.so.1.0 => /opt/python/lib/libpython3.11.so.1.0 (0x00007f5784400000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f578421e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f5784b76000)
"""
LDD_MANY = """\
/b/bin/python3:
\tlinux-vdso.so.1 (0x00007ffd0c5f2000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f578421e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f5784b76000)
/b/static:
/b/_tkinter.so:
\tlibtk8.6.so => not found
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f578421e000)
"""


def test_ldd_of_one_file() -> None:
    assert parse_ldd(LDD_ONE, ["/b/bin/python3"]) == {
        "/b/bin/python3": [
            Needed("libpython3.11.so.1.0", "/opt/python/lib/libpython3.11.so.1.0"),
            Needed("libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6"),
            Needed("ld-linux-x86-64.so.2", "/lib64/ld-linux-x86-64.so.2", loader=True),
        ]
    }


def test_ldd_of_several_files_with_a_static_one_and_a_missing_library() -> None:
    result = parse_ldd(LDD_MANY, ["/b/bin/python3", "/b/static", "/b/_tkinter.so"])
    assert [n.name for n in result["/b/bin/python3"]] == ["libc.so.6", "ld-linux-x86-64.so.2"]
    assert result["/b/static"] == []
    assert result["/b/_tkinter.so"][0] == Needed("libtk8.6.so", None)


def test_ldd_output_that_cannot_be_read_is_a_clean_error() -> None:
    with pytest.raises(BundleError):
        parse_ldd("/elsewhere:\n", ["/a", "/b"])
    with pytest.raises(BundleError):
        parse_ldd("\tgarbage here\n", ["/a"])


def test_the_closure_follows_markers_and_extras() -> None:
    graph = {
        "server": Distribution("server", "1", ("web[fast]>=1", "old; python_version < '3.8'")),
        "web": Distribution(
            "Web", "2", ("idna", "speed; extra == 'fast'", "slow; extra == 'slow'")
        ),
        "idna": Distribution("idna", "3"),
        "speed": Distribution("speed", "4", ("idna",)),
    }
    found = closure(["server"], graph.get, {"python_version": "3.11"})
    assert [(d.name, d.version) for d in found] == [
        ("idna", "3"),
        ("server", "1"),
        ("speed", "4"),
        ("Web", "2"),
    ]


def test_a_needed_distribution_that_is_not_installed_is_named() -> None:
    graph = {"server": Distribution("server", "1", ("ghost>=1",))}
    with pytest.raises(BundleError, match=r"ghost .*needed by server"):
        closure(["server"], graph.get, {})


@given(st.dictionaries(st.integers(0, 12), st.sets(st.integers(0, 12), max_size=4), min_size=1))
def test_the_closure_is_exactly_what_is_reachable(edges: dict[int, set[int]]) -> None:
    graph = {
        f"p{n}": Distribution(f"p{n}", "1", tuple(f"p{c}" for c in sorted(edges.get(n, set()))))
        for n in range(13)
    }
    start = min(edges)
    reachable, todo = set(), [start]
    while todo:
        n = todo.pop()
        if n not in reachable:
            reachable.add(n)
            todo += edges.get(n, set())
    found = closure([f"p{start}"], graph.get, {})
    assert sorted(d.name for d in found) == sorted(f"p{n}" for n in reachable)
