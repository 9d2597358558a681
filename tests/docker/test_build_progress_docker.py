"""A sandbox start that builds its image puts a handful of readable statuses on the stream.

The runtime builds into a repository of its own (so the build decision is
``scratch``); its tags are removed at the end, by name, so that an image the
engine's cache shares with other repositories stays.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import pytest
from support import session_id, sh

from events import EventStream, RuntimeStatus, RuntimeStatusObservation
from openhands_rt import DockerRuntime, SandboxConfig

pytestmark = pytest.mark.docker

RAW_OUTPUT = re.compile(
    r"Step \d|--->|Collecting |Processing |Successfully |Running in |Removing intermediate"
    r"|Looking in|Installing collected|pip install|apt-get|useradd|Using cache"
)
STAGE = re.compile(r"^scratch build \[\d/\d\] (?P<stage>[a-z ]+?)(?: \(.*\))?, [0-9.]+ s$")


@pytest.fixture
async def own_repository(docker: aiodocker.Docker, test_run_id: str) -> AsyncIterator[str]:
    repository = f"openhands-rt-test/progress-{test_run_id}"
    try:
        yield repository
    finally:
        for image in await docker.images.list(filters={"reference": [f"{repository}:*"]}):
            for ref in image.get("RepoTags") or []:
                if ref.startswith(f"{repository}:"):
                    await docker.images.delete(ref)


async def test_a_building_start_streams_a_handful_of_readable_statuses(
    base_image: str, test_labels: dict[str, str], own_repository: str, stream: EventStream
) -> None:
    config = SandboxConfig(
        base_container_image=base_image,
        runtime_image_repository=own_repository,
        labels=dict(test_labels),
        no_change_timeout=5.0,
        timeout=60.0,
    )
    async with DockerRuntime(stream, config, session_id=session_id()) as rt:
        assert (await sh(rt, "echo ok")).content.strip() == "ok"
        assert rt.image is not None
        assert rt.image.startswith(f"{own_repository}:")

    statuses = [e for e in stream.iter_events() if isinstance(e, RuntimeStatusObservation)]
    building = [e.message for e in statuses if e.status is RuntimeStatus.BUILDING]
    assert len(statuses) <= 25, [e.message for e in statuses]
    assert building[0] == f"resolving the runtime image for {base_image}"
    assert building[1] == (
        "build decision 4/4 (scratch): no image with the source, lock or version tag;"
        f" building {rt.image}"
    )
    stages = [m.group("stage") for m in map(STAGE.match, building) if m is not None]
    assert list(dict.fromkeys(stages)) == [
        "inspect image",
        "prepare wheels",
        "bootstrap python",
        "install dependencies",
        "copy source",
        "finish image",
        "tag",
    ]
    last = building[-1]
    assert last.startswith(f"built {rt.image} from scratch in ")
    log_file = last.rpartition("; build log: ")[2]
    assert Path(log_file).is_file()
    log = Path(log_file).read_text().splitlines()
    assert any(line.startswith("Step 1/") for line in log)
    raw = [line for line in log if len(line) > 8 and not line.startswith("== ")]
    for message in building:
        assert not RAW_OUTPUT.search(message), message
        assert not any(line in message for line in raw), message
