"""The wire contract between the host and the sandbox's server, in one place.

Both sides import these names; neither spells their values itself (a test
checks that): the HTTP routes and header of the server, the readiness line it
prints, the frame limit of the action channel, the plugin entry-point group,
every ``error_id`` an :class:`~events.ErrorObservation` can carry, the action
types the server runs (and which events a runtime sends it), the keys typed
into the shell by name, and the plugins the server has built in. The frames
themselves are events (:mod:`events.codec`) and control frames
(:mod:`events.control`).
"""

from __future__ import annotations

import re
from typing import Final, TypeGuard

from events.models import (
    CmdRunAction,
    Event,
    EventSource,
    FileEditAction,
    FileReadAction,
    FileWriteAction,
    IPythonRunCellAction,
)

__all__ = [
    "ACTION_TYPES",
    "API_KEY_HEADER",
    "BUILTIN_PLUGINS",
    "CHANNEL_PATH",
    "CLIENT_ID_PARAM",
    "MAX_FRAME_BYTES",
    "PLUGIN_ENTRY_POINT_GROUP",
    "READY_LINE_PREFIX",
    "RUNNABLE_SOURCES",
    "TEST_PLUGIN_KEYWORD",
    "CloseCode",
    "ErrorId",
    "Route",
    "RunnableAction",
    "is_runnable",
    "special_key",
]

#: The header carrying the session API key on every request but ``GET /alive``.
API_KEY_HEADER: Final = "X-Session-API-Key"
#: The action channel's WebSocket route, and its query parameter naming the client.
CHANNEL_PATH: Final = "/ws"


class Route:
    """The server's HTTP routes beside the channel (``GET /openapi.json`` describes them)."""

    #: ``GET``: "ok" once the server serves; the one route that needs no key.
    ALIVE: Final = "/alive"
    SERVER_INFO: Final = "/server_info"
    FILES: Final = "/files"
    DOWNLOAD: Final = "/download"
    UPLOAD: Final = "/upload"
    OPENAPI: Final = "/openapi.json"


CLIENT_ID_PARAM: Final = "client_id"
#: The server's first line on standard output once ``/alive`` answers "ok":
#: ``listening on http://HOST:PORT`` or ``listening on unix:PATH``.
READY_LINE_PREFIX: Final = "listening on "
#: The largest action-channel frame either side accepts, in bytes.
MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
#: Third-party sandbox plugins register under this entry-point group.
PLUGIN_ENTRY_POINT_GROUP: Final = "openhands_rt.plugins"
#: The plugins every server has, by name: ``"module:Class"``, imported only when named,
#: so a plugin's dependencies are needed only in sandboxes that ask for it.
BUILTIN_PLUGINS: Final = {
    "jupyter": "container_server.jupyter:JupyterPlugin",
    "agent_skills": "container_server.agent_skills:AgentSkillsPlugin",
}
#: A plugin distribution whose metadata has this keyword is the test suite's: it works
#: when named but is never offered to a user.
TEST_PLUGIN_KEYWORD: Final = "openhands-rt-test-plugin"

#: The actions the server runs; every other event is the runtime's or the agent's business.
RunnableAction = (
    CmdRunAction | IPythonRunCellAction | FileReadAction | FileWriteAction | FileEditAction
)
ACTION_TYPES: Final = (
    CmdRunAction,
    IPythonRunCellAction,
    FileReadAction,
    FileWriteAction,
    FileEditAction,
)
#: Whose actions a runtime runs: the agent's, the user's, and those of no known source
#: (an OpenHands recording with a source we do not model); the environment's never.
RUNNABLE_SOURCES: Final = (EventSource.AGENT, EventSource.USER, None)


def is_runnable(event: Event) -> TypeGuard[RunnableAction]:
    """Whether a runtime (live, replaying or forking) sends ``event`` to the server."""
    return isinstance(event, ACTION_TYPES) and event.source in RUNNABLE_SOURCES


_SPECIAL_KEY_RE: Final = re.compile(r"C-([a-zA-Z])")


def special_key(command: str) -> bytes | None:
    """The control byte a command names (``C-c``, ``C-d``, ``C-z``: any ``C-<letter>``), else None.

    Such a command is typed into the shell as that key, never run; both sides
    decide it the same way (the host to know it needs no new prompt).
    """
    match = _SPECIAL_KEY_RE.fullmatch(command.strip())
    if match is None:
        return None
    return bytes([ord(match.group(1).lower()) - ord("a") + 1])


class CloseCode:
    """WebSocket close codes of the action channel (RFC 6455, section 7.4.1)."""

    #: The server will send nothing more on this connection (a newer connection of the
    #: same client replaced it, or the server stops); the client reconnects.
    GOING_AWAY: Final = 1001
    #: A frame over :data:`MAX_FRAME_BYTES` arrived; the receiver closes with this code.
    MESSAGE_TOO_BIG: Final = 1009


class ErrorId:
    """Every ``ErrorObservation.error_id`` the server and the runtime send."""

    BAD_FRAME: Final = "bad_frame"
    BAD_REQUEST: Final = "bad_request"
    BASH_SESSION_CLOSED: Final = "bash_session_closed"
    BINARY_FILE: Final = "binary_file"
    CONNECTION_LOST: Final = "connection_lost"
    EDITOR_ERROR: Final = "editor_error"
    FILE_NOT_FOUND: Final = "file_not_found"
    FILE_READ_ERROR: Final = "file_read_error"
    FILE_WRITE_ERROR: Final = "file_write_error"
    #: A fork re-executed the source's actions and an observation differed (openhands_rt.fork).
    FORK_DIVERGED: Final = "fork_diverged"
    INTERNAL_ERROR: Final = "internal_error"
    INVALID_PATH: Final = "invalid_path"
    IS_A_DIRECTORY: Final = "is_a_directory"
    JUPYTER_KERNEL_UNAVAILABLE: Final = "jupyter_kernel_unavailable"
    MISSING_ACTION_ID: Final = "missing_action_id"
    MULTIPLE_COMMANDS: Final = "multiple_commands"
    NOT_AN_ACTION: Final = "not_an_action"
    OBSERVATION_TOO_LARGE: Final = "observation_too_large"
    PERMISSION_DENIED: Final = "permission_denied"
    PLUGIN_UNAVAILABLE: Final = "plugin_unavailable"
    REPLAY_MISMATCH: Final = "replay_mismatch"
