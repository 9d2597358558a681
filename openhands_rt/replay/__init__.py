"""Replaying recorded event logs: execute, verify (first divergence), serve-recorded.

Where each concept lives:

- :mod:`.recording` — detecting and loading a recording (our durable event log
  or an OpenHands trajectory) and pairing each runnable action with its
  recorded observation;
- :mod:`.execute` — re-running the actions on a runtime (execute and verify
  modes, ``until``; runs of shell commands pipelined, ``max_in_flight``), in a
  sandbox it makes and owns or in one given;
- :mod:`.verify` — the normalisation, the comparison of observations and the
  divergence report;
- :mod:`.workspace` — ``/workspace`` mapped into a local sandbox's directory;
- :mod:`.serve` — serve-recorded: answering an agent from the recording, with
  no sandbox (a pure cursor and the runtime that drives it);
- :mod:`.errors` — the error tree.

Error tree::

    SandboxError
     └── ReplayError                            bad output log, and the root of:
          ├── ReplayInputError (also ValueError)  the file is neither format (or broken)
          └── ReplayMismatchError                 serve-recorded: not the next recorded action
"""

from events.wire import is_runnable
from openhands_rt.replay.errors import ReplayError, ReplayInputError, ReplayMismatchError
from openhands_rt.replay.execute import (
    MAX_IN_FLIGHT,
    ReplayResult,
    StepReport,
    replay,
    replay_file,
    replay_recording,
)
from openhands_rt.replay.recording import (
    RecordedStep,
    Recording,
    RecordingFormat,
    detect_format,
    load_recording,
)
from openhands_rt.replay.serve import (
    REPLAY_MISMATCH_ERROR_ID,
    RecordedRuntime,
    RecordingCursor,
    action_fields,
    same_action,
)
from openhands_rt.replay.verify import (
    Divergence,
    Mismatch,
    compare_observations,
    describe_action,
    normalize_text,
)
from openhands_rt.replay.workspace import WORKSPACE, map_action_paths

__all__ = [
    "MAX_IN_FLIGHT",
    "REPLAY_MISMATCH_ERROR_ID",
    "WORKSPACE",
    "Divergence",
    "Mismatch",
    "RecordedRuntime",
    "RecordedStep",
    "Recording",
    "RecordingCursor",
    "RecordingFormat",
    "ReplayError",
    "ReplayInputError",
    "ReplayMismatchError",
    "ReplayResult",
    "StepReport",
    "action_fields",
    "compare_observations",
    "describe_action",
    "detect_format",
    "is_runnable",
    "load_recording",
    "map_action_paths",
    "normalize_text",
    "replay",
    "replay_file",
    "replay_recording",
    "same_action",
]
