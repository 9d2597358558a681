"""Conversion between our events and OpenHands' event dicts (its trajectory format).

Modules: :mod:`~events.compat.parse` (dict -> event), :mod:`~events.compat.render`
(event -> dict), :mod:`~events.compat.notes` (the ``_openhands_format`` bookkeeping
that makes the round trip lossless), :mod:`~events.compat.aci` (OpenHands' editor
calls), :mod:`~events.compat.fields` (typed reads that name the field),
:mod:`~events.compat.trajectory` (whole files).

OpenHands writes an event as a dict::

    action       {"id", "timestamp", "source", "message", "action": NAME, "args": {...}, "timeout"}
    observation  {"id", "timestamp", "source", "message", "cause", "observation": NAME,
                  "content": ..., "extras": {...}, "success"}

Mapping (OpenHands name → our event):

=================================  =============================================================
action ``run``                     :class:`CmdRunAction` (top-level ``timeout`` → ``timeout``)
action ``run_ipython``             :class:`IPythonRunCellAction`
action ``read``                    :class:`FileReadAction`; but ``FileEditAction(command="view")``
                                   when ``args.impl_source`` is ``"oh_aci"`` or the call is in
                                   ``args.translated_ipython_code``: OpenHands executes those with
                                   its editor (numbered lines, directory listings), as our editor's
                                   ``view`` does, not as a raw read
action ``write``                   :class:`FileWriteAction`
action ``edit``                    :class:`FileEditAction` (``args.command`` or the legacy
                                   ``translated_ipython_code``); an edit without a command (an
                                   OpenHands LLM-based edit) is not runnable here → OpenHandsEvent
observation ``run``                :class:`CmdOutputObservation` (``extras.metadata``; legacy
                                   ``extras.exit_code``/``command_id`` set ``exit_code``/``pid``)
observation ``run_ipython``        :class:`IPythonRunCellObservation`
observation ``read``/``write``     :class:`FileReadObservation` / :class:`FileWriteObservation`
observation ``edit``               :class:`FileEditObservation` (``extras.diff`` → ``diff``)
observation ``error``              :class:`ErrorObservation`
any other ``action``/``observation`` :class:`OpenHandsEvent` holding the original dict whole
                                   (``message``, ``finish``, ``think``, ``recall``, ``browse``,
                                   ``change_agent_state``, ``agent_state_changed``, ``null``, …)
=================================  =============================================================

A dict with neither an ``action`` nor an ``observation`` key (or both), a non-dict, a type name
that is not a non-empty string, a field of the wrong type, or an editor call in
``translated_ipython_code`` that is not ``print(file_editor(**{<literals>}))`` raises
``ValueError`` naming the culprit. The editor call is parsed with :mod:`ast`, never evaluated:
only the dict literal is read, with :func:`ast.literal_eval`.

``source``: OpenHands uses the same three values as :class:`EventSource` (``agent``, ``user``,
``environment``) and they map one to one. Any other value (or a missing one) leaves ``source``
``None``; the original value is kept (see below). ``id``/``cause`` may be ints or strings of
digits (``"4"``); both load as ints.

Lossless round trip: ``to_openhands_dict(from_openhands_dict(d)) == d`` for every dict this
module accepts, key order included (so a loaded and dumped trajectory is byte-identical when
written the way OpenHands writes it). ``from_openhands_dict`` renders the event it built and
keeps in ``event.extra`` exactly what that rendering misses:

- keys we do not model, under their own names and at their own level: top-level keys
  (``tool_call_metadata``, ``llm_metrics``, ``timeout`` of a file action, …) as
  ``extra[key]``; keys of ``args``/``extras`` as ``extra["args"][key]`` /
  ``extra["extras"][key]`` (and ``extra["extras"]["metadata"][key]``), e.g.
  ``impl_source``, ``confirmation_state``, ``formatted_output_and_error``;
- ``extra["_openhands_format"]``: how the original spelled what we do model, where it differs
  from our rendering: ``changed`` (``[path, fingerprint, original value]``: a string id
  ``"4"``, a ``message`` other than the usual one, ``120.0`` for ``120``, …), ``absent``
  (``[path, fingerprint]``: keys the original lacked, e.g. ``success`` in old logs),
  ``order`` (``[path, keys]``: key order) and ``aci_code`` (the editor call is written in
  ``translated_ipython_code``, regenerated from the fields on output). The fingerprint is a
  hash of our rendering of that key when the event was loaded: after a field is changed
  (e.g. ``msgspec.structs.replace(ev, id=9)``), its note no longer matches and is dropped,
  so the new value is written, never the stale original.

Rendering chooses, per key, what OpenHands itself writes (e.g. ``timeout`` as an int when it
is integral, ``cwd`` only when set, ``success`` for command output) so that the recorded
trajectories need few notes. An :class:`OpenHandsEvent` renders as its ``data``, with
``id``/``timestamp``/``source``/``cause`` updated if the event's fields were changed.

:class:`CmdOutputChunk`, :class:`RuntimeStatusObservation` and :class:`SnapshotObservation`
(runtime facts) have no OpenHands form:
:func:`to_openhands_dict` raises ``ValueError`` for them and
:func:`dump_openhands_trajectory` leaves them out.
"""

from events.compat.notes import FORMAT_KEY
from events.compat.parse import from_openhands_dict
from events.compat.render import to_openhands_dict
from events.compat.trajectory import dump_openhands_trajectory, load_openhands_trajectory

__all__ = [
    "FORMAT_KEY",
    "dump_openhands_trajectory",
    "from_openhands_dict",
    "load_openhands_trajectory",
    "to_openhands_dict",
]
