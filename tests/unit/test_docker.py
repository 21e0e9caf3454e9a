"""docker/ checked without a Docker engine: the compose file, the Dockerfile, Prometheus's
config and the Grafana dashboard agree with each other and with the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from workers.cli import build_parser
from workers.local_kafka.runtime import KAFKA_VERSION
from workers.metrics import InferMetrics, MonitorMetrics

DOCKER = Path(__file__).resolve().parents[2] / "docker"
ROOT = DOCKER.parent
SCORESTREAM_SERVICES = ("train", "infer", "monitor-join", "monitor", "producer")
LONG_RUNNING = ("kafka", "infer", "monitor-join", "monitor", "prometheus", "grafana")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def exposed_metric_names() -> set[str]:
    """Every sample name the two workers can expose (histograms: _bucket/_sum/_count)."""
    names = set()
    for registry in (InferMetrics().registry, MonitorMetrics().registry):
        for family in registry.collect():
            names.add(family.name)
            kind_suffixes = {
                "counter": ("_total",),
                "histogram": ("_bucket", "_sum", "_count"),
            }.get(family.type, ())
            names.update(family.name + suffix for suffix in kind_suffixes)
    return names


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (DOCKER / "grafana" / "dashboards" / "scorestream.json").read_text()
    )
    return data


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]


def test_the_stack_has_every_part(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {
        "kafka", "topics", "train", "infer", "monitor-join", "monitor", "producer", "prometheus",
        "grafana",
    }  # fmt: skip


def test_images_are_pinned_and_kafka_matches_the_local_broker(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: {image} has no tag"
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{name}: {image} is not pinned to a release"
    assert services["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"
    assert services["topics"]["image"] == services["kafka"]["image"]
    for name in SCORESTREAM_SERVICES:
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile"
        assert (DOCKER / services[name]["build"]["context"]).resolve() == ROOT


def test_long_running_services_have_healthchecks_and_the_rest_say_why_not(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in LONG_RUNNING:
        check = services[name]["healthcheck"]
        assert check["test"][0] == "CMD", name
        assert check["interval"], name
        assert check["retries"] >= 1, name
    for name in ("train", "producer"):
        assert services[name]["healthcheck"] == {"disable": True}
    # infer and monitor probe the port their command serves metrics on.
    for name in ("infer", "monitor-join", "monitor"):
        command = services[name]["command"]
        port = command[command.index("--metrics-port") + 1]
        assert f"127.0.0.1:{port}/healthz" in " ".join(services[name]["healthcheck"]["test"])


def test_dependencies_name_real_services_and_wait_for_the_right_state(
    services: dict[str, dict[str, Any]],
) -> None:
    one_shot = {"topics", "train"}
    for name, service in services.items():
        for dependency, how in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            expected = (
                "service_completed_successfully" if dependency in one_shot else "service_healthy"
            )
            assert how["condition"] == expected, f"{name} -> {dependency}"
            if expected == "service_healthy":
                assert "healthcheck" in services[dependency]
                assert services[dependency]["healthcheck"] != {"disable": True}


@pytest.mark.parametrize("name", SCORESTREAM_SERVICES)
def test_worker_commands_are_the_cli_s_own(
    services: dict[str, dict[str, Any]], name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    service = services[name]
    environment = {k: str(v) for k, v in service["environment"].items()}
    # argparse exits on an unknown flag or a bad value: the command is exactly what
    # `scorestream` accepts, with the environment the container gets.
    try:
        args = build_parser(environment).parse_args(service["command"])
    except SystemExit:
        pytest.fail(f"{name}: {service['command']} is not a scorestream command: "
                    f"{capsys.readouterr().err}")  # fmt: skip
    assert args.command == service["command"][0]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        build_parser({}).parse_args([args.command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for variable in environment:
        assert f"[env: {variable}]" in help_text, (
            f"{name}: no flag of {args.command} reads {variable}"
        )
    if name in ("infer", "monitor-join", "monitor", "producer"):
        assert args.bootstrap_servers == "kafka:9092"


def test_infer_can_scale_up_to_the_input_partition_count(
    services: dict[str, dict[str, Any]],
) -> None:
    infer = services["infer"]
    # `--scale infer=N` needs no fixed name and no host port per replica.
    assert "container_name" not in infer
    assert "ports" not in infer
    script = services["topics"]["command"][0]
    partitions = dict(re.findall(r"([\w.]+):(\d+)", script.split("for spec in", 1)[1]))
    assert int(partitions["features"]) >= 3  # the README's example scales to 3
    # The monitor joins partition i of predictions with partition i of labels.
    assert partitions["predictions"] == partitions["labels"]
    for topic in ("features", "predictions", "labels", "features.dlq", "alerts", "outcomes"):
        assert topic in partitions


def test_the_monitor_is_scaled_in_two_stages_with_no_state_volume(
    services: dict[str, dict[str, Any]],
) -> None:
    join, aggregate = services["monitor-join"], services["monitor"]
    assert join["command"][:3] == ["monitor", "--stage", "join"]
    assert join["deploy"]["replicas"] >= 2
    # Replicas differ by host name, which is each one's instance (and transactional) id.
    assert "--instance-id" not in join["command"]
    assert "container_name" not in join
    assert aggregate["command"][:3] == ["monitor", "--stage", "aggregate"]
    for service in (join, aggregate):
        assert not any(v.endswith(":/state") for v in service.get("volumes", []))


def test_mounted_files_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name}: {source}"


def test_dockerfile_runs_as_a_pinned_non_root_image() -> None:
    lines = [
        line.strip()
        for line in (DOCKER / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert froms
    assert all(re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", f) for f in froms)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}
    final_stage = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")) :]
    assert any(line.startswith("USER ") for line in final_stage)
    assert any("--constraint constraints.txt" in line for line in lines)
    assert any(line.startswith("HEALTHCHECK ") for line in final_stage)
    assert 'ENTRYPOINT ["scorestream"]' in lines
    for line in lines:
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source


def test_prometheus_scrapes_both_workers_where_compose_serves_them(
    services: dict[str, dict[str, Any]],
) -> None:
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for service, job in (("infer", "scorestream-infer"), ("monitor", "scorestream-monitor"),
                         ("monitor-join", "scorestream-monitor-join")):  # fmt: skip
        sd = jobs[job]["dns_sd_configs"][0]
        command = services[service]["command"]
        assert sd["names"] == [service]
        assert str(sd["port"]) == command[command.index("--metrics-port") + 1]
    for rule_file in config["rule_files"]:
        assert (DOCKER / "prometheus" / rule_file).is_file()


def test_rules_and_dashboard_query_only_series_the_workers_expose() -> None:
    exposed = exposed_metric_names()
    rules = (DOCKER / "prometheus" / "alerts.yml").read_text()
    texts = [*dashboard_queries(), rules, json.dumps(dashboard()["annotations"])]
    used = {name for text in texts for name in re.findall(r"scorestream_[a-z_]+", text)}
    assert used, "no scorestream series referenced"
    assert used <= exposed, f"not exposed by any worker: {sorted(used - exposed)}"


def test_dashboard_uses_the_provisioned_datasource_and_covers_the_issue_s_panels() -> None:
    datasource = yaml.safe_load(
        (DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    board = dashboard()
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"]
        assert panel["targets"], panel["title"]
    titles = " ".join(p["title"].lower() for p in board["panels"])
    for subject in ("throughput", "lag", "latency", "dead letters", "accuracy", "drift"):
        assert subject in titles
    provider = yaml.safe_load(
        (DOCKER / "grafana" / "provisioning" / "dashboards" / "scorestream.yml").read_text()
    )["providers"][0]
    grafana = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]["grafana"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]
