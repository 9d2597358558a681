"""The runtime bundle's layout, key and launcher (pure).

A bundle is a directory, mounted read-only at :data:`BUNDLE_MOUNT` in a
container made from any Linux image::

    libexec/python3        an interpreter of the host's (the system's, of the running
                           version, where there is one: openhands_rt.bundle.interpreter)
    bin/python3            a script (run by the static bash) that starts it through the
                           bundle's loader: the interpreter as agents and the kernel's
                           ``sys.executable`` see it, runnable on any image
    bin/bash               a static bash (Debian's bash-static): the session's shell
    lib/                   the dynamic loader, libpython and every library they need
    lib/python3.X/         the standard library, pruned, with its bytecode
    lib/python3.X/site-packages/ (Debian's interpreter: lib/python3/dist-packages/)
                           events, container_server and their dependencies (and the
                           plugins' requirements), compiled: where that interpreter's
                           site module looks under its prefix
    bundle.json            the manifest (:class:`Manifest`), written last

The server runs through the bundle's own loader with ``--library-path`` (the
image's libc, if any, plays no part; and that path reaches no child process:
the agent's commands use the image's binaries). ``-I`` keeps it isolated (no
environment variable, no working directory, no user site on its path) and
``-S`` skips ``site``; the launcher's ``-c`` puts ``site-packages`` on the path.

Where the loader takes ``--argv0`` (glibc 2.33 on), the interpreter is told that
it is ``bin/python3``: its ``sys.executable``, which the agent's code starts
again (``subprocess``, ``multiprocessing``), is the script that works.

A plugin's own interpreter (the IPython kernel) runs the agent's code, so it is
started by :func:`python_command` without ``-I -S``: the interpreter then finds
its prefix (the bundle) from its own path and ``site`` adds ``site-packages``,
as a virtual environment's interpreter would. The server learns that command
from its ``--python-command`` flag (JSON), which :func:`server_command` passes.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath

from openhands_rt.bundle.errors import BundleError

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_MOUNT",
    "MANIFEST",
    "BundleInputs",
    "Manifest",
    "bundle_key",
    "keeps_extension",
    "keeps_stdlib_file",
    "launcher_script",
    "python_command",
    "server_command",
    "shell_path",
]

#: Where the bundle is mounted in the sandbox (read-only).
BUNDLE_MOUNT = "/.openhands-rt"
#: Raised when the layout changes, so old bundles are never reused for a new layout.
BUNDLE_FORMAT = 5
MANIFEST = "bundle.json"

#: Standard library parts the server never imports.
_PRUNED_DIRS = frozenset(
    {
        "test",
        "tests",
        "idlelib",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "lib2to3",
        "site-packages",
        "dist-packages",
        "pydoc_data",
        "__phello__",
    }
)
#: Extension modules for tests, demos or Tk (whose libraries an image need not have).
_PRUNED_EXTENSIONS = ("_test", "_xx", "xxlimited", "_tkinter", "_ctypes_test")


@dataclass(frozen=True)
class BundleInputs:
    """Everything a bundle's content depends on; equal inputs, equal key.

    ``source_hash``: :func:`openhands_rt.image.tags.dir_hash` of our source
    directories; ``python``: the interpreter's real path and ``sys.version``;
    ``distributions``: ``name==version`` of every distribution copied;
    ``bash_sha256``: the static bash's digest.
    """

    source_hash: str
    python_path: str
    python_version: str
    distributions: tuple[str, ...]
    bash_sha256: str
    requirements: tuple[str, ...] = ()


def bundle_key(inputs: BundleInputs) -> str:
    """The bundle's directory name: 24 hex digits of SHA-256 over the inputs and the format."""
    payload = json.dumps(
        {"format": BUNDLE_FORMAT, **asdict(inputs)}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Manifest:
    """``bundle.json``: what a reader of the bundle needs, relative to its root."""

    key: str
    python: str
    loader: str
    bash: str
    python_version: str
    site: str
    #: The script that runs the interpreter through the loader (any image, any caller).
    launcher: str = "bin/python3"
    #: Whether the loader takes ``--argv0`` (then ``sys.executable`` is the launcher).
    argv0: bool = False
    distributions: list[str] = field(default_factory=list)
    #: Extension modules left out because a library they need is not on the host.
    dropped: list[str] = field(default_factory=list)
    #: The extra requirements (the plugins') it was made with.
    requirements: list[str] = field(default_factory=list)
    format: int = BUNDLE_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            data = json.loads(text)
            if data.get("format") != BUNDLE_FORMAT:
                raise BundleError(f"bundle format {data.get('format')}, not {BUNDLE_FORMAT}")
            return cls(**data)
        except (ValueError, TypeError, AttributeError) as exc:
            raise BundleError(f"not a bundle manifest: {exc}") from exc


def keeps_stdlib_file(relative: str) -> bool:
    """Whether ``relative`` (POSIX, inside ``lib/python3.X/``) goes into the bundle.

    Pruned: the directories of :data:`_PRUNED_DIRS` at any depth, the
    ``config-*`` build directory, optimized bytecode (``.opt-1.pyc``,
    ``.opt-2.pyc``: the server runs unoptimized) and the extension modules
    :func:`keeps_extension` refuses.
    """
    path = PurePosixPath(relative)
    if any(part in _PRUNED_DIRS for part in path.parts[:-1]):
        return False
    if path.parts and path.parts[0].startswith("config-"):
        return False
    if path.name.endswith((".opt-1.pyc", ".opt-2.pyc")):
        return False
    return not (path.parent.name == "lib-dynload" and not keeps_extension(path.name))


def keeps_extension(name: str) -> bool:
    """Whether the ``lib-dynload`` extension module file ``name`` is kept."""
    return not name.startswith(_PRUNED_EXTENSIONS)


def _bootstrap(site: str) -> str:
    # -I ignores PYTHONPATH and -S skips site: the path is set here, from the bundle only.
    return (
        f"import sys; sys.path[:0] = [{site!r}]; import runpy; "
        "runpy.run_module('container_server', run_name='__main__', alter_sys=True)"
    )


def _root(mount: str) -> str:
    if not mount.startswith("/") or "'" in mount or "\\" in mount:
        raise BundleError(f"the bundle's mount point must be a plain absolute path: {mount!r}")
    return mount.rstrip("/")


def server_command(manifest: Manifest, *, mount: str = BUNDLE_MOUNT) -> list[str]:
    """The argv that starts the server from the bundle mounted at ``mount``.

    The server's own flags follow it (``--working-dir``, ``--username`` …);
    ``--bash`` already names the bundle's shell and ``--python-command`` the
    plugins' interpreter.
    """
    root = _root(mount)
    return [
        *python_command(manifest, mount=root, isolated=True),
        "-c",
        _bootstrap(f"{root}/{manifest.site}"),
        "--bash",
        shell_path(manifest, mount=root),
        "--python-command",
        json.dumps(python_command(manifest, mount=root)),
    ]


def shell_path(manifest: Manifest, *, mount: str = BUNDLE_MOUNT) -> str:
    """The static bash's path in the sandbox, the bundle mounted at ``mount``."""
    return f"{_root(mount)}/{manifest.bash}"


def python_command(
    manifest: Manifest, *, mount: str = BUNDLE_MOUNT, isolated: bool = False
) -> list[str]:
    """The argv prefix that runs the bundle's interpreter, mounted at ``mount``.

    ``isolated``: ``-I -S``, the server's (see the module docstring); otherwise
    the interpreter a plugin starts for the agent's code, with ``site``.
    """
    root = _root(mount)
    return [
        f"{root}/{manifest.loader}",
        *(["--argv0", f"{root}/{manifest.launcher}"] if manifest.argv0 else []),
        "--library-path",
        f"{root}/lib",
        f"{root}/{manifest.python}",
        *(["-I", "-S"] if isolated else []),
    ]


def launcher_script(manifest: Manifest, *, mount: str = BUNDLE_MOUNT) -> str:
    """``bin/python3``: the interpreter for anyone in the sandbox, through the loader.

    Run by the bundle's static bash (the image may have no shell), so the
    bundle works only at ``mount``; the loader's library path reaches no
    process the interpreter starts.
    """
    root = _root(mount)
    command = " ".join(shlex.quote(arg) for arg in python_command(manifest, mount=root))
    return f'#!{shell_path(manifest, mount=root)}\nexec {command} "$@"\n'
