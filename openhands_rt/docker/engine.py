"""The aiodocker edge: the engine's refusals as named errors.

aiodocker reports every refusal as one ``DockerError`` carrying the HTTP
status; what a status means is decided here, once, and everywhere else in
``openhands_rt`` catches the names::

    SandboxError                 (openhands_rt.errors)
     └── EngineError             the engine refused a request (``status``, ``message``)
          ├── NotFound           404: no such container, image or path
          ├── Conflict           409: a name in use, a container being removed
          └── EngineUnreachable  no engine answered (aiodocker's 900, a dropped connection)

Use :func:`translated` around aiodocker calls::

    with translated():
        container = await docker.containers.get(name)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
from aiodocker.exceptions import DockerError

from openhands_rt.errors import SandboxError

__all__ = [
    "Conflict",
    "EngineError",
    "EngineUnreachable",
    "NotFound",
    "from_docker_error",
    "translated",
]

#: aiodocker's status for "cannot connect to the engine" (no HTTP answer at all).
_UNREACHABLE_STATUS = 900
_NOT_FOUND_STATUS = 404
_CONFLICT_STATUS = 409


class EngineError(SandboxError):
    """The Docker engine refused a request.

    ``message`` is the engine's own text; ``status`` its HTTP status (0 when
    the refusal came inside a streamed answer, 900 when no engine answered).
    """

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class NotFound(EngineError):
    """No such container, image or path in a container (HTTP 404)."""


class Conflict(EngineError):
    """The request conflicts with the engine's state (HTTP 409): a name already
    in use, a container that is being removed, a removal already under way."""


class EngineUnreachable(EngineError):
    """No engine answered: it is not running, or the connection dropped."""


def from_docker_error(exc: DockerError) -> EngineError:
    """The named error for aiodocker's ``exc`` (the caller raises it ``from exc``)."""
    kind: type[EngineError]
    if exc.status == _NOT_FOUND_STATUS:
        kind = NotFound
    elif exc.status == _CONFLICT_STATUS:
        kind = Conflict
    elif exc.status == _UNREACHABLE_STATUS:
        kind = EngineUnreachable
    else:
        kind = EngineError
    return kind(str(exc.message), status=exc.status)


@contextmanager
def translated() -> Iterator[None]:
    """Raise aiodocker's errors in the block as :class:`EngineError` subclasses.

    A dropped or refused connection (``aiohttp.ClientError``) becomes
    :class:`EngineUnreachable`. Other errors pass unchanged.
    """
    try:
        yield
    except DockerError as exc:
        raise from_docker_error(exc) from exc
    except aiohttp.ClientError as exc:
        raise EngineUnreachable(str(exc) or type(exc).__name__) from exc
