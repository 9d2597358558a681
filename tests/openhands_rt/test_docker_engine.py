"""The aiodocker edge: Docker's statuses become named errors, once, in one place."""

from __future__ import annotations

import aiohttp
import pytest
from aiodocker.exceptions import DockerContainerError, DockerError

from openhands_rt import SandboxError
from openhands_rt.docker import Conflict, EngineError, EngineUnreachable, NotFound
from openhands_rt.docker.engine import from_docker_error, translated


@pytest.mark.parametrize(
    ("status", "kind"),
    [(404, NotFound), (409, Conflict), (900, EngineUnreachable), (500, EngineError)],
)
def test_a_status_becomes_its_named_error(status: int, kind: type[EngineError]) -> None:
    error = from_docker_error(DockerError(status, f"refused with {status}"))
    assert type(error) is kind
    assert error.status == status
    assert error.message == f"refused with {status}" == str(error)
    assert isinstance(error, SandboxError)


def test_a_server_error_is_none_of_the_named_ones() -> None:
    error = from_docker_error(DockerError(500, "boom"))
    assert not isinstance(error, NotFound | Conflict | EngineUnreachable)


@pytest.mark.parametrize(
    ("raised", "kind", "status"),
    [
        (DockerError(404, "no such container: x"), NotFound, 404),
        (DockerError(409, "name in use"), Conflict, 409),
        (DockerError(500, "engine broke"), EngineError, 500),
        (DockerContainerError(404, "gone", "abc123"), NotFound, 404),
        (DockerError(900, "cannot connect"), EngineUnreachable, 900),
    ],
)
def test_translated_raises_the_named_error_from_aiodockers(
    raised: DockerError, kind: type[EngineError], status: int
) -> None:
    with pytest.raises(kind) as info, translated():
        raise raised
    assert type(info.value) is kind
    assert info.value.status == status
    assert info.value.__cause__ is raised


def test_translated_turns_a_dropped_connection_into_unreachable() -> None:
    dropped = aiohttp.ServerDisconnectedError()
    with pytest.raises(EngineUnreachable) as info, translated():
        raise dropped
    assert info.value.__cause__ is dropped
    assert info.value.message


def test_translated_lets_other_errors_pass_unchanged() -> None:
    with pytest.raises(KeyError), translated():
        raise KeyError("not the engine's")
    with pytest.raises(NotFound) as info, translated():
        raise NotFound("already named", status=404)
    assert info.value.__cause__ is None


async def test_translated_works_around_awaits() -> None:
    async def refuse() -> None:
        raise DockerError(409, "removal of container x is already in progress")

    with pytest.raises(Conflict, match="already in progress"), translated():
        await refuse()
