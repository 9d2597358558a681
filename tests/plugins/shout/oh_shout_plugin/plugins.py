"""Three tiny plugins: one that works, one that fails to initialize, one that never does.

``shout`` answers an IPython cell with its code in capitals, and leaves a trace
of its initialization in ``~/.shout-ready`` (JSON: the username it was given, the
user it runs as, the working directory, and how many CAs aiohttp's default TLS
client context holds: a plugin may use that client, container_server.tls), so a
test can see it ran, as whom, with what.
"""

from __future__ import annotations

import asyncio
import getpass
import json
from pathlib import Path

from container_server.plugins import ChunkSink, Plugin
from events import (
    Action,
    ErrorObservation,
    IPythonRunCellAction,
    IPythonRunCellObservation,
    Observation,
)

__all__ = ["TRACE_FILE", "BrokenPlugin", "HangingPlugin", "ShoutPlugin"]

#: Relative to the home directory of the user the plugin runs as.
TRACE_FILE = ".shout-ready"


class ShoutPlugin(Plugin):
    name = "shout"
    handles = (IPythonRunCellAction,)

    async def initialize(self, username: str | None, *, working_dir: str = ".") -> None:
        from aiohttp import connector

        trace = {
            "username": username,
            "user": getpass.getuser(),
            "working_dir": working_dir,
            "default_tls_cas": connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"],
        }
        (Path.home() / TRACE_FILE).write_text(json.dumps(trace), encoding="utf-8")

    async def run(
        self, action: Action, *, cwd: str, on_chunk: ChunkSink | None = None
    ) -> Observation:
        if not isinstance(action, IPythonRunCellAction):
            return ErrorObservation(f"shout cannot run {type(action).__name__}")
        return IPythonRunCellObservation(content=action.code.upper(), code=action.code)


class BrokenPlugin(Plugin):
    name = "broken"
    handles = (IPythonRunCellAction,)

    async def initialize(self, username: str | None, *, working_dir: str = ".") -> None:
        raise RuntimeError("the broken plugin always breaks")


class HangingPlugin(Plugin):
    name = "hangs"
    handles = (IPythonRunCellAction,)

    async def initialize(self, username: str | None, *, working_dir: str = ".") -> None:
        # Never set: only the server's per-plugin deadline ends this.
        await asyncio.Event().wait()
