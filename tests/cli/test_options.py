"""One spelling per option across commands; the older spellings still parse, to the same value,
and stay out of ``--help``."""

from __future__ import annotations

import argparse
import re

import pytest

from hopscope.cli import add_alias, build_parser, command_parser

PROBE = ["probe", "--iface", "eth0", "--point", "p"]


@pytest.mark.parametrize(
    ("old", "new", "dest", "value"),
    [
        ([*PROBE, "--topic", "t1"], [*PROBE, "--topic-prefix", "t1"], "topic_prefix", "t1"),
        (["analyze", "--kind", "a=nat"], ["analyze", "--hop-kind", "a=nat"], "hop_kind", ["a=nat"]),
        (["analyze", "--kind", "a=nat", "--hop-kind", "b=pod"], ["analyze", "--hop-kind", "a=nat", "--hop-kind",
         "b=pod"], "hop_kind", ["a=nat", "b=pod"]),
        (["analyze", "--output", "x.json"], ["analyze", "--out", "x.json"], "out", "x.json"),
        (["analyze", "-o", "x.json"], ["analyze", "--out", "x.json"], "out", "x.json"),
    ],
)  # fmt: skip
def test_old_spelling_parses_as_the_new(old: list[str], new: list[str], dest: str, value: object) -> None:
    parsed_old = build_parser(old[0]).parse_args(old)
    parsed_new = build_parser(new[0]).parse_args(new)
    assert getattr(parsed_new, dest) == value
    assert vars(parsed_old) == vars(parsed_new)


@pytest.mark.parametrize(("command", "dest", "default"), [("probe", "topic_prefix", "hopscope"),
                                                         ("analyze", "hop_kind", []), ("analyze", "out", None)])
def test_defaults_survive_the_alias(command: str, dest: str, default: object) -> None:
    argv = PROBE if command == "probe" else [command]
    assert getattr(build_parser(command).parse_args(argv), dest) == default


@pytest.mark.parametrize(("command", "hidden", "shown"), [("probe", "--topic ", "--topic-prefix"),
                                                         ("analyze", "--kind", "--hop-kind"),
                                                         ("analyze", "--output", "--out")])
def test_help_shows_only_the_current_spelling(command: str, hidden: str, shown: str) -> None:
    text = command_parser(command).format_help()
    assert shown in text and hidden not in text.replace(shown, "")


@pytest.mark.parametrize(
    ("command", "option"),
    [("probe", "--topic-prefix"), ("correlate", "--topic-prefix"), ("ingest", "--topic-prefix"),
     ("probe", "--kafka"), ("correlate", "--kafka"), ("ingest", "--kafka"),
     ("analyze", "--store"), ("correlate", "--store"), ("ingest", "--store"), ("serve", "--store"),
     ("topology", "--store"), ("correlate", "--group"), ("ingest", "--group"),
     ("correlate", "--idle-exit"), ("ingest", "--idle-exit"),
     ("flows", "--hop-kind"), ("requests", "--hop-kind"), ("probe", "--hop-kind"), ("analyze", "--hop-kind"),
     ("probe", "--out"), ("analyze", "--out")],
)  # fmt: skip
def test_one_name_per_concept(command: str, option: str) -> None:
    assert re.search(rf"{option}\b(?!-)", command_parser(command).format_help())


def test_only_value_options_take_aliases() -> None:
    parser = argparse.ArgumentParser()
    flag = parser.add_argument("--no-store", action="store_true")
    with pytest.raises(TypeError, match="--no-store"):
        add_alias(parser, flag, "--nostore")
