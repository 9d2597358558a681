"""What the server's entry point does not import: what its start and first action never use.

Each of these was a measurable part of a sandbox's start (benchmarks/start_path.py):
the plugin discovery's importlib.metadata (read only when plugins are asked for),
the transfer package's tar machinery (imported by the upload/download/files
handlers), the Jupyter plugin and the OpenAPI description. The event stream, its
log and its delivery, and the seccomp filter (installed by a root server only) are
left out for the idle server's memory (benchmarks/idle_memory.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

LEFT_OUT = (
    "importlib.metadata",
    "tarfile",
    "container_server.transfer.tar_in",
    "container_server.transfer.tar_out",
    "container_server.transfer.listing",
    "container_server.jupyter",
    "container_server.openapi",
    "container_server.agent_skills",
    "container_server.seccomp",
    "events.stream",
    "events.log",
    "events.delivery",
)

ENTRY_POINT = """
import json, runpy, sys
sys.argv[1:] = ["--help"]
try:
    runpy.run_module("container_server", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)))
"""


def test_the_entry_point_leaves_out_what_the_start_never_uses() -> None:
    result = subprocess.run(
        [sys.executable, "-I", "-c", ENTRY_POINT], capture_output=True, text=True, check=True
    )
    modules = set(json.loads(result.stdout.strip().splitlines()[-1]))
    # It did import the server (the check is not vacuous).
    assert {"container_server.main", "container_server.app", "aiohttp.web"} <= modules
    assert not modules & set(LEFT_OUT), sorted(modules & set(LEFT_OUT))


def test_the_handlers_import_the_transfer_names_they_use() -> None:
    import container_server.transfer as transfer
    from container_server import routes

    # The names the handlers import on first use resolve (PEP 562 in transfer/__init__).
    assert callable(transfer.extract_tar_stream)
    assert callable(transfer.tar_stream)
    assert callable(transfer.list_dir)
    assert routes.TransferError is transfer.TransferError


def test_the_events_package_imports_the_stream_when_asked_for() -> None:
    code = (
        "import json, sys, events; before = 'events.stream' in sys.modules; "
        "from events import EventStream, Subscription; "
        "import events.stream as home; "
        "print(json.dumps([before, EventStream is home.EventStream, "
        "Subscription is home.Subscription, 'EventStream' in dir(events)]))"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == [False, True, True, True]
