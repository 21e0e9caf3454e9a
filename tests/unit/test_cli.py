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


def _record_cluster(data_dir: Path, nodes: int, port: int) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    shape = {"cluster_id": "x", "nodes": nodes, "port": port, "tls": False, "sasl": False}
    (data_dir / "cluster.json").write_text(json.dumps(shape))


def test_status_reads_the_shape_the_data_dir_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _record_cluster(tmp_path, nodes=3, port=19192)
    assert main(["broker", "status", "--data-dir", str(tmp_path)], {}) == EXIT_NOT_RUNNING
    out = capsys.readouterr().out
    assert "127.0.0.1:19192,127.0.0.1:19194,127.0.0.1:19196" in out
    assert [line.split()[0] for line in out.splitlines()[1:4]] == ["1", "2", "3"]


def test_stop_reaches_every_recorded_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.local_kafka import cluster  # noqa: PLC0415

    _record_cluster(tmp_path, nodes=3, port=19192)
    stopped: list[tuple[int, int]] = []

    def fake_stop(layout: object, _timeout_s: float) -> list[int]:
        stopped.append((layout.node_count, layout.base_port))  # type: ignore[attr-defined]
        return []

    monkeypatch.setattr(cluster, "stop", fake_stop)
    assert main(["broker", "stop", "--data-dir", str(tmp_path)], {}) == 0
    assert stopped == [(3, 19192)]


def test_flags_that_contradict_the_recorded_shape_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _record_cluster(tmp_path, nodes=3, port=19192)
    code = main(["broker", "stop", "--data-dir", str(tmp_path), "--port", "9092"], {})
    err = capsys.readouterr().err
    assert code == 1
    assert "3 node(s) on port 19192" in err
    assert "--port 9092" in err
    assert "drop those flags" in err


def test_demo_without_matplotlib_stops_before_it_starts_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util  # noqa: PLC0415

    from workers.local_kafka import cluster  # noqa: PLC0415

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a),
    )
    started: list[object] = []
    monkeypatch.setattr(cluster, "start", lambda *a: started.append(a))
    code = main(["demo", "--data-dir", str(tmp_path), "--out", str(tmp_path / "out")], {})
    assert code == 1
    assert "pip install 'scorestream[report]'" in capsys.readouterr().err
    assert started == []


def test_an_event_id_length_the_monitor_would_refuse_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser({}).parse_args(["infer", "--model", "m", "--max-event-id-length", "300"])
    assert exited.value.code == EXIT_USAGE
    assert "at most 256" in capsys.readouterr().err
