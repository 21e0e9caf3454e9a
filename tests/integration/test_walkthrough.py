"""The README's "Your own events" walkthrough, run as written against the real broker: every
command of its `sh walkthrough` block and every `python walkthrough` snippet, in order."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import KafkaUnderTest

README = Path(__file__).resolve().parents[2] / "README.md"


def blocks(tag: str) -> re.Pattern[str]:
    return re.compile(
        rf"^```(?P<kind>sh|python) {tag}\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL
    )


BLOCK = blocks("walkthrough")
README_BOOTSTRAP = "127.0.0.1:9092"


@dataclass(frozen=True)
class Step:
    kind: str  # "command", "background" or "python"
    text: str


def walkthrough_steps(readme: str, tag: str = "walkthrough") -> list[Step]:
    steps = []
    for block in blocks(tag).finditer(readme):
        if block["kind"] == "python":
            steps.append(Step("python", block["body"]))
            continue
        for line in block["body"].splitlines():
            command = re.split(r"\s+#", line, maxsplit=1)[0].strip()
            if command.endswith("&"):
                steps.append(Step("background", command[:-1].strip()))
            elif command:
                steps.append(Step("command", command))
    return steps


def test_the_walkthrough_has_commands_and_snippets() -> None:
    steps = walkthrough_steps(README.read_text())
    kinds = [s.kind for s in steps]
    assert kinds.count("background") == 2
    assert kinds.count("python") == 2
    assert steps[0].text == "scorestream broker start"


def _environment(kafka: KafkaUnderTest, work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["SCORESTREAM_BOOTSTRAP_SERVERS"] = kafka.bootstrap_servers
    env["SCORESTREAM_LOG_FORMAT"] = "json"
    env["XDG_STATE_HOME"] = str(work / "state")  # the monitor's checkpoints, this run's own
    if kafka.layout is not None:  # `broker start` finds the test's broker already running
        env["SCORESTREAM_DATA_DIR"] = str(kafka.layout.data_dir)
        env["SCORESTREAM_PORT"] = str(kafka.layout.base_port)
    return env


def run_steps(kafka: KafkaUnderTest, tmp_path: Path, tag: str) -> list[str]:
    """Run the README's `tag` blocks in order; return what the snippets printed. The workers
    started in the background are stopped with SIGTERM at the end and must exit 0."""
    env = _environment(kafka, tmp_path)
    background: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    printed: list[str] = []
    try:
        for step in walkthrough_steps(README.read_text(), tag):
            if step.kind == "python":
                code = step.text.replace(README_BOOTSTRAP, kafka.bootstrap_servers)
                done = subprocess.run(
                    [sys.executable, "-c", code], cwd=tmp_path, env=env,
                    capture_output=True, text=True, timeout=180, check=False,
                )  # fmt: skip
                assert done.returncode == 0, done.stderr
                printed.append(done.stdout)
                continue
            argv = shlex.split(step.text)
            if argv[:3] == ["scorestream", "broker", "start"] and kafka.layout is None:
                continue  # a broker given by SCORESTREAM_BOOTSTRAP_SERVERS: nothing to start
            if step.kind == "background":
                log_path = tmp_path / f"{argv[1]}.log"
                with log_path.open("wb") as log_file:
                    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log_file,
                                            stderr=subprocess.STDOUT)  # fmt: skip
                background.append((argv[1], proc, log_path))
                continue
            done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=300, check=False)  # fmt: skip
            assert done.returncode == 0, f"{step.text}\n{done.stdout}\n{done.stderr}"
    finally:
        codes = {}
        for _, proc, _ in background:
            proc.send_signal(signal.SIGTERM)
        for name, proc, _ in background:
            codes[name] = proc.wait(timeout=60)
    assert codes == {"infer": 0, "monitor": 0}
    return printed


def test_the_readme_walkthrough_runs_as_written(kafka: KafkaUnderTest, tmp_path: Path) -> None:
    printed = run_steps(kafka, tmp_path, "walkthrough")
    read_back = printed[-1]
    counts = {line.split()[0]: int(line.split()[1]) for line in read_back.splitlines()}
    assert counts["predictions"] >= 1001
    assert counts["features.dlq"] >= 1
    assert counts["alerts"] >= 1
    assert "features missing: 'sepal_length_cm', 'sepal_width_cm', 'petal_length_cm'" in read_back

    monitor_log = [json.loads(line) for line in (tmp_path / "monitor.log").read_text().splitlines()
                   if line.startswith("{")]  # fmt: skip
    alerts = [r for r in monitor_log if "alert" in r and "severity" in r]
    assert any(r["event"] == "accuracy_below_threshold" for r in alerts), alerts
    # The level is the severity, so a filter on level >= error catches the critical ones.
    assert all(r["level"] == r["severity"] for r in alerts)
    stopped = next(r for r in monitor_log if r["event"] == "monitor_stopped")
    assert stopped["joined"] >= 1001


def test_a_walkthrough_step_that_fails_is_reported() -> None:
    steps = walkthrough_steps("```sh walkthrough\nfalse  # fails\nsleep 1 &\n```\n")
    assert steps == [Step("command", "false"), Step("background", "sleep 1")]
    started = time.monotonic()
    done = subprocess.run(shlex.split(steps[0].text), check=False)
    assert done.returncode != 0
    assert time.monotonic() - started < 10


def test_the_readme_serve_your_own_model_runs_as_written(
    kafka: KafkaUnderTest, tmp_path: Path
) -> None:
    steps = walkthrough_steps(README.read_text(), "own-model")
    assert [s.kind for s in steps].count("python") == 2
    assert any(s.text.startswith("scorestream register") for s in steps)
    printed = run_steps(kafka, tmp_path, "own-model")
    assert (tmp_path / "models" / "spend" / "1" / "manifest.json").is_file()
    kinds = json.loads((tmp_path / "models" / "churn" / "1" / "manifest.json").read_text())
    assert kinds["feature_kinds"]["device"] == {
        "kind": "categorical", "nullable": True, "json_type": "string", "dtype": "str"
    }  # fmt: skip
    count = printed[-1].split()
    assert count[0] == "predictions"
    assert int(count[1]) >= 4000
    monitor_log = [json.loads(line) for line in (tmp_path / "monitor.log").read_text().splitlines()
                   if line.startswith("{")]  # fmt: skip
    stopped = next(r for r in monitor_log if r["event"] == "monitor_stopped")
    assert stopped["joined"] >= 4000
