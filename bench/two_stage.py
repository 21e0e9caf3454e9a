"""The two-stage monitor beside the one-process monitor, on the real broker, in the same run.

    python bench/two_stage.py [--events 200000] [--partitions 4] [--repeat 3] [--quick]

Preloads N predictions and N labels (4 partitions each, as `scorestream bench` (e) does), then
runs, each in its own process(es) and interleaved over --repeat rounds (median kept):

  single     `monitor` (--stage all): joins and aggregates in one process, state on disk
  join x1    one `--stage join` instance: joins, writes N Outcome records and its changelog
  join x2    two `--stage join` instances in one group, started together
  aggregate  one `--stage aggregate` instance reading the N outcomes of a join run

Rates are events (a prediction and its label) per second from the first record read to the
last outcome written (read, for the aggregate). The extra hop's cost is CPU time per event:
join + aggregate against single. Uses SCORESTREAM_BOOTSTRAP_SERVERS when set, otherwise starts
a local broker and stops it. Results go to bench/results/two_stage.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from workers.commands.bench import (
    bench_broker,
    describe_machine,
    machine,
    preload_joined,
    run_monitor,
    usage,
)
from workers.core.monitor import MonitorConfig
from workers.kafka_io.admin import create_topics
from workers.kafka_io.stages import AggregateStage, JoinStage, StageSettings, StageWorker

HERE = Path(__file__).resolve()


class Marks:
    """Wall-clock and CPU marks at the first record and at the end (comparable across
    processes: time.time, not perf_counter)."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.cpu0 = 0.0
        self.last: float | None = None
        self.cpu1 = 0.0

    def watch(self, started: Any, done: Any, stop: threading.Event) -> None:  # noqa: ANN401
        while not stop.is_set():
            if self.first is None and started():
                self.first, self.cpu0 = time.time(), usage()[0]
            if self.first is not None and done():
                self.last, self.cpu1 = time.time(), usage()[0]
                stop.set()
                return
            time.sleep(0.01)

    def result(self) -> dict[str, Any]:
        assert self.first is not None
        assert self.last is not None
        return {"first": self.first, "last": self.last, "cpu_s": self.cpu1 - self.cpu0,
                "peak_rss_mb": round(usage()[1] / 2**20, 1)}  # fmt: skip


def topic_total(bootstrap: str, topic: str, partitions: int) -> Any:  # noqa: ANN401
    """A function giving the records now in `topic` (its high watermarks summed)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-watermarks"})

    def total() -> int:
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
                   for p in range(partitions))  # fmt: skip

    return total


def stage_settings(cfg: dict[str, Any]) -> StageSettings:
    return StageSettings(
        bootstrap_servers=cfg["bootstrap"], predictions_topic=cfg["predictions"],
        labels_topic=cfg["labels"], alerts_topic=cfg["alerts"], outcomes_topic=cfg["outcomes"],
        group_id=cfg["group"], kafka_config={}, config=MonitorConfig(),
        instance_id=cfg["instance"], log_interval_s=3600, checkpoint_interval_s=5,
    )  # fmt: skip


def consumed(worker: StageWorker[Any]) -> int:
    return sum(o for part in list(worker.parts.values()) for o in list(part.offsets.values()))


def run_join(cfg: dict[str, Any]) -> dict[str, Any]:
    worker = JoinStage(stage_settings(cfg))
    outcomes = topic_total(cfg["bootstrap"], cfg["outcomes"], cfg["partitions"])
    marks, stop = Marks(), threading.Event()
    done = lambda: outcomes() >= cfg["events"]  # noqa: E731
    threading.Thread(target=marks.watch, daemon=True,
                     args=(lambda: consumed(worker) > 0, done, stop)).start()  # fmt: skip
    worker.run(stop)
    return marks.result()


def run_aggregate(cfg: dict[str, Any]) -> dict[str, Any]:
    worker = AggregateStage(stage_settings(cfg))
    marks, stop = Marks(), threading.Event()
    done = lambda: consumed(worker) >= cfg["events"]  # noqa: E731
    threading.Thread(target=marks.watch, daemon=True,
                     args=(lambda: consumed(worker) > 0, done, stop)).start()  # fmt: skip
    worker.run(stop)
    return {**marks.result(), "joined": worker.last_counters.get("joined", 0)}


def run_single(cfg: dict[str, Any]) -> dict[str, Any]:
    result = run_monitor(cfg)
    return {"seconds": result["seconds"], "cpu_s": result["cpu_s_per_million"] * 2
            * cfg["events"] / 1e6, "peak_rss_mb": result["peak_rss_mb"],
            "joined": result["joined"]}  # fmt: skip


WORKLOADS = {"join": run_join, "aggregate": run_aggregate, "single": run_single}


def start(workload: str, cfg: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HERE), "--workload", workload, "--config", json.dumps(cfg)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=900)
    lines = [x for x in out.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"workload failed ({proc.returncode}):\n{err[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result


class Bench:
    def __init__(self, args: argparse.Namespace, bootstrap: str) -> None:
        self.args, self.bootstrap = args, bootstrap
        self.run_id = uuid.uuid4().hex[:6]
        n = args.partitions
        self.inputs = {"predictions": f"bench2-{self.run_id}.predictions",
                       "labels": f"bench2-{self.run_id}.labels"}  # fmt: skip
        create_topics(bootstrap, dict.fromkeys(self.inputs.values(), n))
        preload_joined(bootstrap, self.inputs, args.events)
        self.runs: dict[str, list[dict[str, Any]]] = {
            "single": [], "join x1": [], "join x2": [], "aggregate": []}  # fmt: skip

    def cfg(self, name: str) -> dict[str, Any]:
        return {"bootstrap": self.bootstrap, "events": self.args.events,
                "partitions": self.args.partitions, **self.inputs,
                "alerts": f"bench2-{self.run_id}.{name}.alerts",
                "outcomes": f"bench2-{self.run_id}.{name}.outcomes",
                "group": f"bench2-{self.run_id}-{name}", "instance": "i1"}  # fmt: skip

    def round(self, i: int) -> None:
        single = finish(start("single", self.cfg(f"single{i}")))
        self.runs["single"].append({**single, "events_per_s": self.args.events
                                    / single["seconds"]})  # fmt: skip
        one = self.cfg(f"one{i}")
        self.runs["join x1"].append(self._joins([one]))
        two = self.cfg(f"two{i}")
        self.runs["join x2"].append(self._joins([two, {**two, "instance": "i2"}]))
        agg = finish(start("aggregate", {**one, "instance": "a1"}))
        assert agg["joined"] == self.args.events, agg
        self.runs["aggregate"].append(self._rate([agg]))

    def _joins(self, cfgs: list[dict[str, Any]]) -> dict[str, Any]:
        # The stage's topics made beforehand, so instances started together do not race.
        c, n = cfgs[0], self.args.partitions
        create_topics(self.bootstrap, {c["outcomes"]: n, f"{c['group']}-labels-repartition": n})
        create_topics(self.bootstrap, {f"{c['group']}-join-changelog": n},
                      config={"cleanup.policy": "compact"})  # fmt: skip
        procs = [start("join", cfg) for cfg in cfgs]
        # Sampled from outside as well: the rate once every instance holds its partitions
        # (30% to 90% of the outcomes), apart from the start and any rebalance in it.
        total, n_events = topic_total(self.bootstrap, c["outcomes"], n), self.args.events
        samples: list[tuple[float, int]] = []
        while not samples or samples[-1][1] < n_events:
            samples.append((time.time(), total()))
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.05)
        result = self._rate([finish(p) for p in procs])

        def when(share: float) -> float:
            return next(t for t, count in samples if count >= share * n_events)

        result["steady_events_per_s"] = 0.6 * n_events / max(when(0.9) - when(0.3), 1e-9)
        return result

    def _rate(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        seconds = max(r["last"] for r in results) - min(r["first"] for r in results)
        return {"seconds": round(seconds, 3), "events_per_s": self.args.events / seconds,
                "cpu_s": sum(r["cpu_s"] for r in results),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in results)}  # fmt: skip

    def report(self) -> dict[str, Any]:
        n = self.args.events
        medians: dict[str, dict[str, Any]] = {}
        for name, runs in self.runs.items():
            ordered = sorted(runs, key=lambda r: float(r["events_per_s"]))
            rates = [round(r["events_per_s"]) for r in runs]
            medians[name] = {**ordered[len(ordered) // 2], "runs_events_per_s": rates}
        print(f"\n{'workload':12} {'events/s':>10} {'x single':>9} {'CPU us/event':>13} "
              f"{'RSS MB':>7}   runs")  # fmt: skip
        single = medians["single"]
        for name, m in medians.items():
            print(f"{name:12} {m['events_per_s']:>10.0f} "
                  f"{m['events_per_s'] / single['events_per_s']:>9.2f} "
                  f"{m['cpu_s'] / n * 1e6:>13.1f} {m['peak_rss_mb']:>7.0f}   "
                  f"{m['runs_events_per_s']}")  # fmt: skip
        two_stage_cpu = (medians["join x1"]["cpu_s"] + medians["aggregate"]["cpu_s"]) / n * 1e6
        single_cpu = single["cpu_s"] / n * 1e6
        print(f"\nCPU per event: join + aggregate {two_stage_cpu:.1f} us against single "
              f"{single_cpu:.1f} us: the extra hop costs {two_stage_cpu - single_cpu:+.1f} us "
              f"({two_stage_cpu / single_cpu:.2f}x)")  # fmt: skip
        steady = {k: medians[k]["steady_events_per_s"] for k in ("join x1", "join x2")}
        scaling = steady["join x2"] / steady["join x1"]
        print(f"steady (30% to 90% of the outcomes): join x1 {steady['join x1']:.0f}/s, join x2 "
              f"{steady['join x2']:.0f}/s: x{scaling:.2f} on {os.cpu_count()} cores shared "
              "with the broker (the aggregate runs apart, at its own rate above)")  # fmt: skip
        return {"machine": machine(), "events": n, "partitions": self.args.partitions,
                "workloads": medians, "hop_cpu_us_per_event": two_stage_cpu - single_cpu,
                "two_stage_cpu_us_per_event": two_stage_cpu,
                "single_cpu_us_per_event": single_cpu, "join_scaling_x2": scaling}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events preloaded (200000)")
    parser.add_argument("--partitions", type=int, default=4, help="partitions per topic (4)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds, median kept (3)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run for CI")
    parser.add_argument("--out", type=Path, default=Path("bench/results/two_stage.json"))
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workload:
        print("RESULT " + json.dumps(WORKLOADS[args.workload](json.loads(args.config))))
        return 0
    if args.quick:
        args.events, args.repeat = 5000, 1
    with bench_broker("scorestream-bench2-", 39192) as (bootstrap, _):
        print("machine:", describe_machine(machine()))
        bench = Bench(args, bootstrap)
        for i in range(args.repeat):
            bench.round(i)
            done = ", ".join(f"{n} {r[-1]['events_per_s']:.0f}/s" for n, r in bench.runs.items())
            print(f"round {i + 1}/{args.repeat}: {done}")
        results = bench.report()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
