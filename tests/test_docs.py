"""The README and docs/ say only what exists: every linked file and repository path is there, and every `edgekd`
command line in them parses (options, arguments and their types, as `--help`-level validation does)."""

import re
import shlex
from pathlib import Path

import pytest
import typer

from edgekd.cli import app

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
REPO_PATH = re.compile(r"^(edgekd|benchmarks|configs|docs|tests|jetson|engines/kernels|engines/plugin)/[\w./-]+$")
FENCE = re.compile(r"```(?:bash|sh)?\n(.*?)```", re.S)


def _links(text: str):
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"[a-z]+://|#|mailto:", target):
            yield target.split("#", 1)[0]


def _repo_paths(text: str):
    for token in re.findall(r"`([^`\s]+)`", text):
        if REPO_PATH.match(token.rstrip(".,:;")):
            yield token.rstrip(".,:;")


def _command_lines(text: str):
    """Lines of code blocks that start with `edgekd ` (placeholders such as `...` and shell variables left out)."""
    for block in FENCE.findall(text):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("edgekd ") and "..." not in line and "$" not in line:
                yield line


def _inline_commands(text: str):
    """Inline code spans that name a command, often with an option or two (a reference, not a whole line)."""
    return re.findall(r"`(edgekd [^`]+)`", FENCE.sub("", text))


def test_the_readme_is_a_front_page():
    assert len((REPO / "README.md").read_text().splitlines()) <= 150


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_and_path_exists(page):
    text = page.read_text()
    missing = [t for t in _links(text) if not (page.parent / t).exists()]
    missing += [p for p in _repo_paths(text) if not (REPO / p).exists()]
    assert not missing, f"{page.name} names what does not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_line_parses(page):
    root = typer.main.get_command(app)
    for line in _command_lines(page.read_text()):
        args = shlex.split(line)[1:]
        command, name, context = root, "edgekd", None
        try:
            while True:
                context = command.make_context(name, list(args), parent=context)
                if not hasattr(command, "resolve_command"):
                    break
                rest = list(getattr(context, "protected_args", None) or getattr(context, "_protected_args", [])) + context.args
                name, command, args = command.resolve_command(context, rest)
        except Exception as exc:  # click's usage errors: an unknown option, a missing value, a wrong type
            if getattr(exc, "exit_code", None) == 0:  # --help
                continue
            pytest.fail(f"{page.name}: '{line}' does not parse: {exc}")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_and_option_named_inline_exists(page):
    root = typer.main.get_command(app)
    for span in _inline_commands(page.read_text()):
        command, words = root, span.split()[1:]
        while words and hasattr(command, "get_command") and command.get_command(None, words[0]) is not None:
            command, words = command.get_command(None, words[0]), words[1:]
        assert command is not root or not words or words[0].startswith("-"), f"{page.name}: `{span}`: no such command"
        known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        unknown = [w.split("=", 1)[0] for w in words if w.startswith("--") and w.split("=", 1)[0] not in known]
        assert not unknown, f"{page.name}: `{span}` names options {command.name} does not have: {unknown}"
