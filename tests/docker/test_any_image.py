"""Mount mode on images as they are: busybox only, Debian without python, bullseye, bookworm.

Each sandbox is a real :class:`DockerRuntime` with ``runtime_mode="mount"``
under runc and runsc, made from a test image of images.py (no build, nothing
pulled); the server, its interpreter and the session's bash come from the
runtime bundle. One sandbox per test doing several checks.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiodocker.exceptions import DockerError
from images import make_busybox_image, remove_image
from support import config_factory, session_id, sh

from events import (
    EventStream,
    FileEditAction,
    FileEditObservation,
    FileReadAction,
    FileReadObservation,
    FileWriteAction,
    FileWriteObservation,
    IPythonRunCellAction,
    IPythonRunCellObservation,
)
from openhands_rt import DockerRuntime, JupyterRequirement, SandboxConfig
from openhands_rt.bundle import BUNDLE_MOUNT
from openhands_rt.docker_client import open_docker

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

WORKSPACE_OWNER = 4242

# Each test image: its fixture, and a command whose output shows the image is
# what it claims to be (the session's own bash and python are the bundle's,
# never on the image's PATH).
IMAGES = {
    "busybox": (
        "busybox_image",
        "command -v python3 bash ls; readlink /bin/ls",
        "/bin/ls\nbusybox",
    ),
    "debian-no-python": (
        "debian_without_python_image",
        "command -v python3 python3.11 bash; dpkg-query -W | grep -c python",
        "/usr/bin/bash\n0",
    ),
    "bullseye": ("bullseye_image", "ldd --version | head -n 1 | grep -o '[0-9.]*$'", "2.31"),
    "bookworm": ("base_image", "ldd --version | head -n 1 | grep -o '[0-9.]*$'", "2.36"),
}


@pytest.fixture(params=list(IMAGES))
def any_image(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(kind, image name) for each test image, made on first use in the session."""
    kind = str(request.param)
    return kind, str(request.getfixturevalue(IMAGES[kind][0]))


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Path]:
    """A host directory owned by uid and gid :data:`WORKSPACE_OWNER`."""
    path = tmp_path / "workspace"
    path.mkdir()
    (path / "notes.txt").write_text("from the host\n")
    os.chown(path, WORKSPACE_OWNER, WORKSPACE_OWNER)
    os.chown(path / "notes.txt", WORKSPACE_OWNER, WORKSPACE_OWNER)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def mounted(image: str, labels: dict[str, str], **overrides: object) -> SandboxConfig:
    """The suite's mount-mode config (conftest's ``make_config``) on ``image``."""
    make = config_factory("mount", runtime_image="", base_image=image, labels=labels)
    return make(**overrides)


async def test_a_sandbox_on_the_image_as_it_is(
    stream: EventStream,
    any_image: tuple[str, str],
    oci_runtime: str,
    workspace: Path,
    test_labels: dict[str, str],
) -> None:
    kind, image = any_image
    _, probe, expected = IMAGES[kind]
    config = mounted(image, test_labels, oci_runtime=oci_runtime, workspace_dir=str(workspace))
    async with DockerRuntime(stream, config, session_id=session_id()) as rt:
        assert (await sh(rt, probe)).content.strip() == expected

        who = await sh(rt, "echo hi; id -u; id -g; whoami; echo $BASH")
        assert who.exit_code == 0
        owner = str(WORKSPACE_OWNER)
        assert who.content.split() == ["hi", owner, owner, "openhands", f"{BUNDLE_MOUNT}/bin/bash"]

        notes = await rt.run(FileReadAction("/workspace/notes.txt"))
        assert isinstance(notes, FileReadObservation), notes
        assert notes.content == "from the host\n"
        wrote = await rt.run(FileWriteAction("/workspace/made.txt", "one\ntwo\n"))
        assert isinstance(wrote, FileWriteObservation), wrote
        read = await rt.run(FileReadAction("/workspace/made.txt"))
        assert isinstance(read, FileReadObservation), read
        assert read.content == "one\ntwo\n"
        made = workspace / "made.txt"
        assert made.read_text() == "one\ntwo\n"
        assert made.stat().st_uid == WORKSPACE_OWNER
        edit = FileEditAction("/workspace/made.txt", "str_replace", old_str="two", new_str="three")
        edited = await rt.run(edit)
        assert isinstance(edited, FileEditObservation), edited
        assert made.read_text() == "one\nthree\n"

        assert (await sh(rt, "false")).exit_code == 1
        assert (await sh(rt, "(exit 7)")).exit_code == 7
        assert (await sh(rt, "cd /tmp && echo x > here")).exit_code == 0
        pwd = await sh(rt, "pwd; cat here")
        assert pwd.content.split() == ["/tmp", "x"]
        assert pwd.metadata.working_dir == "/tmp"


async def test_read_only_root_without_network(
    stream: EventStream,
    any_image: tuple[str, str],
    oci_runtime: str,
    workspace: Path,
    test_labels: dict[str, str],
) -> None:
    # The busybox image has no /etc/passwd: the host generates one and mounts it.
    _, image = any_image
    config = mounted(
        image,
        test_labels,
        oci_runtime=oci_runtime,
        workspace_dir=str(workspace),
        read_only_root=True,
        network="none",
    )
    async with DockerRuntime(stream, config, session_id=session_id()) as rt:
        owner = str(WORKSPACE_OWNER)
        who = await sh(rt, "id -u; whoami; cd ~ && pwd && echo home > h && cat h")
        assert who.content.split() == [owner, "openhands", "/home/openhands", "home"]
        root = await sh(rt, "touch /etc/x 2>/dev/null || echo refused")
        assert root.content.strip() == "refused"
        places = await sh(rt, "echo t > /tmp/t && echo w > /workspace/w && cat /tmp/t /workspace/w")
        assert places.content.split() == ["t", "w"]
        assert (workspace / "w").read_text() == "w\n"
        interfaces = await sh(rt, "tail -n +3 /proc/net/dev | cut -d: -f1")
        assert interfaces.content.split() == ["lo"]


@pytest.mark.parametrize("read_only_root", [False, True])
async def test_root_has_an_account_on_an_image_without_passwd(
    stream: EventStream,
    busybox_image: str,
    oci_runtime: str,
    test_labels: dict[str, str],
    read_only_root: bool,
) -> None:
    # run_as_root on busybox: the server (or, read-only, the host) gives uid 0 its entry.
    config = mounted(
        busybox_image,
        test_labels,
        oci_runtime=oci_runtime,
        run_as_root=True,
        read_only_root=read_only_root,
    )
    async with DockerRuntime(stream, config, session_id=session_id()) as rt:
        who = await sh(rt, 'id -u; whoami; echo "$HOME"; cd ~ && echo r > r && cat r; ls -d /tmp')
        assert who.content.split() == ["0", "root", "/root", "r", "/tmp"]


async def test_jupyter_on_an_image_without_python(
    stream: EventStream,
    debian_without_python_image: str,
    oci_runtime: str,
    test_labels: dict[str, str],
) -> None:
    config = mounted(
        debian_without_python_image,
        test_labels,
        oci_runtime=oci_runtime,
        plugins=[JupyterRequirement()],
    )
    async with DockerRuntime(stream, config, session_id=session_id()) as rt:
        none = await sh(rt, "command -v python3 || echo none")
        assert none.content.strip() == "none"
        cell = await rt.run(IPythonRunCellAction("import sys\nx = 6 * 7\nprint(x, sys.prefix)"))
        assert isinstance(cell, IPythonRunCellObservation), cell
        assert cell.content.splitlines()[0] == f"42 {BUNDLE_MOUNT}"
        again = await rt.run(IPythonRunCellAction("print(x + 1)"))
        assert isinstance(again, IPythonRunCellObservation), again
        assert again.content.splitlines()[0] == "43"
        # The interpreter the trailer names, and the kernel's sys.executable, run again:
        # from the agent's shell, and from the agent's code (subprocess).
        launcher = f"{BUNDLE_MOUNT}/bin/python3"
        assert f"[Jupyter Python interpreter: {launcher}]" in again.content
        shell = await sh(rt, f"{launcher} -c 'import sys; print(sys.executable, 6 * 7)'")
        assert shell.content.strip() == f"{launcher} 42"
        child = await rt.run(
            IPythonRunCellAction(
                "import subprocess\n"
                "done = subprocess.run([sys.executable, '-c', 'print(6 * 7)'], "
                "capture_output=True, text=True)\n"
                "print(sys.executable, done.stdout.strip(), done.returncode)"
            )
        )
        assert isinstance(child, IPythonRunCellObservation), child
        assert child.content.splitlines()[0] == f"{launcher} 42 0"


async def test_an_image_that_declares_a_volume_leaves_no_volume_behind(
    stream: EventStream, test_labels: dict[str, str], test_run_id: str
) -> None:
    # Any image may declare VOLUMEs (databases do): Docker gives each container an
    # anonymous volume for them, which removing the sandbox must remove too.
    async with open_docker() as docker:
        image = await make_busybox_image(
            docker, tag=f"{test_run_id}-volume", labels=test_labels, changes=["VOLUME /data"]
        )
        try:
            config = mounted(image, test_labels)
            async with DockerRuntime(stream, config, session_id=session_id()) as rt:
                there = await sh(rt, "test -d /data && echo there")
                assert there.content.strip() == "there"
                shown = await (await docker.containers.get(rt.container_name)).show()
                volumes = [m["Name"] for m in shown["Mounts"] if m.get("Type") == "volume"]
                assert len(volumes) == 1, shown["Mounts"]
            with pytest.raises(DockerError) as gone:
                await docker.volumes.get(volumes[0])
            assert gone.value.status == 404
        finally:
            await remove_image(image)


NSSWITCH_COMPAT = (
    "mkdir -p /etc && printf 'passwd: compat\\ngroup: compat\\n' > /etc/nsswitch.conf"
    " && printf 'root:x:0:0:root:/root:/bin/sh\\nopenhands:x:1234:1234::/home/openhands:/bin/sh\\n'"
    " > /etc/passwd && printf 'root:x:0:\\nopenhands:x:1234:\\n' > /etc/group"
)


async def test_the_images_name_service_configuration_is_served_by_the_bundle(
    stream: EventStream, busybox_image: str, test_labels: dict[str, str], test_run_id: str
) -> None:
    # `passwd: compat` (older distributions' default) makes glibc load libnss_compat; the
    # image has none (busybox), and another distribution's would not fit the bundle's libc.
    async with open_docker() as docker:
        maker = await docker.containers.create(
            {
                "Image": busybox_image,
                "Entrypoint": ["/bin/sh", "-c", NSSWITCH_COMPAT],
                "User": "0:0",
                "Labels": dict(test_labels),
                "HostConfig": {"NetworkMode": "none"},
            }
        )
        try:
            await maker.start()
            assert (await maker.wait())["StatusCode"] == 0
            repository, tag = "openhands-rt-test/busybox-nss", f"{test_run_id}-compat"
            await maker.commit(repository=repository, tag=tag)
        finally:
            await maker.delete(force=True)
        image = f"{repository}:{tag}"
        try:
            async with DockerRuntime(
                stream, mounted(image, test_labels), session_id=session_id()
            ) as rt:
                # The server found the image's user (through compat), so added no other.
                who = await sh(rt, "id -u; grep -c '^openhands:' /etc/passwd")
                assert who.content.split() == ["1234", "1"]
        finally:
            await remove_image(image)
