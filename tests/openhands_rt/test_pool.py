"""SandboxPool's arguments (the pool itself is tested against Docker in tests/docker)."""

from __future__ import annotations

import pytest

from openhands_rt import SandboxConfig, SandboxPool


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
