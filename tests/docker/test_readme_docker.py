"""Every ```python block of README.md runs as written, against a real engine.

Each block is saved to a file in an empty directory and run there by this
project's interpreter, as a reader would. A ``print(...)  # TEXT`` line in a
block says what it prints: the output must show those lines, in that order
(``TEXT`` up to a ``(remark)`` or a ``...``).

The blocks use the default base image and the project's default runtime image
repository, as a reader's program does; what they start is found by its owner
label (the child's pid) and removed, and image tags that appear during the run
are removed again when no container uses them.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
from pathlib import Path

import aiodocker
import pytest
from aiodocker.exceptions import DockerError

from openhands_rt.docker_client import open_docker
from openhands_rt.image.build import DEFAULT_REPOSITORY
from openhands_rt.sandboxes import LABEL_OWNER

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
PRINT_SAYS = re.compile(r"^\s*print\(.*\)\s+# (?P<says>.+)$")


def python_blocks() -> list[str]:
    return BLOCK.findall(README.read_text())


def expected_lines(block: str) -> list[str]:
    """What the block's ``print(...)  # TEXT`` comments say it prints, in order."""
    expected = []
    for line in block.splitlines():
        match = PRINT_SAYS.match(line)
        if match:
            says = re.sub(r"\s*\(.*\)$", "", match["says"]).split(" ...")[0]
            expected.append(says)
    return expected


def test_the_readme_shows_a_program_ipython_and_where_timeout_notes_are() -> None:
    blocks = python_blocks()
    assert len(blocks) >= 2, "README.md has fewer python blocks than expected"
    for block in blocks:
        compile(block, "README.md", "exec")  # top-level `async with` is a SyntaxError
        assert "asyncio.run(" in block
        assert expected_lines(block), "say what the block prints: print(...)  # TEXT"
    together = "\n".join(blocks)
    for needed in ("JupyterRequirement()", "IPythonRunCellAction(", "metadata.suffix"):
        assert needed in together, needed
    text = README.read_text()
    assert "`obs.metadata.suffix`" in text
    assert "`obs.content` holds only the command's output" in text


async def runtime_tags(docker: aiodocker.Docker) -> set[str]:
    images = await docker.images.list(filters={"reference": [f"{DEFAULT_REPOSITORY}:*"]})
    return {tag for image in images for tag in image.get("RepoTags") or []}


async def containers_of(docker: aiodocker.Docker, pid: int) -> list[str]:
    """Ids of our containers whose owner label names process ``pid`` of this host."""
    found = []
    for container in await docker.containers.list(all=True, filters={"label": [LABEL_OWNER]}):
        owner = (container._container.get("Labels") or {}).get(LABEL_OWNER, "")
        host, _, rest = owner.partition("/")
        if host == socket.gethostname() and rest.split("/")[1:2] == [str(pid)]:
            found.append(container.id)
    return found


async def remove_new_tags(docker: aiodocker.Docker, tags: set[str]) -> None:
    for tag in sorted(tags):
        in_use = await docker.containers.list(all=True, filters={"ancestor": [tag]})
        if in_use:  # another program's sandbox runs on it: keep it
            continue
        try:
            await docker.images.delete(tag)  # never forced
        except DockerError:
            continue


@pytest.mark.parametrize("index", range(len(python_blocks())))
async def test_readme_python_block_runs(index: int, base_image: str, tmp_path: Path) -> None:
    block = python_blocks()[index]
    script = tmp_path / "snippet.py"
    script.write_text(block)
    async with open_docker() as docker:
        tags_before = await runtime_tags(docker)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            cwd=tmp_path,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")},
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), 800)
            left = await containers_of(docker, process.pid)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            for container_id in await containers_of(docker, process.pid):
                await docker.containers.container(container_id).delete(force=True)
            await remove_new_tags(docker, await runtime_tags(docker) - tags_before)
    assert process.returncode == 0, stderr.decode(errors="replace")
    assert left == [], "the program left its sandbox behind"
    printed = [line for line in stdout.decode().splitlines() if line.strip()]
    expected = expected_lines(block)
    assert len(printed) == len(expected), (printed, expected)
    for line, says in zip(printed, expected, strict=True):
        assert line.startswith(says), (line, says)
