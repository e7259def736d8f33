"""Every console script (pyproject's [project.scripts]) explains itself: each parser and sub-command has a
description that is a whole sentence (not a docstring cut at its first line), and every argument has help text
(or is hidden on purpose, help=argparse.SUPPRESS)."""

from __future__ import annotations

import argparse
import importlib
import tomllib
from collections.abc import Iterator

import pytest
from helpers import ROOT

SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


class _Parsed(Exception):
    """Raised in place of parsing: the script's parser is caught before it would run anything."""


def parser_of(entry: str) -> argparse.ArgumentParser:
    """The parser a console script's main() builds (caught at its parse call, so nothing starts)."""
    module, function = entry.split(":")
    caught: list[argparse.ArgumentParser] = []

    def catch(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        caught.append(self)
        raise _Parsed

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_known_args", catch)
        with pytest.raises(_Parsed):
            getattr(importlib.import_module(module), function)([])
    return caught[0]


def walk(parser: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, argparse.ArgumentParser,
                                                                       dict[str, str | None]]]:
    """(name, parser, help of each sub-command) for the parser and, depth first, its sub-commands."""
    subcommands: dict[str, str | None] = {}
    children = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for sub, child in action.choices.items():
                subcommands[sub] = helps.get(sub)
                children.append((f"{name} {sub}", child))
    yield name, parser, subcommands
    for child_name, child in children:
        yield from walk(child, child_name)


def is_sentence(text: str | None) -> bool:
    """Starts with a capital (or `a command`), ends with a full stop, and is not a docstring's first line cut off
    mid-sentence (argparse shows a description as given)."""
    text = (text or "").strip()
    return bool(text) and (text[0].isupper() or text[0] == "`") and text.endswith((".", ".)"))


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_argument_of_every_console_script_has_help(script: str) -> None:
    missing, bad = [], []
    for name, parser, subcommands in walk(parser_of(SCRIPTS[script]), script):
        if not is_sentence(parser.description):
            bad.append(f"{name}: description {parser.description!r}")
        missing += [f"{name} {sub} (sub-command)" for sub, text in subcommands.items() if not text]
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if not action.help:  # help=argparse.SUPPRESS is a deliberate choice: an old spelling kept hidden
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"arguments without help: {missing}"
    assert not bad, f"descriptions that are not whole sentences: {bad}"


def test_the_parser_catch_sees_sub_commands() -> None:
    """The walk reaches sub-commands (or the test above would pass on a script whose sub-commands lack help)."""
    names = [name for name, _, _ in walk(parser_of(SCRIPTS["ntm-cluster"]), "ntm-cluster")]
    assert names == ["ntm-cluster", "ntm-cluster up", "ntm-cluster envoy-config"]
    names = [name for name, _, _ in walk(parser_of(SCRIPTS["ntm-admin"]), "ntm-admin")]
    assert names == ["ntm-admin", "ntm-admin status", "ntm-admin load", "ntm-admin unload"]
