"""The runtime image's Dockerfile: one template, three variants (pure).

Sections, in order, and which variant has them:

============  =======  =========  ====  ==============================================
section       scratch  versioned  lock  what it does
============  =======  =========  ====  ==============================================
header        yes      yes        yes   ``FROM`` the base / version / lock image
system        maybe    no         no    python3/bash from apt-get, apk, ... when missing
setup         yes      no         no    user ``openhands``, ``/workspace``, the venv
deps          yes      yes        no    wheels from the build context into the venv
source        yes      yes        yes   the source tree → ``/openhands_rt/code/<id>``
runtime       yes      no         no    ``WORKDIR``, ``EXPOSE``, ``ENTRYPOINT``, ``CMD``
labels        yes      yes        yes   one ``LABEL``: version, base image, tags, ...
============  =======  =========  ====  ==============================================

The versioned and lock variants inherit the runtime section (and ``USER root``)
from their ``FROM`` image. The system section is also rendered alone
(:func:`render_prelude`) so the builder can learn which Python a package
manager installs before choosing wheels; the scratch build then finds that step
in the engine's build cache.

The source goes to ``/openhands_rt/code/<source id>/`` next to a ``current``
symlink naming it; the venv's ``.pth`` file points at ``current``. A source-only
(lock) rebuild is then a single ``COPY`` — no step has to delete the previous
source (``COPY`` merges into directories), and when the host's Python matches
the image's the byte code is compiled on the host, so no ``RUN`` step either.

Build context layout: ``Dockerfile``, ``wheels/`` (the wheelhouse), ``code/``
(``<source id>/<tree>/...`` and the ``current`` symlink).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from typing import Literal

__all__ = [
    "CODE_DIR",
    "CODE_ROOT",
    "CONTEXT_CODE",
    "CONTEXT_WHEELS",
    "SANDBOX_UID",
    "SANDBOX_USER",
    "SERVER_PORT",
    "VENV_DIR",
    "VENV_PYTHON",
    "WHEELS_DIR",
    "WORKSPACE_DIR",
    "Section",
    "Variant",
    "instruction_section",
    "render_dockerfile",
    "render_prelude",
    "system_packages_step",
]

Variant = Literal["scratch", "versioned", "lock"]
Section = Literal["header", "system", "setup", "deps", "source", "runtime", "labels"]

VENV_DIR = "/openhands_rt/venv"
VENV_PYTHON = f"{VENV_DIR}/bin/python"
CODE_ROOT = "/openhands_rt/code"
#: Where the server's packages are (a symlink to the current source id's directory).
CODE_DIR = f"{CODE_ROOT}/current"
WHEELS_DIR = "/tmp/openhands-rt-wheels"
WORKSPACE_DIR = "/workspace"
#: High, so that the ports agents use (3000, 5000, 8000, 8080) stay free.
SERVER_PORT = 30150
SANDBOX_USER = "openhands"
SANDBOX_UID = 1000

CONTEXT_WHEELS = "wheels"
CONTEXT_CODE = "code"

_CONTINUE = " \\\n    "
# The setup step's first words: how instruction_section knows it.
_SETUP_START = "set -eu;"

_SYSTEM_COMMANDS = {
    "apt-get": (
        "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
        "--no-install-recommends {packages} && rm -rf /var/lib/apt/lists/*"
    ),
    "apk": "apk add --no-cache {packages}",
    "dnf": "dnf install -y {packages} && dnf clean all",
    "microdnf": "microdnf install -y {packages} && microdnf clean all",
    "yum": "yum install -y {packages} && yum clean all",
    "zypper": "zypper --non-interactive install {packages} && zypper clean --all",
}


def _run(lines: Sequence[str]) -> str:
    return "RUN " + _CONTINUE.join(lines)


def system_packages_step(package_manager: str, packages: Sequence[str]) -> str:
    """The ``RUN`` line installing ``packages`` with ``package_manager``.

    Raises ValueError for a package manager this builder does not drive.
    """
    template = _SYSTEM_COMMANDS.get(package_manager)
    if template is None:
        raise ValueError(f"unsupported package manager {package_manager!r}")
    return "RUN " + template.format(packages=" ".join(shlex.quote(p) for p in packages))


def instruction_section(instruction: str) -> Section | None:
    """The template section a rendered instruction belongs to; None for any other (pure).

    ``instruction`` is as the engine echoes a build step (``RUN set -eu; ...``,
    continuation lines folded) or as it stands in the Dockerfile.
    """
    keyword, _, rest = instruction.strip().partition(" ")
    rest = rest.lstrip()
    match keyword.upper():
        case "FROM" | "USER":
            return "header"
        case "WORKDIR" | "EXPOSE" | "ENTRYPOINT" | "CMD":
            return "runtime"
        case "LABEL":
            return "labels"
        case "COPY" if rest.startswith(f"{CONTEXT_WHEELS} "):
            return "deps"
        case "COPY" if rest.startswith(f"{CONTEXT_CODE} "):
            return "source"
        case "RUN" if rest.startswith(_SETUP_START):
            return "setup"
        case "RUN" if rest.startswith(f"{VENV_PYTHON} {WHEELS_DIR}/"):
            return "deps"
        case "RUN" if rest.startswith(f"{VENV_PYTHON} -m compileall "):
            return "source"
        case "RUN" if rest.partition(" ")[0] in _SYSTEM_COMMANDS:
            return "system"
        case _:
            return None


def _header(from_image: str) -> list[str]:
    return [f"FROM {from_image}", "USER root"]


def _setup(python: str) -> str:
    py = shlex.quote(python)
    user = SANDBOX_USER
    return _run(
        [
            _SETUP_START,
            f"if ! id -u {user} >/dev/null 2>&1; then",
            f'  if cut -d: -f3 /etc/passwd | grep -qx {SANDBOX_UID}; then uid_flag="";',
            f'  else uid_flag="-u {SANDBOX_UID}"; fi;',
            "  if command -v useradd >/dev/null 2>&1; then",
            f"    useradd -m -s /bin/bash $uid_flag {user};",
            "  elif command -v adduser >/dev/null 2>&1; then",
            f"    adduser -D -s /bin/bash $uid_flag {user};",
            f'  else echo "openhands-rt: no useradd or adduser to create user {user}" >&2;',
            "    exit 1; fi;",
            "fi;",
            f"mkdir -p {WORKSPACE_DIR};",
            f'chown {user}:"$(id -gn {user})" {WORKSPACE_DIR};',
            f"rm -rf {VENV_DIR}; mkdir -p {VENV_DIR};",
            # Debian's python3 may lack ensurepip (hence --without-pip) or even venv:
            # then lay the venv out by hand, which is all `venv --symlinks` does.
            f"if ! {py} -m venv --without-pip {VENV_DIR} 2>/dev/null; then",
            f"  rm -rf {VENV_DIR}; mkdir -p {VENV_DIR}/bin;",
            f"  ln -s {py} {VENV_DIR}/bin/python; ln -s python {VENV_DIR}/bin/python3;",
            f"  purelib=\"$({py} -c 'import sys; "
            f'print("lib/python%d.%d/site-packages" % sys.version_info[:2])\')";',
            f'  mkdir -p "{VENV_DIR}/$purelib";',
            f"  printf 'home = %s\\ninclude-system-site-packages = false\\nversion = %s\\n'"
            f' "$(dirname {py})"'
            f" \"$({py} -c 'import platform; print(platform.python_version())')\""
            f" > {VENV_DIR}/pyvenv.cfg;",
            "fi;",
            f"site=\"$({VENV_PYTHON} -c 'import sysconfig;"
            f' print(sysconfig.get_path("purelib"))\')";',
            f'echo {CODE_DIR} > "$site/openhands_rt_code.pth"',
        ]
    )


def _deps(pip_wheel: str) -> list[str]:
    pip = f"{WHEELS_DIR}/{pip_wheel}/pip"
    return [
        f"COPY {CONTEXT_WHEELS} {WHEELS_DIR}",
        _run(
            [
                # pip runs from its wheel file: neither the image nor the venv needs pip.
                f"{VENV_PYTHON} {pip} install --no-index --find-links {WHEELS_DIR}",
                "--no-cache-dir --disable-pip-version-check --root-user-action=ignore",
                "--no-warn-script-location --progress-bar off",
                f"-r {WHEELS_DIR}/requirements.txt",
                f"&& rm -rf {WHEELS_DIR}",
            ]
        ),
    ]


def _source(source_id: str, *, compile_in_image: bool) -> list[str]:
    lines = [f"COPY {CONTEXT_CODE} {CODE_ROOT}"]
    if compile_in_image:
        # The server usually runs unprivileged and cannot write __pycache__ there.
        lines.append(f"RUN {VENV_PYTHON} -m compileall -q {CODE_ROOT}/{source_id}")
    return lines


def _runtime() -> list[str]:
    # -I: an isolated interpreter; the working directory (/workspace) is never on its path.
    entrypoint = [VENV_PYTHON, "-I", "-m", "container_server"]
    command = ["--host", "0.0.0.0", "--port", str(SERVER_PORT), "--working-dir", WORKSPACE_DIR]
    return [
        f"WORKDIR {WORKSPACE_DIR}",
        f"EXPOSE {SERVER_PORT}",
        f"ENTRYPOINT {json.dumps(entrypoint)}",
        f"CMD {json.dumps(command)}",
    ]


def _label(labels: Mapping[str, str]) -> list[str]:
    if not labels:
        return []
    # One LABEL instruction: the classic builder makes a step (a container) of each.
    pairs = [f"{key}={json.dumps(value)}" for key, value in sorted(labels.items())]
    return ["LABEL " + _CONTINUE.join(pairs)]


def render_prelude(from_image: str, system_step: str) -> str:
    """The scratch variant's first lines alone: ``FROM`` + the system packages step."""
    return "\n".join([*_header(from_image), system_step]) + "\n"


def render_dockerfile(
    variant: Variant,
    from_image: str,
    *,
    source_id: str,
    compile_in_image: bool = True,
    python: str = "python3",
    system_step: str | None = None,
    pip_wheel: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """The Dockerfile of ``variant`` building on ``from_image``.

    ``source_id`` names the source's directory under ``/openhands_rt/code``;
    ``compile_in_image`` adds a ``compileall`` step (when the build context does
    not carry byte code for the image's Python).
    ``python`` is the interpreter the venv is made from (scratch); ``system_step``
    the optional package-manager step (scratch, see :func:`system_packages_step`);
    ``pip_wheel`` the file name of the pip wheel in the wheelhouse (scratch,
    versioned); ``labels`` the image's labels (one ``LABEL`` instruction, last).
    """
    if variant != "lock" and pip_wheel is None:
        raise ValueError(f"the {variant} variant installs wheels: give pip_wheel")
    if variant != "scratch" and system_step is not None:
        raise ValueError("only the scratch variant installs system packages")
    lines = [f"# openhands-rt runtime image, {variant} variant (generated)"]
    lines += _header(from_image) if variant == "scratch" else [f"FROM {from_image}"]
    if variant == "scratch":
        if system_step is not None:
            lines.append(system_step)
        lines.append(_setup(python))
    if pip_wheel is not None and variant != "lock":
        lines += _deps(pip_wheel)
    lines += _source(source_id, compile_in_image=compile_in_image)
    if variant == "scratch":
        lines += _runtime()
    lines += _label(labels or {})
    return "\n".join(lines) + "\n"
