"""The auto-restart budget (a pure core: clock readings in, decisions out) and its note."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from openhands_rt import SandboxConfig
from openhands_rt.docker.restart import RESTART_LIMIT, RESTART_WINDOW, RestartBudget, restart_note


def test_the_budget_allows_limit_restarts_per_window() -> None:
    budget = RestartBudget(limit=3, window=60.0)
    for now in (0.0, 1.0, 2.0):
        assert budget.allows(now)
        budget.spend(now)
    assert not budget.allows(3.0)
    assert not budget.allows(60.0)  # the first one is exactly a window ago: still counts
    assert budget.allows(60.5)
    budget.spend(60.5)
    assert not budget.allows(61.0)  # 1.0, 2.0 and 60.5 are within the window
    assert budget.allows(61.5)


def test_the_defaults_and_the_note_for_an_exhausted_budget() -> None:
    budget = RestartBudget()
    assert (budget.limit, budget.window) == (RESTART_LIMIT, RESTART_WINDOW)
    assert budget.exhausted_note() == (
        f"not restarted: it died {RESTART_LIMIT} times within {RESTART_WINDOW:.0f} s"
    )


class BudgetMachine(RuleBasedStateMachine):
    """The budget against its definition: a restart is allowed iff fewer than
    ``limit`` restarts happened in the last ``window`` seconds (``now - t <= window``)."""

    def __init__(self) -> None:
        super().__init__()
        self.limit = 3
        self.window = 10.0
        self.budget = RestartBudget(self.limit, self.window)
        self.now = 0.0
        self.spent: list[float] = []

    def recent(self) -> int:
        return sum(1 for t in self.spent if self.now - t <= self.window)

    @rule(step=st.floats(min_value=0.0, max_value=15.0, allow_nan=False))
    def time_passes(self, step: float) -> None:
        self.now += step

    @precondition(lambda self: self.budget.allows(self.now))
    @rule()
    def restart(self) -> None:
        self.budget.spend(self.now)
        self.spent.append(self.now)

    @invariant()
    def allows_exactly_when_under_the_limit(self) -> None:
        assert self.budget.allows(self.now) == (self.recent() < self.limit)


TestBudgetMachine = BudgetMachine.TestCase


@pytest.mark.parametrize(
    ("config", "lost", "kept"),
    [
        (
            SandboxConfig(),
            "its processes and shell state are gone",
            "the container's files are kept",
        ),
        (SandboxConfig(oci_runtime="runsc"), "and /tmp are gone", "files are kept"),
        (
            SandboxConfig(read_only_root=True),
            "the tmpfs mounts (/tmp, the home directory, /workspace) are gone",
            "the root filesystem is read-only",
        ),
        (
            SandboxConfig(read_only_root=True, workspace_dir="/srv/ws"),
            "the tmpfs mounts (/tmp, the home directory) are gone",
            "read-only and the workspace is mounted",
        ),
    ],
)
def test_the_note_says_what_a_restart_lost_and_kept(
    config: SandboxConfig, lost: str, kept: str
) -> None:
    note = restart_note(config, "openhands-runtime-x")
    assert note.startswith("openhands-runtime-x was started again: ")
    assert lost in note
    assert note.endswith(kept) or kept in note
