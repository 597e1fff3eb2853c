"""docs/cli.md stays true to the CLI: every option of every command's --help is documented in
that command's section, and no section documents an option the command lacks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tsfa.cli import app

DOCS = Path(__file__).resolve().parents[1] / "docs"
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def commands() -> list[str]:
    return sorted(c.name for c in app.registered_commands)


def sections() -> dict[str, str]:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    parts = re.split(r"^## tsfa ([\w-]+)\s*$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def help_options(cmd: str) -> set[str]:
    res = CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"},
                             terminal_width=200)
    assert res.exit_code == 0, res.output
    return set(OPTION.findall(res.output)) - {"--help"}


def test_every_command_has_a_section():
    assert set(commands()) <= set(sections()), set(commands()) - set(sections())


@pytest.mark.parametrize("cmd", commands())
def test_options_match_help(cmd):
    doc = set(OPTION.findall(sections()[cmd]))
    helped = help_options(cmd)
    assert helped <= doc, f"tsfa {cmd}: undocumented options {sorted(helped - doc)}"
    assert doc <= helped, f"docs/cli.md documents options tsfa {cmd} lacks: {sorted(doc - helped)}"


def test_docs_say_figures_are_reconstructions():
    for name in ("cli.md", "benchmarks.md", "getting_started.md", "validation.md"):
        text = " ".join((DOCS / name).read_text(encoding="utf-8").split())  # ignore line wraps
        assert "not the paper's results" in text, name


def test_benchmarks_page_links_benchmarks_readme():
    assert "../benchmarks/README.md" in (DOCS / "benchmarks.md").read_text(encoding="utf-8")
