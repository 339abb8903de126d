"""The `lvd` command line: help everywhere, one-line errors, `python -m pipelines`."""
from __future__ import annotations

import subprocess
import sys

import pytest

from pipelines.cli import build_parser, main


def _commands() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(sub.choices)


def test_core_commands_exist() -> None:
    assert {"curate", "dedup", "demo-world", "eval-dedup", "ingest"} <= set(_commands())


@pytest.mark.parametrize("command", _commands())
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: lvd " + command in capsys.readouterr().out


def test_python_dash_m_works() -> None:
    out = subprocess.run([sys.executable, "-m", "pipelines", "--help"], capture_output=True, text=True, check=True).stdout
    assert "curate" in out


@pytest.mark.parametrize("argv,needle", [
    (["ingest", "/nonexistent/path", "--out", "{tmp}/r"], "input not found: /nonexistent/path"),
    (["dedup", "{tmp}/empty"], "has no ingested pool"),
    (["curate", "--world", "{tmp}", "--out", "{tmp}/r"], "is not a demo world"),
    (["ingest", "{tmp}", "--out", "{tmp}/r", "--set", "decode.quality=500"], "bad config value decode.quality"),
    (["ingest", "{tmp}", "--out", "{tmp}/r", "--set", "nonsense"], "is not key=value"),
    (["ingest", "{tmp}", "--out", "{tmp}/r", "--config", "{tmp}/missing.yaml"], "config file not found"),
    # A URL run directory works (tests/engines/test_engines_object_store.py) but the demo world must be given.
    (["curate", "--recipe", "demo", "--out", "s3://bucket/run"], "pass the demo world as --world DIR"),
    (["ingest", "{tmp}", "--out", "nosuchfs://bucket/run"], "Unsupported filesystem: 'nosuchfs'"),
    (["embed", "nosuchfs://bucket/run"], "install the filesystem of this URL"),
])
def test_user_errors_are_one_line(argv: list[str], needle: str, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err
