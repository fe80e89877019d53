"""The command table of ``hopscope`` (hopscope.cli.COMMANDS) against the command modules, and what
``hopscope --help`` and ``hopscope NAME`` import."""

from __future__ import annotations

import json
import pkgutil
import signal
import subprocess
import sys

import pytest

import hopscope.cli
from hopscope.cli import BY_NAME, COMMANDS, load, main, stop_on_signal

NAMES = [c.name for c in COMMANDS]


def imported_after(argv: list[str]) -> list[str]:
    """The hopscope and numpy modules a fresh interpreter holds after ``hopscope ARGV`` (which exits)."""
    code = (
        "import json, sys\n"
        "from hopscope.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('hopscope', 'numpy')))), file=sys.stderr)"
    )  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return list(json.loads(r.stderr.splitlines()[-1]))


def test_every_command_module_is_in_the_table_and_named_after_its_command() -> None:
    modules = {m.name for m in pkgutil.iter_modules(hopscope.cli.__path__)}
    assert modules == set(NAMES)
    assert len(NAMES) == len(set(NAMES))
    for c in COMMANDS:
        assert c.module == f"hopscope.cli.{c.name}" and c.help and "\n" not in c.help


@pytest.mark.parametrize("name", NAMES)
def test_command_module_registers_its_options_and_runs(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    module = load(BY_NAME[name])
    assert callable(module.add_arguments) and callable(module.run)
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: hopscope {name} ")


def test_top_level_help_lists_every_command_with_its_help_line() -> None:
    r = subprocess.run([sys.executable, "-m", "hopscope", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr
    listed = {line.split()[0]: " ".join(line.split()[1:]) for line in r.stdout.splitlines() if line.startswith("    ")
              and not line.startswith("     ")}  # fmt: skip
    assert list(listed) == NAMES
    for c in COMMANDS:
        assert c.help.startswith(listed[c.name]), c.name


def test_top_level_help_imports_no_command_module() -> None:
    loaded = imported_after(["--help"])
    assert "hopscope.cli" in loaded
    assert not [m for m in loaded if m.startswith("hopscope.cli.")], loaded
    assert "numpy" not in loaded


@pytest.mark.parametrize("name", ["flows", "serve", "lab"])
def test_a_command_imports_only_its_own_module(name: str) -> None:
    loaded = imported_after([name, "--help"])
    assert [m for m in loaded if m.startswith("hopscope.cli.")] == [f"hopscope.cli.{name}"]


def test_help_before_a_command_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """``main`` builds a named command's subparser alone, but not when the top-level help is asked."""
    with pytest.raises(SystemExit) as exit_:
        main(["-h", "flows"])
    assert exit_.value.code == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in NAMES)
    with pytest.raises(SystemExit):
        main(["flows", "-h"])
    out = capsys.readouterr().out
    assert out.startswith("usage: hopscope flows") and "topology" not in out


def test_no_command_prints_the_list_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out = capsys.readouterr().out
    assert all(name in out for name in NAMES)


def test_an_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["flow", "x.pcap"])
    assert exit_.value.code == 2
    assert "invalid choice: 'flow'" in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stop_on_signal_calls_stop_and_restores_the_handler(sig: signal.Signals) -> None:
    """A long-running command's block: the signal calls stop (the command winds down and summarises)
    instead of ending the process; after the block, even one that raised, the previous handler is back."""
    stopped: list[int] = []
    before = signal.getsignal(sig)
    with stop_on_signal(lambda: stopped.append(1)):
        signal.raise_signal(sig)
    assert stopped == [1]
    assert signal.getsignal(sig) is before
    with pytest.raises(RuntimeError), stop_on_signal(lambda: stopped.append(2)):
        raise RuntimeError("the command failed")
    assert signal.getsignal(sig) is before and stopped == [1]
