"""An agent that lives on the event stream: observations arriving through its subscription drive it.

The agent never calls ``runtime.run()``. It subscribes to the stream, appends
actions to it, and reacts to whatever the stream delivers: runtime status
events, streamed ``CmdOutputChunk``s and the observation that answers each of
its actions (the one whose ``cause`` is that action's id). The runtime is just
another subscriber that executes the actions it sees.

The game: the sandbox picks a secret number from 1 to 100; the agent writes a
small judge script, then guesses by bisection, reading each verdict ("higher",
"lower", "correct") from the observation of its last guess. At the end it reads
the secret file to check itself and prints a summary of what it saw.

Run:
    uv run python examples/agent_subscriber.py           # in a Docker sandbox
    uv run python examples/agent_subscriber.py --local   # in a local server process (no isolation)

The Docker sandbox is built from the bootstrapped base image
(``openhands-rt base-image bootstrap``); the runtime image is built on first use.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from events import (
    Action,
    CmdOutputChunk,
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    Event,
    EventSource,
    EventStream,
    FileReadAction,
    FileReadObservation,
    FileWriteAction,
    FileWriteObservation,
    Observation,
    RuntimeStatus,
    RuntimeStatusObservation,
)
from openhands_rt import DockerRuntime, LocalRuntime, SandboxConfig, SandboxError
from openhands_rt.image import DEFAULT_BASE_IMAGE
from openhands_rt.runtime import EventStreamRuntime

LOWEST, HIGHEST = 1, 100
# Bisection over 1..100 needs at most 7 guesses; anything beyond means a bug.
MAX_GUESSES = 7

JUDGE_SCRIPT = """\
guess=$1
secret=$(cat secret.txt)
if [ "$guess" -lt "$secret" ]; then echo higher
elif [ "$guess" -gt "$secret" ]; then echo lower
else echo correct
fi
"""


@dataclass
class Summary:
    secret: int
    guesses: list[int]
    seen: Counter[str] = field(default_factory=Counter)
    streamed_chunks: int = 0


class GuessingAgent:
    """A scripted agent whose every step is a reaction to an event it was delivered."""

    def __init__(self, stream: EventStream, *, secret: int | None = None) -> None:
        self.stream = stream
        self.secret = secret  # None: the sandbox picks it
        self.low, self.high = LOWEST, HIGHEST
        self.guesses: list[int] = []
        self.seen: Counter[str] = Counter()
        self.streamed_chunks = 0
        self.finished: asyncio.Future[Summary] = asyncio.get_running_loop().create_future()
        self._started = False
        # The action whose observation the agent waits for, and what it does with it.
        self._waiting_for: int | None = None
        self._then: Callable[[Observation], None] | None = None

    # -- the subscription callback: the only way anything reaches the agent

    async def on_event(self, event: Event) -> None:
        self.seen[type(event).__name__] += 1
        print(describe(event), flush=True)
        if self.finished.done():
            return
        if isinstance(event, RuntimeStatusObservation):
            if event.status == RuntimeStatus.READY and not self._started:
                self._started = True
                self.pick_secret()
            elif event.status == RuntimeStatus.ERROR:
                self.fail(f"the sandbox reported an error: {event.message}")
        elif isinstance(event, CmdOutputChunk):
            if event.cause == self._waiting_for:
                self.streamed_chunks += 1
        elif isinstance(event, Observation) and event.cause == self._waiting_for:
            then, self._then, self._waiting_for = self._then, None, None
            assert then is not None
            try:
                then(event)
            except Exception as exc:  # a confused agent stops instead of hanging the example
                self.fail(f"{type(exc).__name__}: {exc}")

    # -- acting: append to the stream, remember what to do with the answer

    def act(self, action: Action, then: Callable[[Observation], None]) -> None:
        stored = self.stream.append(action, source=EventSource.AGENT)
        self._waiting_for = stored.id
        self._then = then

    def fail(self, reason: str) -> None:
        if not self.finished.done():
            self.finished.set_exception(RuntimeError(reason))

    # -- the script, one step per observation

    def pick_secret(self) -> None:
        value = str(self.secret) if self.secret is not None else "$(( RANDOM % 100 + 1 ))"
        self.act(CmdRunAction(f"echo {value} > secret.txt"), self.write_judge)

    def write_judge(self, obs: Observation) -> None:
        expect_success(obs)
        self.act(FileWriteAction("judge.sh", JUDGE_SCRIPT), self.think)

    def think(self, obs: Observation) -> None:
        if not isinstance(obs, FileWriteObservation):
            raise TypeError(f"writing judge.sh failed: {obs}")
        # A slow command: its output arrives as CmdOutputChunk events before the observation.
        self.act(
            CmdRunAction("for i in 1 2 3; do echo thinking $i; sleep 0.2; done"),
            lambda obs: self.guess(),
        )

    def guess(self) -> None:
        if self.low > self.high or len(self.guesses) >= MAX_GUESSES:
            raise RuntimeError(f"no number left to guess after {self.guesses}")
        guess = (self.low + self.high) // 2
        self.guesses.append(guess)
        self.act(CmdRunAction(f"bash judge.sh {guess}"), self.judged)

    def judged(self, obs: Observation) -> None:
        verdict = expect_success(obs).strip()
        guess = self.guesses[-1]
        if verdict == "higher":
            self.low = guess + 1
        elif verdict == "lower":
            self.high = guess - 1
        elif verdict == "correct":
            self.act(FileReadAction("secret.txt"), self.check)
            return
        else:
            raise ValueError(f"the judge said {verdict!r}")
        self.guess()

    def check(self, obs: Observation) -> None:
        if not isinstance(obs, FileReadObservation):
            raise TypeError(f"reading secret.txt failed: {obs}")
        secret = int(obs.content.strip())
        if secret != self.guesses[-1]:
            raise ValueError(f"the judge said {self.guesses[-1]} but the secret is {secret}")
        self.finished.set_result(
            Summary(secret, list(self.guesses), streamed_chunks=self.streamed_chunks)
        )


def expect_success(obs: Observation) -> str:
    if not isinstance(obs, CmdOutputObservation) or obs.exit_code != 0:
        raise RuntimeError(f"command failed: {obs}")
    return obs.content


def describe(event: Event) -> str:
    head = f"#{event.id:<3} {event.source or '-':<11} "
    match event:
        case CmdRunAction(command=command):
            return head + f"$ {command}"
        case CmdOutputChunk(cause=cause, data=data):
            return head + f"  (chunk of #{cause}) {data!r}"
        case CmdOutputObservation(exit_code=exit_code, content=content):
            return head + f"  -> exit {exit_code}: {content!r}"
        case FileWriteAction(path=path, content=content):
            return head + f"write {path} ({len(content)} chars)"
        case FileReadAction(path=path):
            return head + f"read {path}"
        case FileReadObservation(path=path) | FileWriteObservation(path=path):
            return head + f"  -> {type(event).__name__} {path}"
        case RuntimeStatusObservation(status=status, message=message):
            return head + f"[runtime {status.value}] {message}"
        case ErrorObservation(content=content):
            return head + f"  -> error: {content}"
        case _:  # Event is open (OpenHandsEvent, a plugin's own): its type name is enough
            return head + type(event).__name__


def make_runtime(stream: EventStream, args: argparse.Namespace) -> EventStreamRuntime:
    if args.local:
        return LocalRuntime(stream, SandboxConfig(timeout=30.0))
    config = SandboxConfig(
        base_container_image=args.base_image,
        runtime_container_image=args.runtime_image,
        labels=dict(label.split("=", 1) for label in args.label),
        timeout=30.0,
    )
    return DockerRuntime(stream, config)


async def play(args: argparse.Namespace) -> Summary:
    async with EventStream() as stream:
        agent = GuessingAgent(stream, secret=args.secret)
        # Subscribed before the sandbox starts: the agent sees the runtime come up and
        # begins when it reports "ready".
        stream.subscribe(agent.on_event, subscriber_id="agent")
        started = time.perf_counter()
        async with make_runtime(stream, args):
            try:
                summary = await asyncio.wait_for(agent.finished, args.deadline)
            except asyncio.TimeoutError:
                raise RuntimeError(f"no result within {args.deadline} s") from None
        summary.seen = agent.seen
        print(f"-- done in {time.perf_counter() - started:.2f} s (sandbox start included)")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--local", action="store_true", help="LocalRuntime instead of Docker")
    parser.add_argument("--base-image", default=DEFAULT_BASE_IMAGE)
    parser.add_argument("--runtime-image", help="use this runtime image as is (no build)")
    parser.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="container label"
    )
    parser.add_argument("--secret", type=int, choices=range(LOWEST, HIGHEST + 1), metavar="N")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds for the game")
    args = parser.parse_args(argv)
    try:
        summary = asyncio.run(play(args))
    except (SandboxError, RuntimeError, TypeError, ValueError) as exc:
        print(f"agent failed: {exc}", file=sys.stderr)
        return 1
    seen = ", ".join(f"{name} {count}" for name, count in sorted(summary.seen.items()))
    print(f"summary: the secret was {summary.secret}; found in {len(summary.guesses)} guesses")
    print(f"summary: guesses {summary.guesses}")
    print(f"summary: output chunks streamed before their observations: {summary.streamed_chunks}")
    print(f"summary: events seen through the subscription: {seen}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
