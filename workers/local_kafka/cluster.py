"""Start, stop and inspect a local Kafka cluster whose processes are tracked by pid files."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import structlog

from workers.kafka_io.admin import wait_for_brokers
from workers.local_kafka.layout import (
    HOST,
    LOG4J2_PROPERTIES,
    ClusterLayout,
    NodeLayout,
    server_properties,
)
from workers.local_kafka.runtime import BrokerSetupError, KafkaRuntime, resolve_runtime
from workers.local_kafka.security import ensure_material

log = structlog.get_logger("scorestream.broker")

# A 2-core, 24 GB laptop: three nodes at 1 GB each leave plenty for the workers.
HEAP_OPTS = ("-Xms256m", "-Xmx1g")
GC_OPTS = (
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node_id: int
    pid: int | None
    port: int
    controller_port: int
    process_alive: bool
    accepting: bool

    @property
    def live(self) -> bool:
        return self.process_alive and self.accepting


@dataclass(frozen=True, slots=True)
class StartResult:
    bootstrap_servers: str
    already_running: bool
    ready_seconds: float
    cluster_id: str
    # Settings a client needs beyond bootstrap.servers (TLS/SASL), and the file holding them.
    client_config: dict[str, str]
    client_config_path: Path | None


def new_cluster_id() -> str:
    """Return a Kafka cluster id: a random UUID in URL-safe base64 without padding."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka's own generator avoids these too
            return text


def read_pid(node: NodeLayout) -> int | None:
    try:
        return int(node.pid_path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def process_alive(pid: int, node: NodeLayout | None = None) -> bool:  # noqa: PLR0911
    """True if pid runs (not a zombie) and, when /proc tells, is this node's Kafka."""
    with contextlib.suppress(ChildProcessError):
        # Reap it if it is our own child (tests start brokers in-process).
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        return True
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False
    if state == "Z":
        # A JVM's main thread turns zombie while its other threads still exit and hold the
        # sockets; it is gone only when no other task of it is left.
        try:
            return len(list((proc / "task").iterdir())) > 1
        except FileNotFoundError:
            return False
    if not cmdline:
        # Exiting: the kernel drops the memory (and cmdline) before closing the sockets.
        return True
    # A recycled pid belongs to some other program: never treat it as our broker.
    return node is None or ("kafka.Kafka" in cmdline and str(node.properties_path) in cmdline)


def port_accepting(port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def port_free(port: int) -> bool:
    """True unless something listens on the port.

    A bind probe would be stricter than Kafka needs: right after a node is SIGKILLed its
    accepted connections linger in FIN_WAIT on the port, which blocks our bind but not the
    JVM's listener (it sets SO_REUSEADDR).
    """
    return not port_accepting(port, timeout_s=0.5)


def status(cluster: ClusterLayout) -> list[NodeStatus]:
    result = []
    for node in cluster.nodes:
        pid = read_pid(node)
        alive = pid is not None and process_alive(pid, node)
        result.append(
            NodeStatus(
                node_id=node.node_id,
                pid=pid if alive else None,
                port=node.port,
                controller_port=node.controller_port,
                process_alive=alive,
                accepting=alive and port_accepting(node.port),
            )
        )
    return result


def _busy_ports(nodes: list[NodeLayout], grace_s: float) -> list[int]:
    """Ports of these nodes that something listens on, after a short grace for ones closing."""
    deadline = time.monotonic() + grace_s
    while True:
        busy = [p for node in nodes for p in (node.port, node.controller_port) if not port_free(p)]
        if not busy or time.monotonic() >= deadline:
            return busy
        time.sleep(0.1)


@dataclass(frozen=True, slots=True)
class RecordedShape:
    """What DATA_DIR/cluster.json says a cluster was first started with."""

    nodes: int
    port: int
    tls: bool
    sasl: bool


def recorded_shape(data_dir: Path) -> RecordedShape | None:
    marker = data_dir / "cluster.json"
    if not marker.exists():
        return None
    saved = json.loads(marker.read_text())
    return RecordedShape(
        int(saved["nodes"]), int(saved["port"]), bool(saved.get("tls")), bool(saved.get("sasl"))
    )


def _check_layout_matches(cluster: ClusterLayout) -> None:
    marker = cluster.data_dir / "cluster.json"
    if not marker.exists():
        return
    saved = json.loads(marker.read_text())
    secured = (saved.get("tls", False), saved.get("sasl", False))
    if secured != (cluster.tls, cluster.sasl):
        flags = " ".join(f for f, on in (("--tls", secured[0]), ("--sasl", secured[1])) if on)
        raise BrokerSetupError(
            f"{cluster.data_dir} holds a cluster started "
            f"{'with ' + flags if flags else 'without --tls/--sasl'}: start it the same way, or "
            "choose another --data-dir"
        )
    if saved["nodes"] != cluster.node_count or saved["port"] != cluster.base_port:
        raise BrokerSetupError(
            f"{cluster.data_dir} holds a cluster of {saved['nodes']} node(s) on port "
            f"{saved['port']}, not {cluster.node_count} on {cluster.base_port}: pass "
            f"--nodes {saved['nodes']} --port {saved['port']}, or choose another --data-dir "
            f"(or run `scorestream broker stop --data-dir {cluster.data_dir}` and delete it)"
        )


def _cluster_id(cluster: ClusterLayout) -> str:
    marker = cluster.data_dir / "cluster.json"
    if marker.exists():
        return str(json.loads(marker.read_text())["cluster_id"])
    cid = new_cluster_id()
    cluster.data_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(
        json.dumps(
            {
                "cluster_id": cid,
                "nodes": cluster.node_count,
                "port": cluster.base_port,
                "tls": cluster.tls,
                "sasl": cluster.sasl,
            }
        )
        + "\n"
    )
    return cid


def _java_base(runtime: KafkaRuntime, cluster: ClusterLayout, node: NodeLayout) -> list[str]:
    return [
        str(runtime.java),
        *HEAP_OPTS,
        *GC_OPTS,
        f"-Dlog4j2.configurationFile={cluster.data_dir / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={node.node_dir / 'logs'}",
        "-cp",
        runtime.classpath,
    ]


def _format_storage(
    runtime: KafkaRuntime,
    cluster: ClusterLayout,
    nodes: list[NodeLayout],
    cid: str,
    extra_args: list[str],
) -> None:
    """Format every node's log dir that has not been formatted yet, in parallel."""
    pending = []
    for node in nodes:
        if (node.log_dirs / "meta.properties").exists():
            continue
        cmd = [
            *_java_base(runtime, cluster, node),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cid,
            "-c",
            str(node.properties_path),
        ]
        if cluster.node_count == 1:
            cmd.append("--standalone")
        cmd += extra_args  # SCRAM users, stored with the cluster's first metadata
        pending.append(
            (node, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        )
    for node, proc in pending:
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise BrokerSetupError(
                f"formatting node {node.node_id} storage failed (exit {proc.returncode}):\n"
                f"{out.decode(errors='replace')[-2000:]}"
            )


def _launch(
    runtime: KafkaRuntime, cluster: ClusterLayout, node: NodeLayout, *, detach: bool
) -> int:
    cmd = [*_java_base(runtime, cluster, node), "kafka.Kafka", str(node.properties_path)]
    with node.log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            # Detached, it outlives the terminal and the CLI; attached (tests), a Ctrl-C on the
            # test run reaches it too instead of leaving a JVM behind.
            start_new_session=detach,
            close_fds=True,
        )
    node.pid_path.write_text(f"{proc.pid}\n")
    return proc.pid


def _log_tail(node: NodeLayout, lines: int = 30) -> str:
    try:
        return "\n".join(node.log_path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def start(
    cluster: ClusterLayout,
    cache_dir: Path,
    kafka_home: str | None = None,
    timeout_s: float = 120.0,
    *,
    detach: bool = True,
) -> StartResult:
    """Start every node that is not running and return once all of them serve requests."""
    began = time.monotonic()
    _check_layout_matches(cluster)
    current = {s.node_id: s for s in status(cluster)}
    to_start = [node for node in cluster.nodes if not current[node.node_id].process_alive]
    # A node that has a pid file but no process was just ours: give its ports time to close.
    recently_ours = any(read_pid(node) is not None for node in to_start)
    busy = _busy_ports(to_start, grace_s=5.0 if recently_ours else 0.0)
    if busy:
        raise BrokerSetupError(
            f"port(s) {', '.join(map(str, busy))} already in use by another program: pass "
            f"--port N (node n uses N+2(n-1) and the next port) or stop that program"
        )
    cid = _cluster_id(cluster)
    material = (
        ensure_material(cluster.data_dir, tls=cluster.tls, sasl=cluster.sasl)
        if cluster.tls or cluster.sasl
        else None
    )
    client_config = material.client_config() if material else {}
    if to_start:
        runtime = resolve_runtime(cache_dir, kafka_home)
        log.info(
            "broker_starting",
            nodes=[n.node_id for n in to_start],
            runtime=runtime.source,
            data_dir=str(cluster.data_dir),
        )
        (cluster.data_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
        for node in to_start:
            node.node_dir.mkdir(parents=True, exist_ok=True)
            lines = material.server_lines(cluster.protocol) if material else []
            # Owner-only: with --tls/--sasl it holds the keystore and inter-broker passwords.
            fd = os.open(node.properties_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(server_properties(cluster, node, lines))
        scram = material.scram_format_args() if material else []
        _format_storage(runtime, cluster, to_start, cid, scram)
        for node in to_start:
            pid = _launch(runtime, cluster, node, detach=detach)
            log.info(
                "broker_node_launched",
                node_id=node.node_id,
                pid=pid,
                port=node.port,
                log=str(node.log_path),
            )

    def check_alive() -> None:
        for node in to_start:
            pid = read_pid(node)
            if pid is None or not process_alive(pid, node):
                raise BrokerSetupError(
                    f"Kafka node {node.node_id} exited during start; its log "
                    f"({node.log_path}) ends with:\n{_log_tail(node)}"
                )

    remaining = timeout_s - (time.monotonic() - began)
    try:
        wait_for_brokers(
            {n.node_id: f"{HOST}:{n.port}" for n in cluster.nodes},
            max(remaining, 5.0),
            check_alive,
            client_config,
        )
    except TimeoutError as exc:
        tails = "\n".join(f"--- node {n.node_id}:\n{_log_tail(n, 10)}" for n in cluster.nodes)
        raise BrokerSetupError(f"{exc}; see the node logs:\n{tails}") from exc
    return StartResult(
        bootstrap_servers=cluster.bootstrap_servers,
        already_running=not to_start,
        ready_seconds=time.monotonic() - began,
        cluster_id=cid,
        client_config=client_config,
        client_config_path=cluster.data_dir / "client.conf" if material else None,
    )


def stop(cluster: ClusterLayout, timeout_s: float = 30.0) -> list[int]:
    """SIGTERM every node by its pid file, SIGKILL those still running after timeout_s.

    Returns the ids of the nodes that were running.
    """
    signalled: list[tuple[NodeLayout, int]] = []
    for node in cluster.nodes:
        pid = read_pid(node)
        if pid is not None and process_alive(pid, node):
            os.kill(pid, signal.SIGTERM)
            signalled.append((node, pid))
    running = list(signalled)
    deadline = time.monotonic() + timeout_s
    while running and time.monotonic() < deadline:
        running = [(n, p) for n, p in running if process_alive(p, n)]
        if running:
            time.sleep(0.1)
    for node, pid in running:
        log.warning("broker_node_killed", node_id=node.node_id, pid=pid, after_s=timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while process_alive(pid, node):
            time.sleep(0.05)
    # Only now: a stop interrupted half-way still finds the pids of what runs.
    for node in cluster.nodes:
        node.pid_path.unlink(missing_ok=True)
    return [n.node_id for n, _ in signalled]
