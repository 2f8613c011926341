"""The README's shell examples, as a newcomer meets them: each fenced `bash` block of the
sections they follow, in order, with what the README says about it.

How a block is marked and what it must print (the convention the tests hold it to):

- An HTML comment right before the fence (the last line before it that is not blank) tells
  the test how to run the block; without one it simply runs:
  - `<!-- readme-test: skip (why) -->`: not run; the reason is required (a cluster deploy,
    the full test command itself).
  - `<!-- readme-test: foreground; ready when URL answers -->`: a command that runs until
    Ctrl-C, in a terminal of its own (`iot-telemetry local`): the test starts it, goes on
    once URL answers 2xx, and stops it with Ctrl-C (SIGINT) at the end of the pass or
    before a block marked as below.
  - `<!-- readme-test: stop the foreground run first -->`: the text asks the reader to stop
    the foreground run (Ctrl-C) before this block; the test does so.
- What a block prints: a ```text block right after it, with at most one paragraph between
  them that ends with ":" ("prints the devices:"). Each of its lines must appear in the
  block's output, in that order (other lines may come between); `...` in a line stands for
  any text, and a line that is only `...` just says more follows.
- `curl -i` commands: `# NNN` at the end of the command is the status it must answer (for
  example `# 400`); without it, any 2xx. A `# NNN` on any other command is refused: nothing
  could check it (say it in words, or show it in the block's ```text output).
- Everything a block prints ends with a newline (the next prompt starts on its own line).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"

#: The sections a newcomer follows (issue 23), by heading, `##` or `###`; a `##` section
#: includes its `###` subsections. Their blocks run in the README's order.
SECTIONS = ("Quick start", "Event format", "Query API", "Alert rules", "Rules per device group",
            "Notifications",
            "Local runs", "Dashboard", "Security")

DIRECTIVE = re.compile(r"<!--\s*readme-test:\s*(.*?)\s*-->")
SKIP = re.compile(r"skip \((.+)\)")
FOREGROUND = re.compile(r"foreground; ready when (\S+) answers")
STOP_FOREGROUND = "stop the foreground run first"
STATUS_COMMENT = re.compile(r"#\s*([1-5]\d\d)\b")
CURL_I = re.compile(r"^\s*curl\b.*\s-[A-Za-z]*i[A-Za-z]*\b")


@dataclass
class Block:
    """One fenced bash block of the README."""

    section: str          # its `##` heading
    subsection: str       # its `###` heading, or ""
    index: int            # 1-based, among the bash blocks of its `##` section
    line: int             # of the opening fence in README.md
    code: str
    directive: str = ""
    expected: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        part = f"{self.section} > {self.subsection}" if self.subsection else self.section
        return f"section \"{part}\", bash block {self.index} (README.md line {self.line})"

    @property
    def skip_reason(self) -> str | None:
        m = SKIP.fullmatch(self.directive)
        return m.group(1) if m else None

    @property
    def ready_url(self) -> str | None:
        m = FOREGROUND.fullmatch(self.directive)
        return m.group(1) if m else None

    @property
    def stops_foreground(self) -> bool:
        return self.directive == STOP_FOREGROUND

    def directive_problem(self) -> str | None:
        if not self.directive or self.skip_reason is not None or self.ready_url \
                or self.stops_foreground:
            return None
        return (f"{self.where}: unknown mark <!-- readme-test: {self.directive} -->; known: "
                "`skip (why)`, `foreground; ready when URL answers`, "
                f"`{STOP_FOREGROUND}` (tests/readme/examples.py)")

    def commands(self) -> list[str]:
        """The block's commands, a continued line (`\\`) joined to its first."""
        return self.code.replace("\\\n", " ").splitlines()

    def expected_statuses(self) -> list[tuple[str, str]]:
        """(command, status) of each `curl -i`: its `# NNN`, else "2xx"."""
        out = []
        for command in self.commands():
            if CURL_I.match(command):
                m = STATUS_COMMENT.search(_comment(command))
                out.append((command.strip(), m.group(1) if m else "2xx"))
        return out

    def unchecked_status_comments(self) -> list[str]:
        return [c.strip() for c in self.commands()
                if not CURL_I.match(c) and STATUS_COMMENT.search(_comment(c))]


def _comment(command: str) -> str:
    """The shell comment at the end of a command line, from its `#` (or "")."""
    m = re.search(r"(^|\s)#.*$", command)
    return m.group(0) if m else ""


def parse(text: str) -> list[Block]:
    """Every fenced bash block, with its headings, mark and expected output."""
    blocks: list[Block] = []
    lines = text.splitlines()
    section = subsection = ""
    count: dict[str, int] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section, subsection = line[3:].strip(), ""
        elif line.startswith("### "):
            subsection = line[4:].strip()
        elif line.startswith("```"):
            lang = line[3:].strip()
            end = i + 1
            while end < len(lines) and not lines[end].startswith("```"):
                end += 1
            if lang == "bash":
                before = next((x for x in reversed(lines[:i]) if x.strip()), "")
                m = DIRECTIVE.fullmatch(before.strip())
                count[section] = count.get(section, 0) + 1
                block = Block(section, subsection, count[section], i + 1,
                              "\n".join(lines[i + 1:end]) + "\n", m.group(1) if m else "")
                after = _skip_blank(lines, end + 1)
                prose = after
                while prose < len(lines) and lines[prose].strip() \
                        and not lines[prose].startswith(("```", "#", "<!--")):
                    prose += 1
                if prose > after and lines[prose - 1].rstrip().endswith(":"):
                    after = _skip_blank(lines, prose)  # one paragraph ending in ":"
                if after < len(lines) and lines[after].strip() == "```text":
                    stop = after + 1
                    while stop < len(lines) and not lines[stop].startswith("```"):
                        stop += 1
                    block.expected = [x for x in lines[after + 1:stop] if x.strip()]
                blocks.append(block)
            i = end
        i += 1
    return blocks


def _skip_blank(lines: list[str], at: int) -> int:
    while at < len(lines) and not lines[at].strip():
        at += 1
    return at


def newcomer_blocks(text: str | None = None) -> list[Block]:
    """The bash blocks of SECTIONS, in the README's order."""
    return [b for b in parse(README.read_text() if text is None else text)
            if b.section in SECTIONS or b.subsection in SECTIONS]


def missing_sections(text: str | None = None) -> list[str]:
    headings = {m.group(1).strip() for m in re.finditer(
        r"^#{2,3} (.+)$", README.read_text() if text is None else text, re.MULTILINE)}
    return [s for s in SECTIONS if s not in headings]


def _pattern(expected: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in expected.rstrip().split("...")))


def first_unmatched(expected: list[str], output: str) -> tuple[int, str] | None:
    """The first expected line (1-based, text) not found, in order, in `output`; or None."""
    got = [x.rstrip() for x in output.splitlines()]
    at = 0
    for n, line in enumerate(expected, 1):
        if line.strip() == "...":
            continue
        pattern = _pattern(line)
        while at < len(got) and not pattern.fullmatch(got[at]):
            at += 1
        if at == len(got):
            return n, line
        at += 1
    return None
