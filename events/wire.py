"""The wire contract between the host and the sandbox's server, in one place.

Both sides import these names; neither spells their values itself (a test
checks that): the HTTP routes and header of the server, the readiness line it
prints, the frame limit of the action channel, the plugin entry-point group,
and every ``error_id`` an :class:`~events.ErrorObservation` can carry. The
frames themselves are events (:mod:`events.codec`).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "API_KEY_HEADER",
    "CHANNEL_PATH",
    "CLIENT_ID_PARAM",
    "MAX_FRAME_BYTES",
    "PLUGIN_ENTRY_POINT_GROUP",
    "READY_LINE_PREFIX",
    "ErrorId",
]

#: The header carrying the session API key on every request but ``GET /alive``.
API_KEY_HEADER: Final = "X-Session-API-Key"
#: The action channel's WebSocket route, and its query parameter naming the client.
CHANNEL_PATH: Final = "/ws"
CLIENT_ID_PARAM: Final = "client_id"
#: The server's first line on standard output once ``/alive`` answers "ok":
#: ``listening on http://HOST:PORT`` or ``listening on unix:PATH``.
READY_LINE_PREFIX: Final = "listening on "
#: The largest action-channel frame either side accepts, in bytes.
MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
#: Third-party sandbox plugins register under this entry-point group.
PLUGIN_ENTRY_POINT_GROUP: Final = "openhands_rt.plugins"


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
