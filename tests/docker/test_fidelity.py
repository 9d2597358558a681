"""OpenHands fidelity: behaviours an agent trained on OpenHands can tell apart.

Each test runs through ``LocalRuntime`` and through ``DockerRuntime`` (runc):
the same server answers both, and the texts are what OpenHands' runtime
prints (see docs/compat.md for what matches and what differs on purpose). The
``rt`` tests run through ``SwarmRuntime`` too (tests/swarm/test_docker_suite.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support import RUNTIME_MODES, ConfigFactory, RuntimeFactory, config_factory, session_id

from events import (
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    EventStream,
    FileEditAction,
    FileEditObservation,
    IPythonRunCellAction,
    IPythonRunCellObservation,
)
from openhands_rt import (
    DockerRuntime,
    EventStreamRuntime,
    JupyterRequirement,
    LocalRuntime,
    SandboxConfig,
)
from openhands_rt.image import build_runtime_image
from openhands_rt.plugins import AgentSkillsRequirement

pytestmark = pytest.mark.timeout(300)

RUNTIMES = [
    pytest.param("local", id="local"),
    *(pytest.param(mode, id=f"docker-{mode}", marks=pytest.mark.docker) for mode in RUNTIME_MODES),
]


def docker_configs(request: pytest.FixtureRequest, mode: str) -> ConfigFactory:
    """The tests' config factory (conftest's ``make_config``) for runtime mode ``mode``."""
    return config_factory(
        mode,
        runtime_image=request.getfixturevalue("runtime_image"),
        base_image=request.getfixturevalue("base_image"),
        labels=request.getfixturevalue("test_labels"),
    )


@pytest.fixture(params=RUNTIMES)
def runtime_of_each_kind(request: pytest.FixtureRequest, tmp_path: Path) -> RuntimeFactory:
    """``runtime_of_each_kind(stream, **config_overrides)``: a runtime of each kind (the
    Docker image is resolved here, outside the event loop; the class is conftest's
    ``make_runtime``). tests/swarm's conftest gives the Swarm one to the same tests."""
    if request.param == "local":

        def local(stream: EventStream, **overrides: object) -> EventStreamRuntime:
            config = SandboxConfig(
                workspace_dir=str(tmp_path),
                no_change_timeout=5.0,
                **overrides,  # type: ignore[arg-type]
            )
            return LocalRuntime(stream, config, session_id=session_id())

        return local
    make_config = docker_configs(request, request.param)
    make_runtime: RuntimeFactory = request.getfixturevalue("make_runtime")

    def docker(stream: EventStream, **overrides: object) -> EventStreamRuntime:
        return make_runtime(stream, make_config(**overrides), session_id=session_id())

    return docker


@pytest.fixture
async def rt(
    runtime_of_each_kind: RuntimeFactory, stream: EventStream
) -> AsyncIterator[EventStreamRuntime]:
    async with runtime_of_each_kind(stream) as runtime:
        yield runtime


async def cd_workspace(rt: EventStreamRuntime) -> str:
    obs = await rt.run(CmdRunAction("pwd"))
    assert isinstance(obs, CmdOutputObservation)
    return obs.content.strip()


@pytest.mark.parametrize(
    ("command", "fields", "parameter"),
    [
        ("create", {}, "file_text"),
        ("str_replace", {"new_str": "b"}, "old_str"),
        ("insert", {"new_str": "x"}, "insert_line"),
        ("insert", {"insert_line": 1}, "new_str"),
    ],
)
async def test_missing_editor_parameters_get_openhands_texts(
    rt: EventStreamRuntime, command: str, fields: dict[str, object], parameter: str
) -> None:
    workspace = await cd_workspace(rt)
    path = f"{workspace}/f.py"
    if command != "create":
        created = await rt.run(FileEditAction(path, "create", file_text="a\nb\n"))
        assert isinstance(created, FileEditObservation), created
    obs = await rt.run(FileEditAction(path, command, **fields))  # type: ignore[arg-type]
    assert isinstance(obs, ErrorObservation), obs
    assert obs.content == f"ERROR:\nParameter `{parameter}` is required for command: {command}."


async def test_hard_timeout_note_reads_like_openhands(rt: EventStreamRuntime) -> None:
    obs = await rt.run(CmdRunAction("sleep 5", timeout=1, blocking=True))
    assert isinstance(obs, CmdOutputObservation)
    assert obs.exit_code == -1
    assert obs.metadata.suffix.startswith("\n[The command timed out after 1.0 seconds. ")
    await rt.run(CmdRunAction("C-c", is_input=True))


async def test_long_output_keeps_its_last_ten_thousand_lines(rt: EventStreamRuntime) -> None:
    """The end of a long log is what the agent needs: OpenHands keeps the last 10,000 lines."""
    obs = await rt.run(CmdRunAction("seq 1 25000", blocking=True))
    assert isinstance(obs, CmdOutputObservation)
    assert obs.exit_code == 0
    assert obs.metadata.prefix == (
        "[Previous command outputs are truncated. "
        "Showing the last 10000 lines of the output below.]\n"
    )
    # Then the 30,000-character head/tail cut applies to those lines.
    assert obs.content.startswith("15001\n15002\n")
    assert "[... Observation truncated due to length ...]" in obs.content
    assert obs.content.endswith("24999\n25000")
    short = await rt.run(CmdRunAction("seq 1 3"))
    assert isinstance(short, CmdOutputObservation)
    assert (short.content, short.metadata.prefix) == ("1\n2\n3", "")


async def test_several_commands_are_refused_and_one_compound_command_runs(
    rt: EventStreamRuntime,
) -> None:
    refused = await rt.run(CmdRunAction("echo one\necho two"))
    assert isinstance(refused, ErrorObservation)
    assert refused.content.startswith("ERROR: Cannot execute multiple commands at once.\n")
    assert refused.content.endswith("Provided commands:\n(1) echo one\n(2) echo two")
    for command, output in [
        ("echo one && echo two", "one\ntwo"),
        ("for i in 1 2; do\n  echo $i\ndone", "1\n2"),
        ("cat <<'EOF'\na\nb\nEOF", "a\nb"),
        ("f() {\n  echo f\n}; f", "f"),
    ]:
        obs = await rt.run(CmdRunAction(command))
        assert isinstance(obs, CmdOutputObservation), (command, obs)
        assert obs.content == output


async def test_several_commands_run_where_the_sandbox_allows_them(
    runtime_of_each_kind: RuntimeFactory, stream: EventStream
) -> None:
    async with runtime_of_each_kind(stream, allow_multiple_commands=True) as runtime:
        obs = await runtime.run(CmdRunAction("echo one\necho two"))
        assert isinstance(obs, CmdOutputObservation), obs
        assert obs.content == "one\ntwo"


SKILLS = [JupyterRequirement(), AgentSkillsRequirement()]


@pytest.fixture(params=RUNTIMES)
def make_skills_runtime(
    request: pytest.FixtureRequest, tmp_path: Path, test_labels: dict[str, str]
) -> RuntimeFactory:
    """Runtimes with the jupyter and agent_skills plugins (Docker: an image built with them)."""
    if request.param == "local":
        config = SandboxConfig(workspace_dir=str(tmp_path), plugins=list(SKILLS))
        return lambda stream: LocalRuntime(stream, config, session_id=session_id())
    make_config = docker_configs(request, request.param)
    if request.param == "mount":  # the plugins come in the bundle
        docker_config = make_config(plugins=list(SKILLS))
    else:
        base_image: str = request.getfixturevalue("base_image")
        repository: str = request.getfixturevalue("test_repository")
        built = asyncio.run(
            build_runtime_image(
                base_image, repository=repository, labels=test_labels, plugins=SKILLS
            )
        )
        docker_config = make_config(runtime_container_image=built.image, plugins=list(SKILLS))
    return lambda stream: DockerRuntime(stream, docker_config, session_id=session_id())


async def test_agent_skills_file_editor_in_ipython(
    make_skills_runtime: RuntimeFactory, stream: EventStream
) -> None:
    """OpenHands' trajectories call ``print(file_editor(**{...}))`` from IPython cells."""
    async with make_skills_runtime(stream) as runtime:
        workspace = await cd_workspace(runtime)
        path = f"{workspace}/skills.py"
        cells = [
            (
                f"print(file_editor(**{{'command': 'create', 'path': {path!r}, "
                "'file_text': 'a = 1\\nb = 2\\n'}))",
                f"File created successfully at: {path}",
            ),
            (
                f"print(file_editor(**{{'command': 'str_replace', 'path': {path!r}, "
                "'old_str': 'b = 2', 'new_str': 'b = 3'}))",
                f"The file {path} has been edited.",
            ),
            (
                f"print(file_editor(**{{'command': 'create', 'path': {path + '.new'!r}}}))",
                "ERROR:\nParameter `file_text` is required for command: create.",
            ),
        ]
        for code, expected in cells:
            obs = await runtime.run(IPythonRunCellAction(code))
            assert isinstance(obs, IPythonRunCellObservation), obs
            assert obs.content.startswith(expected), (code, obs.content)
        view = await runtime.run(FileEditAction(path, "view"))
        assert isinstance(view, FileEditObservation)
        assert "b = 3" in view.content
