"""Top-level commands of a shell input: OpenHands refuses several in one action.

OpenHands parses a ``CmdRunAction``'s command and, when it holds several
top-level commands separated by newlines, answers with an error instead of
running them (:func:`multiple_commands_error`): agents trained on it expect
that, and chain commands with ``&&`` or ``;`` instead. One compound command —
a loop, an ``if``, a ``case``, a function definition, a ``{ …; }`` or
``( … )`` group, an ``&&``/``||``/``|`` chain continued on the next line, a
line continued with a backslash, a command with a here-document — is one
command, however many lines it spans.

:func:`split_commands` is a small scanner of the shell's syntax, not a full
parser: it follows quotes (``'…'``, ``"…"``, ``$'…'``, backquotes), command
substitutions ``$( … )``, comments, here-documents (``<<``, ``<<-``, quoted
delimiters) and the reserved words that open and close compound commands. What
it cannot follow to the end (an unclosed quote, here-document or group) is
returned whole, as one command, and runs as it is, as OpenHands runs what its
parser cannot read. Pure: no I/O.
"""

from __future__ import annotations

from typing import Final

__all__ = ["multiple_commands_error", "split_commands"]

_OPENERS: Final = {
    "if": "fi",
    "case": "esac",
    "for": "done",
    "while": "done",
    "until": "done",
    "select": "done",
    "{": "}",
}
_CLOSERS: Final = frozenset({"fi", "esac", "done", "}"})
# After these words the next word is again in command position.
_COMMAND_WORDS: Final = frozenset({"then", "do", "else", "elif", "!", "time"})
_WORD_END: Final = frozenset(" \t\n;&|()<>")
# A line ending in one of these continues on the next line.
_CONTINUING: Final = ("&&", "||", "|", "|&")


class _Unreadable(Exception):
    """The scanner cannot follow the input to its end."""


def multiple_commands_error(commands: list[str]) -> str:
    """OpenHands' text for an action holding several commands."""
    listed = "\n".join(f"({i}) {command}" for i, command in enumerate(commands, 1))
    return (
        "ERROR: Cannot execute multiple commands at once.\n"
        "Please run each command separately OR chain them into a single command via && or ;\n"
        f"Provided commands:\n{listed}"
    )


def split_commands(text: str) -> list[str]:
    """The top-level commands of ``text``, each as written (stripped).

    Lines holding only blanks or comments are not commands. Input the scanner
    cannot follow comes back whole: ``[text.strip()]``.
    """
    try:
        spans = _Scanner(text).scan()
    except _Unreadable:
        return [text.strip()] if text.strip() else []
    commands = (text[start:end].strip() for start, end in spans)
    return [command for command in commands if command]


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.stack: list[str] = []  # closers we wait for: "fi", "done", ")", ...
        self.command_position = True
        self.heredocs: list[tuple[str, bool]] = []  # (delimiter, strip tabs) pending
        self.last_operator = ""  # the operator the current line ended with, if any
        self.has_words = False  # the current command has a word (not just comments)

    def scan(self) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        start = 0
        text = self.text
        while self.i < len(text):
            c = text[self.i]
            if c == "\n":
                self.i += 1
                if self.heredocs:
                    self._read_heredocs()
                if not self.stack and self.last_operator not in _CONTINUING:
                    if self.has_words:
                        spans.append((start, self.i))
                    start = self.i
                    self.has_words = False
                self.command_position = True
                continue
            if c in " \t":
                self.i += 1
                continue
            if c == "\\":
                if text.startswith("\\\n", self.i):
                    self.i += 2  # a continued line
                    continue
                self._word()
                continue
            if c == "#":
                end = text.find("\n", self.i)
                self.i = len(text) if end < 0 else end
                continue
            if c in ";&|":
                self._operator()
                continue
            if c == "(":
                self.i += 1
                self.stack.append(")")
                self._mark_word()
                self.command_position = True
                continue
            if c == ")":
                self.i += 1
                if self.stack and self.stack[-1] == ")":
                    self.stack.pop()
                elif not (self.stack and self.stack[-1] == "esac"):
                    raise _Unreadable  # a ")" that closes nothing (case patterns aside)
                self.last_operator = ""
                self.command_position = False
                continue
            if c in "<>":
                self._redirection()
                continue
            self._word()
        if self.stack or self.heredocs:
            raise _Unreadable
        if self.has_words:
            spans.append((start, len(text)))
        return spans

    def _mark_word(self) -> None:
        self.has_words = True
        self.last_operator = ""

    def _operator(self) -> None:
        text = self.text
        for op in (";;&", ";;", ";&", "&&", "||", "|&", ";", "&", "|"):
            if text.startswith(op, self.i):
                self.i += len(op)
                self.last_operator = op
                self.command_position = True
                return
        raise AssertionError("unreachable")  # pragma: no cover

    def _redirection(self) -> None:
        text = self.text
        if text.startswith("<<<", self.i):
            self.i += 3
        elif text.startswith("<<", self.i):
            self.i += 2
            strip = text.startswith("-", self.i)
            if strip:
                self.i += 1
            while self.i < len(text) and text[self.i] in " \t":
                self.i += 1
            delimiter = self._read_word()
            if not delimiter:
                raise _Unreadable
            self.heredocs.append((delimiter, strip))
        else:
            self.i += 1
            while self.i < len(text) and text[self.i] in "<>&|":
                self.i += 1
        self.last_operator = ""
        self.has_words = True

    def _read_heredocs(self) -> None:
        text = self.text
        for delimiter, strip in self.heredocs:
            while True:
                if self.i >= len(text):
                    raise _Unreadable  # no closing delimiter
                end = text.find("\n", self.i)
                line = text[self.i : len(text) if end < 0 else end]
                self.i = len(text) if end < 0 else end + 1
                if (line.lstrip("\t") if strip else line) == delimiter:
                    break
        self.heredocs = []

    def _read_word(self) -> str:
        """One word from here (quotes removed, as a here-document delimiter is read)."""
        text = self.text
        out: list[str] = []
        while self.i < len(text) and text[self.i] not in _WORD_END:
            c = text[self.i]
            if c == "$" and text.startswith("$'", self.i):
                start = self.i
                self.i += 2
                while self.i < len(text) and text[self.i] != "'":
                    self.i += 2 if text[self.i] == "\\" else 1
                if self.i >= len(text):
                    raise _Unreadable
                self.i += 1
                out.append(text[start : self.i])
            elif c == "'":
                end = text.find("'", self.i + 1)
                if end < 0:
                    raise _Unreadable
                out.append(text[self.i + 1 : end])
                self.i = end + 1
            elif c == '"':
                start = self.i + 1
                self._skip_double_quoted()
                out.append(text[start : self.i - 1])
            elif c == "\\" and self.i + 1 < len(text):
                out.append(text[self.i + 1])
                self.i += 2
            elif c == "$" and text.startswith("$(", self.i):
                start = self.i
                self._skip_substitution()
                out.append(text[start : self.i])
            elif c == "`":
                start = self.i
                self._skip_backquoted()
                out.append(text[start : self.i])
            else:
                out.append(c)
                self.i += 1
        return "".join(out)

    def _word(self) -> None:
        at_command = self.command_position
        word = self._read_word()
        self._mark_word()
        self.command_position = False
        text = self.text
        if at_command and word in _OPENERS:
            self.stack.append(_OPENERS[word])
            self.command_position = True
        elif at_command and word in _CLOSERS and self.stack and self.stack[-1] == word:
            self.stack.pop()
        elif at_command and word in _COMMAND_WORDS:
            self.command_position = True
        elif word.endswith("=") or ("=" in word and not word.startswith("=")):
            self.command_position = at_command  # an assignment: the command comes next
        elif at_command and word == "function":
            # "function name [()] { ...; }": the body's group opens in command position.
            while self.i < len(text) and text[self.i] in " \t":
                self.i += 1
            self._read_word()
            self.command_position = True
        if at_command and text.startswith("()", self.i):
            self.i += 2  # "name()": a function definition; its body follows
            self.command_position = True

    def _skip_double_quoted(self) -> None:
        text = self.text
        self.i += 1
        while self.i < len(text):
            c = text[self.i]
            if c == "\\":
                self.i += 2
            elif c == '"':
                self.i += 1
                return
            elif c == "$" and text.startswith("$(", self.i):
                self._skip_substitution()
            elif c == "`":
                self._skip_backquoted()
            else:
                self.i += 1
        raise _Unreadable

    def _skip_backquoted(self) -> None:
        text = self.text
        self.i += 1
        while self.i < len(text):
            c = text[self.i]
            if c == "\\":
                self.i += 2
            elif c == "`":
                self.i += 1
                return
            else:
                self.i += 1
        raise _Unreadable

    def _skip_substitution(self) -> None:
        """From ``$(`` to its matching ``)``, whatever it holds (a nested scan)."""
        text = self.text
        self.i += 2
        depth = 1
        while self.i < len(text):
            c = text[self.i]
            if c == "\\":
                self.i += 2
            elif c == "'":
                end = text.find("'", self.i + 1)
                if end < 0:
                    raise _Unreadable
                self.i = end + 1
            elif c == '"':
                self._skip_double_quoted()
            elif c == "`":
                self._skip_backquoted()
            elif c == "(":
                depth += 1
                self.i += 1
            elif c == ")":
                depth -= 1
                self.i += 1
                if depth == 0:
                    return
            else:
                self.i += 1
        raise _Unreadable
