"""Every bindha-rwx command the docs tell an operator to type parses as written.

The runbooks are run at 3 a.m. by people who copy and paste: a flag that the CLI does
not know (renamed, misspelt) must fail here, not there. The commands' behaviour is
tested against the real control plane in tests/kube/test_ops.py.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from bindha_rwx.cli import build_parser

DOCS = Path(__file__).resolve().parents[2] / "docs"
COMMAND = re.compile(r"bindha-rwx ((?:[a-z]+)(?: [^`|\n]*)?)")


def commands() -> list[tuple[str, str]]:
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        for line in page.read_text().splitlines():
            for match in COMMAND.finditer(line):
                text = match.group(1).split(" #")[0].strip().rstrip(".,;:)")
                if text.split()[0] in {"run", "secondary", "render", "status", "fence",
                                       "switchover", "pause", "resume", "probe"}:
                    found.append((f"{page.relative_to(DOCS)}", text))
    return found


def test_the_docs_name_commands():
    assert len(commands()) >= 20


PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(\[?,[A-Z.]+\]?)*$")


def concrete(words: list[str]) -> list[str]:
    """Placeholders (<old-leader>, POD, IP, SECONDS) become values of the right kind."""
    out: list[str] = []
    for word in words:
        if word == "<>" or PLACEHOLDER.match(word):
            out.append("1" if out and out[-1] == "--wait" else "10.0.0.1")
        else:
            out.append(word)
    return out


@pytest.mark.parametrize(("page", "command"), commands())
def test_documented_command_parses(page, command):
    text = re.sub(r"<[^>]*>", "<>", command).replace("[", " ").replace("]", " ")
    words = [w for w in shlex.split(text) if w not in ("...", "|")]
    if "/" in words:  # "live / ready": alternatives, the first one stands for all
        words = words[: words.index("/")]
    if len(words) == 1:  # a family named in prose ("`bindha-rwx fence`")
        assert words[0] in {"fence", "probe", "status", "pause", "resume", "switchover", "run",
                            "secondary", "render"}
        return
    words = concrete(words)
    parser = build_parser()
    try:
        parser.parse_args(words)
    except SystemExit as exc:
        pytest.fail(f"{page}: `bindha-rwx {command}` does not parse (exit {exc.code})")
