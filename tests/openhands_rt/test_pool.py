"""SandboxPool's arguments (the pool itself is tested against Docker in tests/docker)."""

from __future__ import annotations

import pytest

from openhands_rt import SandboxConfig, SandboxPool, sandboxes
from openhands_rt.sandboxes import LABEL_POOL, LABEL_POOL_WORKSPACE, LABEL_SESSION


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 0}, "size must be >= 1"),
        ({"max_starting": 0}, "max_starting must be >= 1"),
        ({"max_failures": 0}, "max_failures must be >= 1"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SandboxPool(SandboxConfig(), **kwargs)


def test_a_pool_of_kept_alive_sandboxes_is_refused() -> None:
    with pytest.raises(ValueError, match="keep_runtime_alive"):
        SandboxPool(SandboxConfig(keep_runtime_alive=True))


async def test_a_closed_pool_cannot_start_again() -> None:
    pool = SandboxPool(SandboxConfig())
    await pool.aclose()
    assert pool.ready == 0
    with pytest.raises(Exception, match="closed"):
        await pool.start()


def _listed(source: str, destination: str, label: str, session: str) -> dict[str, object]:
    return {
        "Names": [f"/openhands-runtime-{session}"],
        "Labels": {
            LABEL_SESSION: session,
            LABEL_POOL: "abc",
            LABEL_POOL_WORKSPACE: label,
        },
        "Mounts": [{"Type": "bind", "Source": source, "Destination": destination}],
    }


@pytest.mark.parametrize(
    ("source", "destination", "label", "session", "removed"),
    [
        ("/data/ws/pool-abc-3", "/workspace", "/data/ws/pool-abc-3", "pool-abc-3", True),
        # Anything else is left alone: another mount point, a label naming another
        # directory, a directory not named after the sandbox, or after another pool.
        ("/data/ws/pool-abc-3", "/data", "/data/ws/pool-abc-3", "pool-abc-3", False),
        ("/data/ws/pool-abc-3", "/workspace", "/data/ws", "pool-abc-3", False),
        ("/home/me", "/workspace", "/home/me", "pool-abc-3", False),
        ("/data/ws/pool-xyz-3", "/workspace", "/data/ws/pool-xyz-3", "pool-xyz-3", False),
    ],
)
def test_gc_removes_only_the_workspace_a_pool_made(
    source: str, destination: str, label: str, session: str, removed: bool
) -> None:
    info = sandboxes._info(_listed(source, destination, label, session))
    assert (source in info.host_dirs) is removed
