"""web_stream.py's page as a person uses it: headless Chromium, real sandboxes (LocalRuntime).

Each test types commands into the page and reads what the page shows. A
MutationObserver installed before the page's own script records every state
the command blocks go through (``window.samples``), so the tests can tell
output that appeared while a command ran from output that came all at once.
Each test keeps a screenshot (listed at the end of the run; see browser.py).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import BrowserContext, Locator, Page, expect

from events import CmdOutputChunk, CmdOutputObservation, CmdRunAction, EventStream

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WAIT_MS = 60_000  # a sandbox start on a loaded 2-core machine can take seconds

# Every change under #terminal appends one snapshot of every command block.
SAMPLER = """
window.samples = [];
new MutationObserver(() => {
  const blocks = [...document.querySelectorAll("#terminal .block")].map((block) => ({
    command: block.querySelector(".command").textContent,
    output: block.querySelector(".output").textContent,
    state: block.dataset.state,
    exit: block.querySelector(".exit").textContent,
  }));
  window.samples.push(blocks);
}).observe(document, { childList: true, subtree: true, characterData: true });
"""


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


web_stream = load_example("web_stream")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[TestServer]:
    app = web_stream.create_app(local=True, log_dir=tmp_path / "logs")
    test_server = TestServer(app)
    async with test_server:
        yield test_server


async def open_sandbox(browser: BrowserContext, server: TestServer, name: str) -> Page:
    page = await browser.new_page()
    await page.add_init_script(SAMPLER)
    await page.goto(str(server.make_url(f"/s/{name}/")))
    await expect(page.locator("#runtime-status")).to_have_text("ready", timeout=WAIT_MS)
    await expect(page.locator("#connection")).to_have_text("live")
    return page


async def type_command(page: Page, command: str) -> Locator:
    """Type ``command`` into the page's input, press Enter; the block it makes on the page."""
    await page.locator("#command").fill(command)
    await page.locator("#command").press("Enter")
    block = page.locator("#terminal .block").filter(has=page.locator(".command", has_text=command))
    await expect(block).to_have_count(1, timeout=WAIT_MS)
    return block


async def samples_of(page: Page, command: str) -> list[dict[str, str]]:
    """Every recorded state of the block of ``command``, in order."""
    samples: list[list[dict[str, str]]] = await page.evaluate("window.samples")
    return [block for sample in samples for block in sample if block["command"] == command]


async def stream_of(server: TestServer, name: str) -> EventStream:
    stream = (await server.app[web_stream.SANDBOXES].get(name)).stream
    assert isinstance(stream, EventStream)
    return stream


async def test_output_appears_line_by_line_then_the_exit_code(
    browser: BrowserContext, server: TestServer, screenshot_path: Path
) -> None:
    page = await open_sandbox(browser, server, "alpha")
    command = "for i in 1 2 3 4 5; do echo line $i; sleep 0.4; done"
    block = await type_command(page, command)
    output = block.locator(".output")
    await expect(block.locator(".exit")).to_have_text("exit 0", timeout=WAIT_MS)
    lines = "".join(f"line {i}\n" for i in range(1, 6))
    await expect(output).to_have_text(lines)
    await expect(block).to_have_attribute("data-state", "done")

    seen = await samples_of(page, command)
    # The output only ever grew, and lines were on the page while the command ran.
    assert all(lines.startswith(s["output"]) for s in seen), seen
    partial = [s for s in seen if "line 1" in s["output"] and "line 5" not in s["output"]]
    assert partial, f"no line was shown before the command ended: {seen}"
    assert all(s["state"] == "running" and s["exit"] == "running…" for s in partial)
    # No exit code was shown before the last line.
    assert all(s["output"] == lines for s in seen if s["state"] == "done")

    failing = await type_command(page, "echo to stderr >&2; (exit 3)")
    await expect(failing.locator(".exit")).to_have_text("exit 3", timeout=WAIT_MS)
    await expect(failing.locator(".exit")).to_have_class("exit failed")
    await expect(failing.locator(".output")).to_have_text("to stderr\n")
    await expect(page.locator("#cwd")).to_have_text(f"{await stream_cwd(server, 'alpha')} $")
    await page.screenshot(path=screenshot_path)


async def stream_cwd(server: TestServer, name: str) -> str:
    """The working directory the last command of sandbox ``name`` reported."""
    events = list((await stream_of(server, name)).iter_events())
    last = next(e for e in reversed(events) if isinstance(e, CmdOutputObservation))
    assert last.metadata.working_dir
    return last.metadata.working_dir


async def test_two_tabs_on_two_sandboxes_at_once(
    browser: BrowserContext, server: TestServer, screenshot_path: Path
) -> None:
    alpha = await open_sandbox(browser, server, "alpha")
    beta = await open_sandbox(browser, server, "beta")
    alpha_command = "echo hi > marker; for i in 1 2 3 4 5 6; do echo alpha $i; sleep 0.4; done"
    beta_command = "for i in 1 2 3 4; do echo beta $i; sleep 0.4; done; cat marker"
    alpha_block = await type_command(alpha, alpha_command)
    beta_block = await type_command(beta, beta_command)

    await expect(alpha_block.locator(".exit")).to_have_text("exit 0", timeout=WAIT_MS)
    await expect(beta_block.locator(".exit")).to_have_text("exit 1", timeout=WAIT_MS)
    await expect(alpha_block.locator(".output")).to_have_text(
        "".join(f"alpha {i}\n" for i in range(1, 7))
    )
    # beta has its own workspace: alpha's marker file is not there.
    await expect(beta_block.locator(".output")).to_have_text(
        "".join(f"beta {i}\n" for i in range(1, 5)) + "cat: marker: No such file or directory\n"
    )
    # Each tab shows its own sandbox only.
    await expect(alpha.locator("#terminal")).not_to_contain_text("beta")
    await expect(beta.locator("#terminal")).not_to_contain_text("alpha")
    await expect(alpha.locator("#sandbox-name")).to_have_text("alpha")
    await expect(beta.locator("#sandbox-name")).to_have_text("beta")

    # The two ran at the same time: beta streamed output before alpha had finished.
    alpha_done = finished_at(await stream_of(server, "alpha"), alpha_command)
    beta_first = first_chunk_at(await stream_of(server, "beta"), beta_command)
    assert beta_first < alpha_done
    await beta.screenshot(path=screenshot_path.with_name(f"{screenshot_path.stem}-beta.png"))
    await alpha.screenshot(path=screenshot_path)


def action_id(stream: EventStream, command: str) -> int:
    return next(
        e.id for e in stream.iter_events() if isinstance(e, CmdRunAction) and e.command == command
    )


def finished_at(stream: EventStream, command: str) -> str:
    cause = action_id(stream, command)
    observation = next(
        e for e in stream.iter_events() if isinstance(e, CmdOutputObservation) and e.cause == cause
    )
    assert observation.timestamp is not None
    return observation.timestamp


def first_chunk_at(stream: EventStream, command: str) -> str:
    cause = action_id(stream, command)
    chunk = next(
        e for e in stream.iter_events() if isinstance(e, CmdOutputChunk) and e.cause == cause
    )
    assert chunk.timestamp is not None
    return chunk.timestamp


async def test_a_reload_mid_command_replays_the_history(
    browser: BrowserContext, tmp_path: Path, screenshot_path: Path
) -> None:
    logs = tmp_path / "logs"
    command = "for i in $(seq 1 12); do echo tick $i; sleep 0.4; done"
    ticks = "".join(f"tick {i}\n" for i in range(1, 13))
    server = TestServer(web_stream.create_app(local=True, log_dir=logs))
    async with server:
        page = await open_sandbox(browser, server, "kept")
        await type_command(page, "echo before")
        block = await type_command(page, command)
        await expect(block.locator(".output")).to_contain_text("tick 2", timeout=WAIT_MS)
        assert await block.get_attribute("data-state") == "running"

        await page.reload()
        block = page.locator("#terminal .block").filter(
            has=page.locator(".command", has_text=command)
        )
        await expect(block.locator(".exit")).to_have_text("exit 0", timeout=WAIT_MS)
        # Once, whole, in order: the history from the log, then the live rest.
        await expect(block).to_have_count(1)
        await expect(block.locator(".output")).to_have_text(ticks)
        seen = await samples_of(page, command)
        assert seen[0]["state"] == "running"
        assert seen[0]["output"] == ""  # the block as the replayed action opened it
        replayed = [s for s in seen if "tick 1" in s["output"] and s["state"] == "running"]
        assert replayed, f"the reloaded page showed no output of the running command: {seen}"
        assert all(ticks.startswith(s["output"]) for s in seen), seen
        earlier = page.locator("#terminal .block").first
        await expect(earlier.locator(".command")).to_have_text("echo before")
        await expect(earlier.locator(".output")).to_have_text("before\n")

    # A new server on the same log directory: the page shows it all again, from the log.
    server = TestServer(web_stream.create_app(local=True, log_dir=logs))
    async with server:
        page = await open_sandbox(browser, server, "kept")
        blocks = page.locator("#terminal .block")
        await expect(blocks.locator(".command")).to_have_text(["echo before", command])
        await expect(blocks.locator(".output")).to_have_text(["before\n", ticks])
        await expect(blocks.locator(".exit")).to_have_text(["exit 0", "exit 0"])
        # The first server's sandbox closing, then this one's starting, in one terminal.
        notes = page.locator("#terminal .note.status")
        await expect(notes.filter(has_text="runtime closed")).to_have_count(1)
        await expect(notes.filter(has_text="runtime ready")).to_have_count(2)
        await page.screenshot(path=screenshot_path)
