"""The `idp` command's help, its JSON log lines and its configuration errors (no servers)."""

from __future__ import annotations

import logging
import logging.config
import sys

import orjson
import pytest

from pipeline import cli
from pipeline.ops.settings import Settings


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_the_listing_shows_no_internal_command(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys)
    assert "SUPPRESS" not in text and "bench-bare" not in text
    for name in ("worker", "topics", "stack", "demo", "bench", "inspect", "replay"):
        assert f"\n    {name} " in text, name
    # The internal command still runs for the benchmark.
    args = cli.build_parser().parse_args(["bench-bare", "--our-consumer"])
    assert args.func is cli.cmd_bench_bare and args.our_consumer


def test_every_command_says_what_it_does_with_an_example(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]  # argparse keeps them there
    assert set(sub.choices) >= {"worker", "topics", "stack", "inspect", "replay", "bench-bare"}
    for name in sub.choices:
        text = _help(capsys, name)
        assert f"usage: idp {name}" in text
        assert "\nexample:\n  " in text, name
        example = text.split("\nexample:\n  ", 1)[1]
        assert "idp " in example, (name, example)
    assert "--html FILE" in _help(capsys, "inspect")


def test_json_log_lines_carry_time_level_logger_message_and_exception() -> None:
    formatter = cli.JsonLogFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("pipeline.worker", logging.ERROR, __file__, 1,
                                   "batch of %s failed", ("t:0",), sys.exc_info())  # fmt: skip
    line = formatter.format(record)
    assert "\n" not in line
    fields = orjson.loads(line)
    assert fields["level"] == "ERROR" and fields["logger"] == "pipeline.worker"
    assert fields["message"] == "batch of t:0 failed"
    assert fields["time"].endswith("Z") and fields["time"][10] == "T"
    assert "Traceback" in fields["exception"] and "ValueError: boom" in fields["exception"]


def test_the_log_format_setting_selects_the_workers_logging_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IDP_LOG_FORMAT", "json")
    config = cli._logging_config(Settings())
    assert config is not None
    assert config["root"]["handlers"] == ["default"]
    # A configuration logging accepts (applied to a logger of the test's, not the root).
    applied = {k: v for k, v in config.items() if k != "root"}
    logging.config.dictConfig({**applied, "loggers": {"idp-test": config["root"]}})
    (handler,) = logging.getLogger("idp-test").handlers
    assert isinstance(handler.formatter, cli.JsonLogFormatter)
    monkeypatch.setenv("IDP_LOG_FORMAT", "text")
    assert cli._logging_config(Settings()) is None  # Faust's own


def test_a_bad_setting_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IDP_LOG_FORMAT", "xml")
    assert cli.main(["topics"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("idp topics: bad configuration: ")
    assert "IDP_LOG_FORMAT" in err
