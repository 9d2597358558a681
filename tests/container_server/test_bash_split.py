"""Top-level commands of a shell input (pure): what OpenHands refuses to run at once."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from container_server.bash_split import multiple_commands_error, split_commands

ONE_COMMAND = [
    "ls -l",
    "echo a; echo b",
    "make && make test",
    "make &&\n  make test",
    "cat x |\n  grep y",
    "false ||\n  echo recovered",
    "echo one \\\n  two",
    "for i in 1 2 3; do\n  echo $i\ndone",
    "for i in 1 2 3\ndo\n  echo $i\ndone",
    'while read -r line; do\n  echo "$line"\ndone < file.txt',
    "if [ -f x ]; then\n  echo yes\nelse\n  echo no\nfi",
    "if true\nthen\n  echo a\nelif false; then\n  echo b\nfi",
    'case "$1" in\n  a|b) echo ab;;\n  (c) echo c;;\n  *) echo other;;\nesac',
    "greet() {\n  echo hi\n}",
    "function greet {\n  echo hi\n}",
    "function greet() {\n  echo hi\n}",
    "{\n  echo a\n  echo b\n} > out.txt",
    "(\n  cd /tmp\n  ls\n)",
    "cat << EOF\nline 1\n\nline 2\nEOF",
    "cat <<'EOF' > script.py\nimport os\nprint(os.getcwd())\nEOF",
    'cat <<"END"\n$HOME stays\nEND',
    "cat <<-EOF\n\tindented\n\tEOF",
    "python3 - <<PY\nprint(1)\nPY",
    "echo 'a\nb'",
    'echo "a\nb"',
    "echo $'a\\'b\nc'",
    "echo $(\n  date\n)",
    "x=$(printf '%s\\n' a b |\n  wc -l)",
    "echo `\ndate`",
    "echo $((1 +\n 2))",
    "# a comment\nls",
    "ls  # a comment\n\n",
    "\n\n  ls  \n\n",
    "sleep 1 &",
    "[[ a < b ]] && echo less",
    "echo hi 2>&1 | tee log <<< 'input'",
]

SEVERAL = [
    ("ls\npwd", ["ls", "pwd"]),
    ("echo a\n\necho b\n", ["echo a", "echo b"]),
    ("sleep 1 &\necho started", ["sleep 1 &", "echo started"]),
    ("cd /tmp;\nls", ["cd /tmp;", "ls"]),
    (
        "cat <<'EOF' > a.py\nprint(1)\nEOF\npython3 a.py",
        ["cat <<'EOF' > a.py\nprint(1)\nEOF", "python3 a.py"],
    ),
    ("for i in 1; do echo $i; done\necho after", ["for i in 1; do echo $i; done", "echo after"]),
    ("f() { echo hi; }\nf", ["f() { echo hi; }", "f"]),
    ("mkdir -p w\ncd w  # there\nls", ["mkdir -p w", "cd w  # there", "ls"]),
]

UNREADABLE = [
    "echo 'unclosed\nls",
    'echo "unclosed\nls',
    "cat <<EOF\nno end\nls",
    "if true; then\n  echo never closed\nls",
    "echo )\nls",
    "echo $(unclosed\nls",
]


@pytest.mark.parametrize("text", ONE_COMMAND)
def test_one_compound_command_is_one(text: str) -> None:
    # A comment-only line before a command is not part of it.
    expected = text.strip().removeprefix("# a comment\n")
    assert split_commands(text) == [expected]


@pytest.mark.parametrize(("text", "commands"), SEVERAL)
def test_several_top_level_commands(text: str, commands: list[str]) -> None:
    assert split_commands(text) == commands


@pytest.mark.parametrize("text", UNREADABLE)
def test_what_the_scanner_cannot_follow_runs_as_it_is(text: str) -> None:
    assert split_commands(text) == [text.strip()]


def test_blank_and_comment_only_input_holds_no_command() -> None:
    assert split_commands("") == []
    assert split_commands("\n  \n") == []
    assert split_commands("# just a note\n") == []


def test_the_error_text_is_openhands() -> None:
    assert multiple_commands_error(["ls", "pwd"]) == (
        "ERROR: Cannot execute multiple commands at once.\n"
        "Please run each command separately OR chain them into a single command via && or ;\n"
        "Provided commands:\n(1) ls\n(2) pwd"
    )


simple = st.sampled_from(["ls", "echo a b", "pwd", "true", "x=1", "cat f | wc -l", "a && b"])


@given(st.lists(simple, min_size=1, max_size=6))
def test_lines_of_simple_commands_split_back(commands: list[str]) -> None:
    assert split_commands("\n".join(commands)) == commands
    assert split_commands("; ".join(commands)) == ["; ".join(commands)]


@given(st.text(max_size=80))
def test_any_text_gives_commands_from_the_text(text: str) -> None:
    commands = split_commands(text)
    for command in commands:
        assert command
        assert command in text
