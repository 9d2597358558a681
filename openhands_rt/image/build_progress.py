"""Build progress: a handful of readable events out of raw build output (pure).

A runtime image build prints hundreds of lines (the engine's ``Step N/M``
echoes, pip's ``Collecting …``, apt's ``Setting up …``); a caller wants to know
which step of the build decision runs, which stage it is in, for how long, and
where known how far along. :class:`BuildProgressTracker` turns the raw lines
(``feed``) and the builder's own stage changes (``begin``) into
:class:`BuildProgress` events; it does no I/O and reads no clock: every call is
given ``now`` (seconds, any monotonic origin, the same as ``started``).

How few events: one for the decision, one per stage, at most four counts per
stage with a known total (each quarter, at least 1 s apart) and, for a count
without a total, one after 2 s, 4 s, 8 s, ... since the last; one when pip
starts installing what it collected; one at the end. A scratch build thus
makes about 15 events, whatever its output. The raw lines go to the build log
file (see :mod:`openhands_rt.image.logfile`), never into an event.

Stages, in the order they run (a build has the ones of its variant)::

    inspect image            probe the base (scratch) or version image (versioned)
    install system packages  python3/bash from the image's package manager (scratch, when missing)
    prepare wheels           the host-side wheelhouse (scratch, versioned)
    bootstrap python         user, /workspace, the venv (scratch)
    install dependencies     the wheels into the venv (scratch, versioned)
    copy source              the source tree (and its byte code)
    finish image             entry point, ports, labels
    tag                      the other tags (lock, version)

Engine steps are placed by their instruction (see
:func:`openhands_rt.image.dockerfile.instruction_section`); a stage never goes
back (the scratch build meets the system packages step again, from the cache).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from openhands_rt.image.dockerfile import Section, instruction_section

__all__ = [
    "STAGES",
    "BuildFrom",
    "BuildProgress",
    "BuildProgressTracker",
    "ProgressKind",
    "Stage",
    "stages_of",
]

BuildFrom = Literal["none", "lock", "versioned", "scratch"]
Stage = Literal[
    "inspect image",
    "install system packages",
    "prepare wheels",
    "bootstrap python",
    "install dependencies",
    "copy source",
    "finish image",
    "tag",
]
#: What a :class:`BuildProgress` reports: the build decision, a new stage, a count
#: within the stage, or the end of the build.
ProgressKind = Literal["decision", "stage", "count", "finished"]

STAGES: tuple[Stage, ...] = (
    "inspect image",
    "install system packages",
    "prepare wheels",
    "bootstrap python",
    "install dependencies",
    "copy source",
    "finish image",
    "tag",
)
_PLANS: dict[BuildFrom, tuple[Stage, ...]] = {
    "none": (),
    "lock": ("copy source", "finish image", "tag"),
    "versioned": (
        "inspect image",
        "prepare wheels",
        "install dependencies",
        "copy source",
        "finish image",
        "tag",
    ),
    "scratch": (
        "inspect image",
        "prepare wheels",
        "bootstrap python",
        "install dependencies",
        "copy source",
        "finish image",
        "tag",
    ),
}
_SECTION_STAGES: dict[Section, Stage] = {
    "system": "install system packages",
    "setup": "bootstrap python",
    "deps": "install dependencies",
    "source": "copy source",
    "runtime": "finish image",
    "labels": "finish image",
}
# The decision tree of SPEC section 4, most specific first.
_DECISION_STEPS: dict[BuildFrom, int] = {"none": 1, "lock": 2, "versioned": 3, "scratch": 4}
_REASONS: dict[BuildFrom, str] = {
    "none": "the source-tagged image exists",
    "lock": "the lock-tagged image exists: copying the source only",
    "versioned": "the version-tagged image exists: reinstalling the dependencies",
    "scratch": "no image with the source, lock or version tag",
}
# What each counted stage counts, and the unit shown.
_COUNTED: dict[Stage, tuple[tuple[str, ...], str]] = {
    "install system packages": (("Setting up ",), "packages"),
    "prepare wheels": (("Collecting ", "Processing "), "packages"),
    "install dependencies": (("Processing ",), "wheels"),
}
_STEP = re.compile(r"^Step \d+/\d+ : (?P<instruction>.+)$")
_APT_TOTAL = re.compile(r"^\d+ upgraded, (?P<new>\d+) newly installed")
_FIRST_INTERVAL = 2.0  # seconds before the first count update of a stage without a total
_MIN_GAP = 1.0  # seconds between two count updates of a stage with a total
# pip collects the wheels (the count), then installs them all at once, silently.
_INSTALLING = "Installing collected packages:"


def stages_of(build_from: BuildFrom) -> tuple[Stage, ...]:
    """The stages a build of this variant goes through (without optional ones)."""
    return _PLANS[build_from]


@dataclass(frozen=True)
class BuildProgress:
    """One progress event of a runtime image build.

    ``elapsed`` is in seconds since the build began. ``stage_number`` (1-based)
    and ``stage_count`` place ``stage`` among this build's stages; ``done`` and
    ``total`` count what the stage counts (``unit``), ``total`` being None when
    unknown; ``detail`` says what the stage does now, when known. ``log_file``
    names the raw build log on the ``finished`` event. ``str()`` gives
    :attr:`message`.
    """

    kind: ProgressKind
    build_from: BuildFrom
    image: str
    elapsed: float
    stage: Stage | None = None
    stage_number: int = 0
    stage_count: int = 0
    done: int | None = None
    total: int | None = None
    unit: str = ""
    detail: str = ""
    forced: bool = False
    log_file: str | None = None

    @property
    def decision_step(self) -> int:
        """The step of the four-step build decision (SPEC section 4) this build took."""
        return _DECISION_STEPS[self.build_from]

    @property
    def message(self) -> str:
        """One readable line (no raw tool output)."""
        log = f"; build log: {self.log_file}" if self.log_file else ""
        if self.kind == "decision":
            reason = "forced rebuild" if self.forced else _REASONS[self.build_from]
            head = f"build decision {self.decision_step}/4 ({self.build_from}): {reason}"
            if self.build_from == "none":
                return f"{head}; using {self.image}{log}"
            return f"{head}; building {self.image}"
        if self.kind == "finished":
            return f"built {self.image} from {self.build_from} in {self.elapsed:.1f} s{log}"
        parts = []
        if self.done is not None:
            count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
            parts.append(f"{count} {self.unit}")
        if self.detail:
            parts.append(self.detail)
        count = f" ({', '.join(parts)})" if parts else ""
        return (
            f"{self.build_from} build [{self.stage_number}/{self.stage_count}] "
            f"{self.stage}{count}, {self.elapsed:.1f} s"
        )

    def __str__(self) -> str:
        return self.message


class BuildProgressTracker:
    """Raw build output and stage changes in, :class:`BuildProgress` events out (pure).

    ``started`` is when the build began, on the clock every ``now`` comes from.
    Call :meth:`decide` first, :meth:`finish` last.
    """

    def __init__(
        self, build_from: BuildFrom, image: str, *, started: float, forced: bool = False
    ) -> None:
        self.build_from: BuildFrom = build_from
        self.image = image
        self.forced = forced
        self._started = started
        self._plan = list(_PLANS[build_from])
        self._stage: Stage | None = None
        self._totals: dict[Stage, int] = {}
        self._done = 0
        self._quarter = 0
        self._last_count = started
        self._interval = _FIRST_INTERVAL
        self._detail = ""

    @property
    def stage(self) -> Stage | None:
        """The stage the build is in (None before the first)."""
        return self._stage

    def decide(self, now: float) -> BuildProgress:
        """The decision event (for ``none``, the only event besides none)."""
        return self._event("decision", now)

    def expect(self, stage: Stage, total: int) -> None:
        """``stage`` will count up to ``total`` (e.g. the wheels in the wheelhouse)."""
        self._totals[stage] = total
        if stage == self._stage:
            self._total_changed()

    def begin(self, stage: Stage, now: float) -> list[BuildProgress]:
        """Enter ``stage``; nothing when the build is already there or past it."""
        if stage not in self._plan:
            rank = STAGES.index(stage)
            position = sum(1 for known in self._plan if STAGES.index(known) < rank)
            self._plan.insert(position, stage)
        if self._stage is not None and STAGES.index(stage) <= STAGES.index(self._stage):
            return []
        self._stage = stage
        self._done = 0
        self._quarter = 0
        self._last_count = now
        self._interval = _FIRST_INTERVAL
        self._detail = ""
        return [self._event("stage", now)]

    def feed(self, line: str, now: float) -> list[BuildProgress]:
        """One raw output line (of the engine, pip, the package manager)."""
        step = _STEP.match(line)
        if step is not None:
            section = instruction_section(step.group("instruction"))
            stage = _SECTION_STAGES.get(section) if section is not None else None
            return self.begin(stage, now) if stage is not None else []
        if self._stage is None or self._stage not in _COUNTED:
            return []
        if self._stage == "install system packages":
            apt_total = _APT_TOTAL.match(line)
            if apt_total is not None:
                self.expect(self._stage, int(apt_total.group("new")))
                return []
        if self._stage == "install dependencies" and line.startswith(_INSTALLING):
            self._detail = "installing"
            self._last_count = now
            return [self._event("count", now)]
        prefixes, _ = _COUNTED[self._stage]
        if not line.startswith(prefixes):
            return []
        self._done += 1
        return self._count(now)

    def finish(self, now: float, *, log_file: str | None = None) -> BuildProgress:
        """The last event: the image is built (and named ``log_file`` holds the raw output)."""
        return self._event("finished", now, log_file=log_file)

    def _total_changed(self) -> None:
        total = self._totals.get(self._stage) if self._stage is not None else None
        self._quarter = self._done * 4 // total if total else 0

    def _count(self, now: float) -> list[BuildProgress]:
        assert self._stage is not None
        total = self._totals.get(self._stage)
        if total:
            quarter = min(self._done, total) * 4 // total
            if quarter <= self._quarter or now - self._last_count < _MIN_GAP:
                return []
            self._quarter = quarter
        else:
            if now - self._last_count < self._interval:
                return []
            self._interval *= 2
        self._last_count = now
        return [self._event("count", now)]

    def _event(self, kind: ProgressKind, now: float, log_file: str | None = None) -> BuildProgress:
        stage = self._stage if kind in ("stage", "count") else None
        done: int | None = None
        total: int | None = None
        unit = ""
        if stage is not None and stage in _COUNTED:
            total = self._totals.get(stage)
            # Without a total, "0 packages" says nothing yet.
            if total is not None or self._done > 0:
                done, unit = self._done, _COUNTED[stage][1]
        return BuildProgress(
            kind=kind,
            build_from=self.build_from,
            image=self.image,
            elapsed=max(0.0, now - self._started),
            stage=stage,
            stage_number=self._plan.index(stage) + 1 if stage is not None else 0,
            stage_count=len(self._plan),
            done=done,
            total=total if done is not None else None,
            unit=unit,
            detail=self._detail if stage is not None else "",
            forced=self.forced,
            log_file=log_file,
        )
