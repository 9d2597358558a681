"""BashCore, the bash session's protocol, without a PTY, a process or an event loop.

Each decision has a synchronous test; a hypothesis state machine then drives
the core with arbitrary interleavings of output fragments (prompt sentinels
cut at any byte), clock readings, new commands, continuations, typed input,
C-c and the shell dying, against a model of what the session must answer.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from container_server.bash_core import (
    SESSION_CLOSED,
    BashCore,
    Outcome,
    Request,
    ShellDied,
)
from container_server.bash_protocol import (
    CONTINUATION_PREFIX,
    NO_RUNNING_COMMAND_INPUT,
    NO_RUNNING_COMMAND_LOGS,
    completed_suffix,
    encode_command,
    encode_input,
    hard_timeout_suffix,
    not_executed_suffix,
    restart_note,
    setup_script,
    soft_timeout_suffix,
)
from container_server.truncate import truncated_lines_prefix
from events import CmdOutputObservation, CmdRunAction, ErrorObservation

NONCE = "0123456789abcdef0123456789abcdef"
SOFT = 2.0  # no_change_timeout, seconds
START = 30.0  # the startup wait's timeout


def prompt(*, exit_code: int = 0, pid: int = -1, seq: int = 1, cwd: str = "/workspace") -> bytes:
    """The bytes bash prints for our PS1 (see bash_protocol.setup_script)."""
    fields = [str(exit_code), str(pid), str(seq), "openhands", "sandbox", "/usr/bin/python", cwd]
    body = "\x1f".join(fields).encode()
    return b"\x1eOHRT" + NONCE.encode() + b"\x1f" + body + b"\x1e" + NONCE.encode() + b"\x1e"


def make_core(**kwargs: object) -> BashCore:
    options: dict[str, object] = {
        "nonce": NONCE,
        "working_dir": "/workspace",
        "no_change_timeout": SOFT,
        "default_timeout": 120.0,
    }
    options.update(kwargs)
    return BashCore(**options)  # type: ignore[arg-type]


def started_core(**kwargs: object) -> BashCore:
    """A core whose shell showed its first prompt (seq 1) at t=0."""
    core = make_core(**kwargs)
    core.shell_started(0.0, timeout=START)
    core.receive_output(prompt(seq=1), 0.0)
    assert core.outcome(0.0) is Outcome.COMPLETED
    assert core.startup_finished(Outcome.COMPLETED) is None
    return core


def begin(core: BashCore, action: CmdRunAction, now: float, note: str = "") -> bytes:
    step = core.begin(Request.of(action), now, note=note)
    assert isinstance(step, bytes), step
    return step


def finish(core: BashCore, outcome: Outcome) -> CmdOutputObservation:
    result = core.finish(outcome)
    assert isinstance(result, CmdOutputObservation), result
    return result


# --------------------------------------------------------------------------- the shell starts


def test_startup_sends_the_setup_script_and_waits_for_the_first_prompt() -> None:
    core = make_core()
    assert core.shell_started(5.0, timeout=START) == encode_command(setup_script(NONCE))
    assert core.is_running
    assert core.next_deadline() == 5.0 + START
    assert core.receive_output(b"bash: some warning\n", 6.0) == ["bash: some warning\n"]
    assert core.outcome(6.0) is None
    core.receive_output(prompt(seq=1, cwd="/home/u"), 7.0)
    assert core.outcome(7.0) is Outcome.COMPLETED
    assert core.startup_finished(Outcome.COMPLETED) is None
    assert not core.is_running
    assert not core.waiting
    assert core.cwd == "/home/u"


def test_startup_without_a_prompt_fails_with_what_bash_printed() -> None:
    core = make_core()
    core.shell_started(0.0, timeout=START)
    core.receive_output(b"bash: cannot set terminal process group\n", 1.0)
    assert core.outcome(START - 0.001) is None
    assert core.outcome(START) is Outcome.HARD_TIMEOUT  # no soft timeout while starting
    assert core.startup_finished(Outcome.HARD_TIMEOUT) == "bash: cannot set terminal process group"
    assert not core.is_running


def test_a_new_shell_counts_prompts_afresh() -> None:
    core = started_core()
    begin(core, CmdRunAction("exit 3"), 1.0)
    core.shell_exited(3)
    died = core.finish(Outcome.EXITED)
    assert isinstance(died, ShellDied)
    core.forget_command()
    core.shell_started(2.0, timeout=START)
    assert core.exited_status is None
    core.receive_output(prompt(seq=1, cwd="/tmp"), 2.5)  # seq 1 again: not a repeated prompt
    assert core.outcome(2.5) is Outcome.COMPLETED
    assert not core.has_data_to_send
    assert core.startup_finished(Outcome.COMPLETED) is None
    assert core.restart_note(3) == restart_note(3, "/tmp")


# --------------------------------------------------------------------------- commands


def test_a_command_completes_at_its_prompt() -> None:
    core = started_core()
    action = CmdRunAction("echo hi", cwd="/elsewhere")
    assert begin(core, action, 10.0) == encode_command("echo hi", cwd="/elsewhere")
    assert core.is_running
    assert core.receive_output(b"hi\n", 10.5) == ["hi\n"]
    assert core.outcome(10.5) is None
    core.receive_output(prompt(exit_code=0, pid=77, seq=2, cwd="/workspace"), 10.6)
    assert not core.is_running
    assert core.outcome(10.6) is Outcome.COMPLETED
    obs = finish(core, Outcome.COMPLETED)
    assert obs.content == "hi"
    assert obs.exit_code == 0
    assert obs.metadata.pid == 77
    assert obs.metadata.prefix == ""
    assert obs.metadata.suffix == completed_suffix(0)
    assert obs.metadata.username == "openhands"
    assert obs.metadata.hostname == "sandbox"
    assert obs.metadata.py_interpreter_path == "/usr/bin/python"
    assert obs.command == "echo hi"
    assert not core.waiting


def test_no_completion_before_the_whole_prompt_whatever_the_cut() -> None:
    tail = b"out" + prompt(exit_code=4, seq=2)
    for cut in range(1, len(tail)):
        core = started_core()
        begin(core, CmdRunAction("x"), 0.0)
        core.receive_output(tail[:cut], 0.1)
        assert core.outcome(0.1) is None, cut
        assert core.is_running
        core.receive_output(tail[cut:], 0.2)
        assert core.outcome(0.2) is Outcome.COMPLETED
        obs = finish(core, Outcome.COMPLETED)
        assert (obs.content, obs.exit_code) == ("out", 4)


def test_output_while_no_command_runs_is_dropped() -> None:
    core = started_core()
    assert core.receive_output(b"[1]+  Done  sleep 1\n", 3.0) == []
    begin(core, CmdRunAction("true"), 4.0)
    core.receive_output(prompt(seq=2), 4.1)
    assert finish(core, Outcome.COMPLETED).content == ""


def test_the_soft_timeout_counts_from_the_last_output() -> None:
    core = started_core()
    begin(core, CmdRunAction("slow"), 100.0)
    assert core.next_deadline() == 100.0 + SOFT
    assert core.outcome(100.0 + SOFT - 0.01) is None
    core.receive_output(b"tick\n", 101.0)
    assert core.next_deadline() == 101.0 + SOFT
    assert core.outcome(100.0 + SOFT) is None
    assert core.outcome(101.0 + SOFT) is Outcome.SOFT_TIMEOUT
    obs = finish(core, Outcome.SOFT_TIMEOUT)
    assert (obs.content, obs.exit_code) == ("tick", -1)
    assert obs.metadata.suffix == soft_timeout_suffix(SOFT)
    assert core.is_running  # the process keeps running


def test_the_hard_timeout_counts_from_the_start() -> None:
    core = started_core()
    begin(core, CmdRunAction("busy", blocking=True, timeout=5), 10.0)
    assert core.write_deadline() == 15.0
    core.receive_output(b"x" * 10, 14.9)
    assert core.next_deadline() == 15.0
    assert core.outcome(14.99) is None
    assert core.outcome(15.0) is Outcome.HARD_TIMEOUT
    obs = finish(core, Outcome.HARD_TIMEOUT)
    assert obs.metadata.suffix == hard_timeout_suffix(5)
    assert "after 5.0 seconds" in obs.metadata.suffix


def test_the_earlier_of_soft_and_hard_is_the_next_deadline() -> None:
    core = started_core()
    begin(core, CmdRunAction("x", timeout=1), 0.0)
    assert core.next_deadline() == 1.0
    assert core.outcome(1.0) is Outcome.HARD_TIMEOUT  # hard wins when both passed
    finish(core, Outcome.HARD_TIMEOUT)


@pytest.mark.parametrize("timeout", [0, None])
def test_no_hard_timeout(timeout: float | None) -> None:
    core = started_core(default_timeout=None if timeout is None else 60.0)
    begin(core, CmdRunAction("x", blocking=True, timeout=timeout), 0.0)
    assert core.write_deadline() == math.inf
    assert core.next_deadline() == math.inf
    assert core.outcome(1e9) is None


def test_default_timeout_applies_when_the_action_has_none() -> None:
    core = started_core(default_timeout=7.0)
    begin(core, CmdRunAction("x", blocking=True), 1.0)
    assert core.next_deadline() == 8.0


# --------------------------------------------------------------------------- continuations


def timed_out(core: BashCore, command: str = "sleep 100", now: float = 0.0) -> None:
    begin(core, CmdRunAction(command), now)
    core.receive_output(b"first\n", now)
    finish(core, Outcome.SOFT_TIMEOUT)


def test_empty_command_reads_more_output() -> None:
    core = started_core()
    timed_out(core)
    assert begin(core, CmdRunAction(""), 5.0) == b""
    core.receive_output(b"second\n", 5.5)
    core.receive_output(prompt(seq=2), 6.0)
    obs = finish(core, core.outcome(6.0) or Outcome.EXITED)
    assert obs.content == "second"  # only what is new since the last observation
    assert obs.metadata.prefix == CONTINUATION_PREFIX
    assert obs.metadata.suffix == completed_suffix(0)


def test_input_is_typed_into_the_running_command() -> None:
    core = started_core()
    timed_out(core, "read name")
    assert begin(core, CmdRunAction("  John ", is_input=True), 5.0) == encode_input("John")
    assert core.next_deadline() == 5.0 + SOFT
    obs = finish(core, Outcome.SOFT_TIMEOUT)
    assert obs.metadata.prefix == CONTINUATION_PREFIX
    assert obs.metadata.suffix == soft_timeout_suffix(SOFT)


@pytest.mark.parametrize("is_input", [True, False])
def test_control_c_sends_the_key_and_names_it(is_input: bool) -> None:
    core = started_core()
    timed_out(core)
    assert begin(core, CmdRunAction("C-c", is_input=is_input), 5.0) == b"\x03"
    core.receive_output(prompt(exit_code=130, seq=2), 5.1)
    obs = finish(core, Outcome.COMPLETED)
    assert obs.exit_code == 130
    assert obs.metadata.suffix == completed_suffix(130, "C-c")
    assert "CTRL+C was sent" in obs.metadata.suffix


@pytest.mark.parametrize(
    "follow_up", [CmdRunAction(""), CmdRunAction("C-c"), CmdRunAction("text", is_input=True)]
)
def test_completion_between_observations_is_reported_without_writing(
    follow_up: CmdRunAction,
) -> None:
    core = started_core()
    timed_out(core)
    core.receive_output(b"late\n" + prompt(seq=2), 3.0)  # while nobody waits
    assert not core.is_running
    assert begin(core, follow_up, 4.0) == b""
    assert core.outcome(4.0) is Outcome.COMPLETED
    obs = finish(core, Outcome.COMPLETED)
    assert obs.content == "late"
    assert obs.metadata.prefix == CONTINUATION_PREFIX
    assert obs.metadata.suffix == completed_suffix(0)  # no key was sent
    nothing = core.begin(Request.of(CmdRunAction("")), 5.0)
    assert isinstance(nothing, CmdOutputObservation)
    assert nothing.content == NO_RUNNING_COMMAND_LOGS


def test_nothing_running() -> None:
    core = started_core()
    for action, text in [
        (CmdRunAction(""), NO_RUNNING_COMMAND_LOGS),
        (CmdRunAction("y", is_input=True), NO_RUNNING_COMMAND_INPUT),
        (CmdRunAction("C-c", is_input=True), NO_RUNNING_COMMAND_INPUT),
    ]:
        obs = core.begin(Request.of(action), 1.0, note="NOTE")
        assert isinstance(obs, CmdOutputObservation)
        assert (obs.content, obs.exit_code, obs.metadata.suffix) == (text, -1, "NOTE")
        assert not core.waiting


# --------------------------------------------------------------------------- refusals


def test_several_commands_are_refused_unless_allowed() -> None:
    core = started_core()
    refused = core.check(CmdRunAction("ls\npwd"), busy=False)
    assert isinstance(refused, ErrorObservation)
    assert refused.error_id == "multiple_commands"
    allowed = started_core(allow_multiple_commands=True).check(CmdRunAction("ls\npwd"), busy=False)
    assert isinstance(allowed, Request)
    assert allowed.is_new_command
    # Input typed into a program is not split.
    assert isinstance(core.check(CmdRunAction("a\nb", is_input=True), busy=False), Request)


@pytest.mark.parametrize("busy", [True, False])
def test_a_new_command_while_one_runs_is_not_sent(busy: bool) -> None:
    core = started_core()
    timed_out(core)
    core.receive_output(b"more\n", 1.0)
    refused = core.check(CmdRunAction(" echo second "), busy=busy)
    assert isinstance(refused, CmdOutputObservation)
    assert refused.exit_code == -1
    assert refused.metadata.prefix == CONTINUATION_PREFIX
    assert refused.metadata.suffix == not_executed_suffix("echo second")
    # A waiting action owns the output; else this observation takes it.
    assert refused.content == ("" if busy else "more")
    begin(core, CmdRunAction(""), 2.0)
    assert finish(core, Outcome.SOFT_TIMEOUT).content == ("more" if busy else "")


def test_refusal_inside_begin_when_a_command_started_meanwhile() -> None:
    core = started_core()
    timed_out(core)
    refused = core.begin(Request.of(CmdRunAction("echo other")), 1.0)
    assert isinstance(refused, CmdOutputObservation)
    assert refused.content == ""  # busy: the running command's output stays
    assert not core.waiting


# --------------------------------------------------------------------------- the repeated prompt


def test_a_repeated_prompt_is_poked_not_taken_as_completion() -> None:
    core = started_core()
    begin(core, CmdRunAction('echo "unclosed'), 0.0)
    core.receive_output(prompt(seq=1), 0.1)  # the previous prompt again, unexpanded
    assert core.outcome(0.1) is None
    assert core.data_to_send() == b"\n"
    assert not core.has_data_to_send
    core.receive_output(b"bash: unexpected EOF\n" + prompt(exit_code=2, seq=2), 0.2)
    obs = finish(core, Outcome.COMPLETED)
    assert (obs.content, obs.exit_code) == ("bash: unexpected EOF", 2)


def test_a_repeated_prompt_is_poked_once() -> None:
    core = started_core()
    begin(core, CmdRunAction("x"), 0.0)
    core.receive_output(prompt(seq=1), 0.1)
    core.receive_output(prompt(seq=1), 0.2)
    assert core.data_to_send() == b"\n"
    assert core.outcome(0.2) is Outcome.COMPLETED


def test_a_failed_poke_ends_the_command_at_the_repeated_prompt() -> None:
    core = started_core()
    begin(core, CmdRunAction("x"), 0.0)
    core.receive_output(prompt(seq=1, exit_code=0), 0.1)
    assert core.has_data_to_send
    core.send_failed()
    assert core.outcome(0.1) is Outcome.COMPLETED


# --------------------------------------------------------------------------- the shell dies


def test_the_shell_dying_under_a_waited_command() -> None:
    core = started_core()
    begin(core, CmdRunAction("kill -9 $$"), 0.0)
    core.receive_output(b"before\nunfinished", 0.1)
    assert core.shell_exited(137) == []
    assert core.outcome(0.2) is Outcome.EXITED
    died = core.finish(Outcome.EXITED)
    assert died == ShellDied(CmdRunAction("kill -9 $$"), "before\nunfinished", "", 137, None)
    obs = core.died_observation(died, "NOTE")
    assert (obs.content, obs.exit_code) == ("before\nunfinished", 137)
    assert obs.metadata.suffix == completed_suffix(137) + "NOTE"


def test_the_shell_exit_releases_held_back_output() -> None:
    core = started_core()
    begin(core, CmdRunAction("x"), 0.0)
    assert core.receive_output(b"end\x1eOH", 0.1) == ["end"]  # maybe a prompt's start
    assert core.shell_exited(1) == ["OH"]


def test_the_shell_died_under_a_timed_out_command() -> None:
    core = started_core()
    timed_out(core)
    core.receive_output(b"last words\n", 1.0)
    core.shell_exited(137)
    assert core.died_continuation(Request.of(CmdRunAction("echo new"))) is None
    died = core.died_continuation(Request.of(CmdRunAction("")))
    assert died is not None
    assert (died.content, died.prefix, died.exit_status) == ("last words", CONTINUATION_PREFIX, 137)


def test_the_shell_died_while_idle() -> None:
    core = started_core()
    core.shell_exited(137)
    assert core.died_continuation(Request.of(CmdRunAction(""))) is None
    assert core.exited_status == 137


def test_closing_ends_the_wait() -> None:
    core = started_core()
    begin(core, CmdRunAction("sleep 9", blocking=True), 0.0)
    core.close()
    assert core.closed
    assert core.outcome(0.0) is Outcome.EXITED
    assert core.unavailable(SESSION_CLOSED).error_id == "bash_session_closed"


def test_a_flood_keeps_the_last_lines_and_says_so() -> None:
    core = started_core(max_output_chars=100)
    begin(core, CmdRunAction("seq 1 20000"), 0.0)
    core.receive_output("".join(f"{i}\n" for i in range(1, 20001)).encode(), 0.1)
    core.receive_output(prompt(seq=2), 0.1)
    obs = finish(core, Outcome.COMPLETED)
    assert obs.metadata.prefix == truncated_lines_prefix(10_000)
    assert obs.content.endswith("19999\n20000")


# --------------------------------------------------------------------------- the state machine

OUTPUT = st.text(alphabet="ab \n", max_size=12)


class CoreMachine(RuleBasedStateMachine):
    """A simulated shell and a model of the answers, against BashCore."""

    @initialize()
    def start(self) -> None:
        self.core = make_core(default_timeout=None)
        self.now = 0.0
        self.restart()

    def restart(self) -> None:
        self.core.shell_started(self.now, timeout=START)
        self.core.receive_output(prompt(seq=1), self.now)
        assert self.core.outcome(self.now) is Outcome.COMPLETED
        assert self.core.startup_finished(Outcome.COMPLETED) is None
        self.seq = 1
        self.command = 0  # commands started
        self.completions: dict[int, int] = {}
        self.running = False  # the model's: a command's prompt has not been fed
        self.pending_output = b""  # what the simulated shell will print, then its prompt
        self.pending_prompt = b""
        self.prompt_started = False
        self.exit_code = 0
        self.stream: list[str] = []  # output text since the last observation took it
        self.printed: list[str] = []  # everything the running command printed
        self.streamed: list[str] = []  # everything the core streamed for it
        self.wait: tuple[float, float | None, float | None] | None = None  # start, soft, hard
        self.last_activity = self.now
        self.key_sent = False
        self.observed = False
        self.unreported = False  # it completed after the last observation

    # -- the simulated shell prints

    @precondition(lambda self: self.pending_output or self.pending_prompt)
    @rule(data=st.data())
    def shell_prints(self, data: st.DataObject) -> None:
        pending = self.pending_output + self.pending_prompt
        size = data.draw(st.integers(1, len(pending)))
        chunk = pending[:size]
        out = min(size, len(self.pending_output))
        self.printed.append(self.pending_output[:out].decode())
        self.pending_output = self.pending_output[out:]
        self.pending_prompt = self.pending_prompt[size - out :]
        self.prompt_started = self.prompt_started or size > out
        texts = self.core.receive_output(chunk, self.now)
        self.last_activity = self.now
        self.stream += texts
        self.streamed += texts
        if self.prompt_started and not self.pending_prompt:
            self.running = False
            self.unreported = True

    @precondition(lambda self: not self.running)
    @rule(text=OUTPUT)
    def background_job_prints(self, text: str) -> None:
        assert self.core.receive_output(text.encode(), self.now) == []
        self.last_activity = self.now

    # -- the clock

    @rule(seconds=st.sampled_from([0.0, 0.25, 1.0, SOFT - 0.25, SOFT, 3.0, 7.5]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @precondition(lambda self: self.wait is not None)
    @rule()
    def clock_reaches_the_next_deadline(self) -> None:
        deadline = self.core.next_deadline()
        if deadline != math.inf:
            self.now = max(self.now, deadline)

    @precondition(lambda self: self.wait is not None)
    @rule()
    def tick(self) -> None:
        expected = self.expected_outcome()
        assert self.core.outcome(self.now) is expected
        if expected is None:
            return
        obs = finish(self.core, expected)
        assert obs.content == "".join(self.stream).rstrip()
        assert obs.metadata.prefix == (CONTINUATION_PREFIX if self.observed else "")
        self.stream = []
        self.wait = None
        if expected is Outcome.COMPLETED:
            self.completions[self.command] = self.completions.get(self.command, 0) + 1
            key = "C-c" if self.key_sent else None
            assert obs.exit_code == self.exit_code
            assert obs.metadata.suffix == completed_suffix(self.exit_code, key)
            self.unreported = self.observed = False
        else:
            assert obs.exit_code == -1
            self.observed = True

    # -- the agent acts

    @precondition(lambda self: self.wait is None)
    @rule(output=OUTPUT, exit_code=st.integers(0, 3), blocking=st.booleans(),
          timeout=st.sampled_from([None, 0, 1.0, 5.5]))  # fmt: skip
    def new_command(
        self, output: str, exit_code: int, blocking: bool, timeout: float | None
    ) -> None:
        action = CmdRunAction(f"run {self.command + 1}", blocking=blocking, timeout=timeout)
        checked = self.core.check(action, busy=False)
        if self.running:
            assert isinstance(checked, CmdOutputObservation)
            assert checked.metadata.suffix == not_executed_suffix(action.command)
            assert checked.content == "".join(self.stream).rstrip()
            self.stream = []
            self.observed = True
            return
        assert isinstance(checked, Request)
        assert begin(self.core, action, self.now) == encode_command(action.command)
        self.command += 1
        self.seq += 1
        self.running = True
        self.pending_output, self.pending_prompt = (
            output.encode(),
            prompt(exit_code=exit_code, seq=self.seq),
        )
        self.prompt_started = False
        self.exit_code = exit_code
        self.stream, self.printed, self.streamed = [], [], []
        self.wait = (self.now, None if blocking else SOFT, timeout or None)
        self.last_activity = self.now
        self.key_sent = self.observed = self.unreported = False

    @precondition(lambda self: self.wait is None)
    @rule(kind=st.sampled_from(["", "input", "C-c"]), blocking=st.booleans())
    def continuation(self, kind: str, blocking: bool) -> None:
        command = "typed" if kind == "input" else kind
        action = CmdRunAction(command, is_input=kind == "input", blocking=blocking, timeout=5.5)
        checked = self.core.check(action, busy=False)
        assert isinstance(checked, Request)
        step = self.core.begin(checked, self.now)
        if not self.running and not self.unreported:
            assert isinstance(step, CmdOutputObservation)
            assert step.content in (NO_RUNNING_COMMAND_LOGS, NO_RUNNING_COMMAND_INPUT)
            return
        assert isinstance(step, bytes)
        if not self.running:
            assert step == b""  # it completed meanwhile: nothing is typed into bash
        elif kind == "C-c":
            assert step == b"\x03"
            if not self.prompt_started:
                # The simulated command dies of the interrupt before printing the rest.
                self.pending_output = b""
                self.pending_prompt = prompt(exit_code=130, seq=self.seq)
                self.exit_code = 130
        elif kind == "input":
            assert step == encode_input("typed")
        else:
            assert step == b""
        self.key_sent = kind == "C-c" and self.running
        self.wait = (self.now, None if blocking else SOFT, 5.5)
        self.last_activity = self.now

    # Not with half a prompt printed (its bytes would be output), nor with a completion
    # that a waiting action has yet to collect (tick covers that).
    @precondition(
        lambda self: (
            (not self.prompt_started or not self.pending_prompt)
            and not (self.wait is not None and self.unreported)
        )
    )
    @rule()
    def shell_dies(self) -> None:
        assert self.core.shell_exited(137) == []  # nothing was held back
        if self.wait is not None:
            assert self.core.outcome(self.now) is Outcome.EXITED
            died = self.core.finish(Outcome.EXITED)
        else:
            died = self.core.died_continuation(Request.of(CmdRunAction("")))
        if self.running:
            assert isinstance(died, ShellDied)
            assert died.content == "".join(self.stream).rstrip()
            assert died.prefix == (CONTINUATION_PREFIX if self.observed else "")
            assert died.exit_status == 137
        else:
            assert died is None
        self.core.forget_command()
        self.restart()

    def expected_outcome(self) -> Outcome | None:
        assert self.wait is not None
        start, soft, hard = self.wait
        if not self.running and self.unreported:
            return Outcome.COMPLETED
        if hard is not None and self.now >= start + hard:
            return Outcome.HARD_TIMEOUT
        if soft is not None and self.now >= self.last_activity + soft:
            return Outcome.SOFT_TIMEOUT
        return None

    # -- invariants

    @invariant()
    def outcome_at_every_clock_reading(self) -> None:
        if self.wait is not None and self.core.exited_status is None:
            assert self.core.outcome(self.now) is self.expected_outcome()

    @invariant()
    def running_until_the_prompt(self) -> None:
        if self.core.exited_status is None:
            assert self.core.is_running == self.running

    @invariant()
    def at_most_one_completion_per_command(self) -> None:
        assert all(count == 1 for count in self.completions.values())

    @invariant()
    def output_is_streamed_once_and_in_order(self) -> None:
        assert "".join(self.streamed) == "".join(self.printed)

    @invariant()
    def deadline_is_the_earlier_of_soft_and_hard(self) -> None:
        if self.wait is None or self.core.exited_status is not None:
            return
        start, soft, hard = self.wait
        expected = min(
            math.inf if hard is None else start + hard,
            math.inf if soft is None else self.last_activity + soft,
        )
        assert self.core.next_deadline() == expected


CoreMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_core_state_machine = CoreMachine.TestCase


# --------------------------------------------------------------------------- internal commands


def test_an_internal_command_keeps_an_unreported_end_and_its_output_for_the_agent() -> None:
    core = started_core()
    begin(core, CmdRunAction("sleep 3; echo late"), 0.0)
    assert core.outcome(SOFT) is Outcome.SOFT_TIMEOUT
    finish(core, Outcome.SOFT_TIMEOUT)
    core.receive_output(b"late\n" + prompt(exit_code=0, seq=2), 3.0)  # ended; nobody waits
    assert not core.is_running
    assert core.begin_internal("internal", 4.0) == b"internal\n"
    assert core.next_deadline() == math.inf  # bounded by its caller
    core.receive_output(b"noise of the internal command\n" + prompt(exit_code=0, seq=3), 4.1)
    assert core.outcome(4.1) is Outcome.COMPLETED
    assert core.finish_internal(Outcome.COMPLETED) == 0
    assert not core.waiting
    observation = finish_after_begin(core, CmdRunAction(""), 5.0)
    assert observation.content == "late"
    assert observation.exit_code == 0
    assert observation.metadata.prefix == CONTINUATION_PREFIX


def finish_after_begin(core: BashCore, action: CmdRunAction, now: float) -> CmdOutputObservation:
    assert begin(core, action, now) == b""
    assert core.outcome(now) is Outcome.COMPLETED
    return finish(core, Outcome.COMPLETED)


def test_an_internal_command_runs_only_in_an_idle_shell_and_on_one_line() -> None:
    core = started_core()
    with pytest.raises(ValueError, match="one line"):
        core.begin_internal("a\nb", 0.0)
    with pytest.raises(ValueError, match="one line"):
        core.begin_internal("x" * 4000, 0.0)
    begin(core, CmdRunAction("sleep 10"), 0.0)
    with pytest.raises(RuntimeError, match="idle"):
        core.begin_internal("true", 1.0)


def test_an_internal_command_that_does_not_end_leaves_the_shell_busy() -> None:
    core = started_core()
    core.begin_internal("stuck", 0.0)
    assert core.finish_internal(None) is None  # abandoned by its caller
    assert core.is_running
    refused = core.begin(Request.of(CmdRunAction("ls")), 1.0)
    assert isinstance(refused, CmdOutputObservation)
    assert "NOT executed" in refused.metadata.suffix


def test_an_internal_command_the_shell_dies_under_leaves_it_for_a_restart() -> None:
    core = started_core()
    core.begin_internal("exit", 0.0)
    core.shell_exited(0)
    assert core.outcome(0.1) is Outcome.EXITED
    assert core.finish_internal(Outcome.EXITED) is None
    assert not core.is_running
    assert core.exited_status == 0
    assert core.died_continuation(Request.of(CmdRunAction("ls"))) is None  # restart, then run
