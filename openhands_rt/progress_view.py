"""How the command line shows a runtime image build: a rich progress display.

- :class:`BuildProgressView` (``openhands-rt build``) draws the build's
  :class:`~openhands_rt.image.BuildProgress` events: the decision, then one line
  per stage with a spinner (a tick once done), a bar and ``done/total`` where the
  stage counts, and its elapsed time; the last line names the build log.
- :class:`BuildStatusView` (``openhands-rt run`` and others that start a
  sandbox) follows an :class:`~events.EventStream`'s ``building``
  :class:`~events.RuntimeStatusObservation`\\ s (the same events, as text) on one
  transient spinner line, gone once the sandbox starts.

Neither shows raw build output: that is in the build log file.
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from events import Event, EventStream, RuntimeStatus, RuntimeStatusObservation, Subscription
from openhands_rt.image import BuildProgress

__all__ = ["BuildProgressView", "BuildStatusView"]


class BuildProgressView:
    """Draws :class:`BuildProgress` events on ``console`` (:meth:`update` is the callback)."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._progress = Progress(
            SpinnerColumn(finished_text="[green]✓[/green]"),
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            TextColumn("{task.fields[count]}"),
            TimeElapsedColumn(),
            console=console,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task: TaskID | None = None
        self._last_message: str | None = None
        self._started = False  # a build that builds nothing draws no stages

    def __enter__(self) -> BuildProgressView:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._started:
            self._progress.stop()
        # Below the stages, where the eye ends: what was built and where its log is.
        if self._last_message is not None:
            self._console.print(self._last_message, markup=False, soft_wrap=True)

    def update(self, event: BuildProgress) -> None:
        """Show ``event`` (a new stage line, a count, or a message above the stages)."""
        match event.kind:
            case "decision":
                self._progress.console.print(event.message, markup=False, soft_wrap=True)
            case "stage":
                if not self._started:
                    self._progress.start()
                    self._started = True
                self._complete()
                description = f"[{event.stage_number}/{event.stage_count}] {event.stage}"
                self._task = self._progress.add_task(
                    description, total=event.total, count=_count(event)
                )
            case "count":
                if self._task is not None:
                    self._progress.update(
                        self._task,
                        total=event.total,
                        completed=event.done or 0,
                        count=_count(event),
                    )
            case "finished":
                self._complete()
                self._last_message = event.message

    def _complete(self) -> None:
        if self._task is None:
            return
        task = self._progress.tasks[self._task]
        total = task.total if task.total is not None else 1
        self._progress.update(self._task, total=total, completed=total)
        self._progress.stop_task(self._task)
        self._task = None


def _count(event: BuildProgress) -> str:
    if event.done is None:
        return ""
    if event.total is None:
        return f"{event.done} {event.unit}"
    return f"{event.done}/{event.total} {event.unit}"


class BuildStatusView:
    """One transient spinner line with the latest ``building`` status of ``stream``.

    ``async with BuildStatusView(stream, console):`` around the runtime's start:
    it follows the events appended after entering and is gone at the first other
    status that follows a build (the sandbox is starting) or on exit.
    """

    def __init__(self, stream: EventStream, console: Console) -> None:
        self._stream = stream
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task: TaskID | None = None
        self._subscription: Subscription | None = None
        self._done = False

    async def __aenter__(self) -> BuildStatusView:
        self._subscription = self._stream.subscribe(
            self._on_event, subscriber_id=f"cli-build-status-{id(self):x}"
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._subscription is not None:
            self._subscription.unsubscribe()
        self._stop()

    async def _on_event(self, event: Event) -> None:
        if self._done or not isinstance(event, RuntimeStatusObservation):
            return
        if event.status is RuntimeStatus.BUILDING:
            if self._task is None:
                self._progress.start()
                self._task = self._progress.add_task(event.message, total=None)
            else:
                self._progress.update(self._task, description=event.message)
        elif self._task is not None or event.status is not RuntimeStatus.STARTING:
            self._stop()

    def _stop(self) -> None:
        if self._done:
            return
        self._done = True
        if self._task is not None:
            self._progress.stop()
