from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.cli import EXIT_NOT_RUNNING, EXIT_USAGE, build_parser, main
from workers.log import configure_logging


def test_every_broker_flag_names_its_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser({}).parse_args(["broker", "start", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for var in ("NODES", "DATA_DIR", "PORT", "CACHE_DIR", "TIMEOUT_S", "LOG_FORMAT"):
        assert f"[env: SCORESTREAM_{var}]" in help_text


def test_broker_flags_read_their_variables(tmp_path: Path) -> None:
    env = {
        "SCORESTREAM_NODES": "3",
        "SCORESTREAM_PORT": "19092",
        "SCORESTREAM_DATA_DIR": str(tmp_path),
    }
    args = build_parser(env).parse_args(["broker", "status"])
    assert (args.nodes, args.port, args.data_dir) == (3, 19092, tmp_path)
    assert build_parser(env).parse_args(["broker", "status", "--port", "1"]).port == 1


def test_status_of_a_broker_never_started_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["broker", "status", "--data-dir", str(tmp_path), "--port", "19092"], {})
    out = capsys.readouterr().out
    assert code == EXIT_NOT_RUNNING
    assert "down" in out
    assert "127.0.0.1:19092" in out


def test_a_bad_variable_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["broker", "status"], {"SCORESTREAM_PORT": "high"}) == EXIT_USAGE
    assert "SCORESTREAM_PORT='high'" in capsys.readouterr().err


def test_an_impossible_layout_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["broker", "status", "--nodes", "5", "--data-dir", str(tmp_path)], {})
    assert code == 1
    assert "--nodes/--port" in capsys.readouterr().err


def test_json_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    import structlog  # noqa: PLC0415

    configure_logging("json", "info")
    structlog.get_logger().info("prediction_published", topic="t", partition=0)
    structlog.get_logger().debug("hidden")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["event"] == "prediction_published"
    assert record["level"] == "info"
    assert record["partition"] == 0
    assert record["ts"].endswith("Z")


def test_train_if_missing_registers_once(tmp_path: Path) -> None:
    argv = ["train", "--name", "bc", "--models-dir", str(tmp_path), "--if-missing"]
    assert main(argv, {}) == 0
    assert main(argv, {}) == 0
    assert sorted(p.name for p in (tmp_path / "bc").iterdir()) == ["1"]
    assert main(argv[:-1], {}) == 0  # without it, every run registers the next version
    assert sorted(p.name for p in (tmp_path / "bc").iterdir()) == ["1", "2"]
