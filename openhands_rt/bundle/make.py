"""Making the runtime bundle: once per host, interpreter and source version.

:func:`make_bundle` returns the bundle under ``<cache>/bundles/<key>/``
(:func:`openhands_rt.image.cache.cache_dir`), making it first when it is not
there: in a temporary sibling directory, renamed into place once complete
(its manifest written last), under an exclusive lock on ``<key>.lock`` so that
concurrent makers wait for the first one and then use its bundle. A maker
that loses the rename anyway (a file system without ``flock``) throws its copy
away and uses the winner's.

Blocking (copies, ``ldd``, byte-compiling): call it from a thread
(``anyio.to_thread.run_sync``) in async code.
"""

from __future__ import annotations

import compileall
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from openhands_rt.bundle.elf import resolve
from openhands_rt.bundle.errors import BundleError
from openhands_rt.bundle.interpreter import Interpreter, find_interpreter
from openhands_rt.bundle.layout import (
    BUNDLE_MOUNT,
    MANIFEST,
    BundleInputs,
    Manifest,
    bundle_key,
    keeps_stdlib_file,
    launcher_script,
    python_command,
    server_command,
    shell_path,
)
from openhands_rt.bundle.markers import current_environment
from openhands_rt.bundle.requirements import (
    Distribution,
    closure,
    distribution_files,
    installed,
)
from openhands_rt.image.cache import cache_dir
from openhands_rt.image.project import (
    PluginLike,
    ProjectFiles,
    find_project,
    image_requirements,
    plugin_requirements,
    requirement_name,
)
from openhands_rt.image.tags import dir_hash, source_files

__all__ = [
    "BASH_STATIC_CANDIDATES",
    "Bundle",
    "find_static_bash",
    "make_bundle",
    "plugin_bundle_requirements",
]

logger = logging.getLogger(__name__)

#: Where Debian's ``bash-static`` puts its binary.
BASH_STATIC_CANDIDATES = ("/bin/bash-static", "/usr/bin/bash-static")
#: glibc loads these itself, so ldd never names them: libgcc_s (thread cancellation
#: unwinds through it), and the name-service modules an image's /etc/nsswitch.conf may
#: name (``passwd: compat``, ``systemd``). Missing from the bundle, they would be looked
#: for in the image, whose copies belong to the image's glibc, not the bundle's.
_DLOPENED_BY_LIBC = (
    "libgcc_s.so.1",
    "libnss_files.so.2",
    "libnss_compat.so.2",
    "libnss_dns.so.2",
    "libnss_systemd.so.2",
)


@dataclass(frozen=True)
class Bundle:
    """A complete bundle on this host: its directory and its manifest."""

    path: Path
    manifest: Manifest

    @property
    def key(self) -> str:
        return self.manifest.key

    def server_command(self, *, mount: str = BUNDLE_MOUNT) -> list[str]:
        """The argv that starts the server from this bundle mounted at ``mount``."""
        return server_command(self.manifest, mount=mount)

    def shell(self, *, mount: str = BUNDLE_MOUNT) -> str:
        """The static bash's path in the sandbox, the bundle mounted at ``mount``."""
        return shell_path(self.manifest, mount=mount)

    def python_command(self, *, mount: str = BUNDLE_MOUNT, isolated: bool = False) -> list[str]:
        """The argv prefix that runs this bundle's interpreter mounted at ``mount``."""
        return python_command(self.manifest, mount=mount, isolated=isolated)


def find_static_bash() -> Path:
    """Debian's static bash on this host, or :class:`BundleError` saying how to get it."""
    for candidate in BASH_STATIC_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return Path(candidate)
    raise BundleError(
        "no static bash on this host (looked for " + ", ".join(BASH_STATIC_CANDIDATES) + "); "
        "install it with `apt-get install bash-static` (scripts/setup.sh does)"
    )


def plugin_bundle_requirements(
    plugins: Sequence[str | PluginLike], project: ProjectFiles | None = None
) -> list[str]:
    """What ``plugins`` add to a bundle: their requirements' project names, sorted.

    A build installs a plugin's requirements into the image; a bundle copies
    them from this host's environment, where they must be installed (a
    direct reference, ``name @ url``, names its project: the installed copy
    is the one bundled).
    """
    project = project or find_project()
    names: set[str] = set()
    for requirements in plugin_requirements(plugins, project.pyproject).values():
        for requirement in requirements:
            try:
                names.add(requirement_name(requirement))
            except ValueError as exc:
                raise BundleError(
                    f"the plugin requirement {requirement!r} names no project: install it "
                    "on this host and name it, or use runtime_mode='build'"
                ) from exc
    return sorted(names)


def make_bundle(
    *,
    requirements: Sequence[str] = (),
    python: Path | None = None,
    bash: Path | None = None,
    project: ProjectFiles | None = None,
    root: Path | None = None,
) -> Bundle:
    """The bundle for this interpreter and source tree, made when missing (see the module doc).

    ``requirements``: more to bundle than the server's own requirements (the
    plugins', :func:`plugin_bundle_requirements`), each installed on this host;
    ``python``: the interpreter to carry (default: :func:`find_interpreter`'s
    choice, of the running interpreter's version);
    ``bash``: the static bash (default: :func:`find_static_bash`);
    ``project``: our source checkout (default: :func:`find_project`);
    ``root``: where bundles live (default: ``cache_dir("bundles")``).
    """
    project = project or find_project()
    bash = bash or find_static_bash()
    root = root or cache_dir("bundles")
    roots = image_requirements(project.pyproject)
    extra = tuple(sorted(set(requirements)))
    roots += list(extra)
    distributions = closure(roots, installed, current_environment())
    interpreter = find_interpreter(python)
    inputs = BundleInputs(
        source_hash=dir_hash(project.source_dirs),
        python_path=str(interpreter.path),
        python_version=interpreter.version,
        distributions=tuple(f"{d.name}=={d.version}" for d in distributions),
        bash_sha256=hashlib.sha256(bash.read_bytes()).hexdigest(),
        requirements=extra,
    )
    key = bundle_key(inputs)
    final = root / key
    existing = _read(final)
    if existing is not None:
        return existing
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{key}.lock"):
        existing = _read(final)
        if existing is not None:
            return existing
        work = Path(tempfile.mkdtemp(prefix=f"{key}.tmp-", dir=root))
        try:
            manifest = _build(
                work, key, interpreter, bash, distributions, project, requirements=extra
            )
            try:
                os.rename(work, final)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                logger.info("another process made bundle %s first; using it", key)
                won = _read(final)
                if won is None:
                    raise BundleError(f"{final} exists but is not a complete bundle") from exc
                return won
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return Bundle(final, manifest)


def _read(path: Path) -> Bundle | None:
    try:
        text = (path / MANIFEST).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return Bundle(path, Manifest.from_json(text))


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build(
    work: Path,
    key: str,
    interpreter: Interpreter,
    bash: Path,
    distributions: Sequence[Distribution],
    project: ProjectFiles,
    *,
    requirements: Sequence[str],
) -> Manifest:
    version = interpreter.short
    for directory in ("bin", "lib", "libexec"):
        (work / directory).mkdir()
    shutil.copy2(interpreter.path, work / "libexec" / "python3")
    shutil.copy2(bash, work / "bin" / "bash")
    stdlib = work / "lib" / f"python{version}"
    _copy_stdlib(interpreter.stdlib, stdlib)
    # Where the interpreter's own site module looks (a plugin's kernel runs with site).
    site = work / interpreter.site
    for distribution in distributions:
        for relative, source in distribution_files(distribution.name):
            _copy(source, site / relative)
    for file in source_files(project.source_dirs):
        _copy(file.path, site / file.relative)
    # The bundle is read-only where it runs: bytecode is made here or never.
    compiled = compileall.compile_dir(
        site, quiet=2, ddir=f"{BUNDLE_MOUNT}/{interpreter.site}", workers=1
    ) and compileall.compile_dir(
        stdlib, quiet=2, ddir=f"{BUNDLE_MOUNT}/lib/python{version}", workers=1
    )
    if not compiled:
        raise BundleError("byte-compiling the bundle failed (a syntax error in a copied file?)")
    loader, dropped = _copy_libraries(work, stdlib, site)
    manifest = Manifest(
        key=key,
        python="libexec/python3",
        argv0=_takes_argv0(work / "lib" / loader),
        loader=f"lib/{loader}",
        bash="bin/bash",
        python_version=version,
        site=interpreter.site,
        distributions=[f"{d.name}=={d.version}" for d in distributions],
        dropped=dropped,
        requirements=list(requirements),
    )
    launcher = work / manifest.launcher
    launcher.write_text(launcher_script(manifest), encoding="utf-8")
    launcher.chmod(0o755)
    _make_readable(work)
    (work / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)


def _copy_stdlib(source: Path, target: Path) -> None:
    for current, dirs, names in os.walk(source):
        here = Path(current)
        relative = here.relative_to(source)
        dirs[:] = [d for d in dirs if keeps_stdlib_file((relative / d / "x").as_posix())]
        kept = [n for n in names if keeps_stdlib_file((relative / n).as_posix())]
        if kept:
            (target / relative).mkdir(parents=True, exist_ok=True)
        for name in kept:
            # copy2 keeps mtimes, so the copied bytecode stays valid for the copied source.
            shutil.copy2(here / name, target / relative / name)


def _copy_libraries(work: Path, stdlib: Path, site: Path) -> tuple[str, list[str]]:
    """Copy every library the ELF files of the bundle need into ``lib/``.

    Returns the loader's file name and the extension modules dropped because a
    library they need is not on this host (Tk's, say).
    """
    interpreter = work / "libexec" / "python3"
    extensions = sorted([*stdlib.glob("lib-dynload/*.so"), *site.rglob("*.so")])
    needs = resolve([interpreter, *extensions])
    wanted: dict[str, str] = {}
    loader: str | None = None
    dropped: list[str] = []
    for file, needed in needs.items():
        missing = [n.name for n in needed if n.path is None]
        if missing and Path(file) == interpreter:
            raise BundleError(f"{interpreter} needs {', '.join(missing)}, which is not found")
        if missing:
            logger.info("bundle: dropping %s (needs %s)", file, ", ".join(missing))
            dropped.append(Path(file).relative_to(work).as_posix())
            Path(file).unlink()
            continue
        for library in needed:
            assert library.path is not None
            if Path(library.path).is_relative_to(work):
                continue  # shipped inside a wheel, found through its RUNPATH ($ORIGIN)
            wanted.setdefault(library.name, library.path)
            if library.loader:
                loader = library.name
    if loader is None:
        raise BundleError(f"ldd named no dynamic loader for {interpreter}")
    libc = next((path for name, path in wanted.items() if name.startswith("libc.so")), None)
    if libc is not None:
        modules = [Path(libc).parent / name for name in _DLOPENED_BY_LIBC]
        present = [module for module in modules if module.exists()]
        for module, needed in resolve(present).items():
            if any(library.path is None for library in needed):
                logger.info("bundle: leaving out %s (a library it needs is missing)", module)
                continue
            wanted.setdefault(Path(module).name, module)
            for library in needed:
                assert library.path is not None
                wanted.setdefault(library.name, library.path)
    for name, path in sorted(wanted.items()):
        shutil.copy2(path, work / "lib" / name)  # follows symlinks: the real file
    return loader, sorted(dropped)


def _takes_argv0(loader: Path) -> bool:
    """Whether the dynamic loader has ``--argv0`` (glibc 2.33 and later)."""
    try:
        done = subprocess.run(
            [str(loader), "--help"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return "--argv0" in done.stdout


def _make_readable(work: Path) -> None:
    # The sandbox user runs bash from the bundle and the server imports from it
    # after it acts as that user: everything readable, directories searchable.
    work.chmod(0o755)
    for current, dirs, names in os.walk(work):
        for name in dirs:
            (Path(current) / name).chmod(0o755)
        for name in names:
            path = Path(current) / name
            mode = path.lstat().st_mode
            executable = mode & stat.S_IXUSR
            path.chmod(0o755 if executable else 0o644)
