"""Throughput, latency and memory of scorestream beside a bare passthrough and a naive loop.

Everything runs against a real broker, in the same run, with the same client settings:

  a. passthrough  consume in batches, produce the raw bytes to another topic (the ceiling)
  b. naive        poll one message, json.loads, predict_proba on one row, json.dumps, produce,
                  commit per message (the hand-written loop scorestream replaces)
  c. infer-lr     scorestream's inference worker, logistic-regression pipeline
  d. infer-hgb    scorestream's inference worker, 100-tree HistGradientBoosting
  e. monitor      scorestream's monitor on a joined prediction + label stream
  f. infer-lr-eos (c) with --processing-guarantee exactly-once (what transactions cost)
  g. infer-mixed  a notebook's pipeline: 20 numbers (gaps imputed, scaled) and 4 string
                  categories of 5 to 200 values (one-hot) through a ColumnTransformer into
                  LogisticRegression, registered with `register`; its events carry strings, nulls
                  and unseen categories (same size class as (a)'s: ~560 B against ~500 B)
  h. infer-hgb-reg scorestream's inference worker, 100-tree HistGradientBoostingRegressor

Each workload runs in its own process (so CPU seconds and peak RSS are its own) and is timed
from its first record to its last. Latency: events produced at 50% of (c)'s measured maximum
rate, from the producer's timestamp to the output's broker (LogAppendTime) timestamp, for (c)
and (a) at the same rate, each for --latency-seconds, alternating over --repeat rounds. Both
consume as the inference worker does: every message already fetched, without waiting to fill a
batch. Memory: bytes per pending prediction in the monitor's join at 1M.

    scorestream bench [--events 200000] [--partitions 4] [--out FILE] [--quick] [--only c,latency]

Uses SCORESTREAM_BOOTSTRAP_SERVERS when set, otherwise starts a local broker and stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

# BLAS/OpenMP threads fight librdkafka's for two cores; the workers pin them to 1 as well.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402

from workers.commands.shared import add_logging_options  # noqa: E402

FEATURES = [f"feature_{i:02d}" for i in range(20)]
# (g): four string columns of 5, 20, 50 and 200 categories, as FIELD_NOTES measured.
CATEGORY_SIZES = {"country": 5, "device": 20, "plan": 50, "region": 200}


# -- shared helpers -------------------------------------------------------------------------


def client_settings(bootstrap: str) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap}


def consumer_settings(bootstrap: str) -> dict[str, Any]:
    """What every workload's consumer shares (the workers set the same by default)."""
    return {**client_settings(bootstrap), "fetch.queue.backoff.ms": 10}


def make_events(n: int, seed: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    rng = np.random.default_rng(seed)
    values = np.round(rng.normal(0, 1, (n, len(FEATURES))), 4).tolist()
    out = []
    for i, row in enumerate(values, start=start):
        event_id = f"evt-{i:09d}"
        body = {"event_id": event_id, "features": dict(zip(FEATURES, row, strict=True))}
        out.append((event_id.encode(), json.dumps(body).encode()))
    return out


def mixed_table(n: int, seed: int) -> Any:  # noqa: ANN401 - a DataFrame
    """(g)'s rows: the 20 numbers with 2% gaps and the four string columns."""
    import pandas as pd  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    numbers = np.round(rng.normal(0, 1, (n, len(FEATURES))), 4)
    numbers[rng.random(numbers.shape) < 0.02] = np.nan
    frame = pd.DataFrame(numbers, columns=FEATURES)
    for column, size in CATEGORY_SIZES.items():
        frame[column] = [f"{column}{i}" for i in rng.integers(0, size, n)]
    return frame


def make_mixed_events(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    """Events for (g): strings, nulls and (one in a hundred) a category never seen in training."""
    frame = mixed_table(n, seed)
    rng = np.random.default_rng(seed + 1)
    unseen = rng.random(n) < 0.01
    out = []
    for i, row in enumerate(frame.itertuples(index=False, name=None)):
        features = {
            name: (None if isinstance(v, float) and v != v else v)  # noqa: PLR0124 - NaN
            for name, v in zip(frame.columns, row, strict=True)
        }
        if unseen[i]:
            features["plan"] = "plan-new"
        event_id = f"mix-{i:09d}"
        out.append(
            (event_id.encode(), json.dumps({"event_id": event_id, "features": features}).encode())
        )
    return out


def usage() -> tuple[float, int]:
    """CPU seconds and peak RSS of this process (VmHWM: ru_maxrss would carry the parent's)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    with open("/proc/self/status") as f:  # noqa: PTH123
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return r.ru_utime + r.ru_stime, hwm * 1024


class Clock:
    """Marks the first and the n-th processed record, with CPU time at both."""

    def __init__(self) -> None:
        self.t0: float | None = None
        self.cpu0 = 0.0
        self.t1: float | None = None
        self.cpu1 = 0.0

    def start(self) -> None:
        if self.t0 is None:
            self.t0, self.cpu0 = time.perf_counter(), usage()[0]

    def stop(self) -> None:
        if self.t1 is None:
            self.t1, self.cpu1 = time.perf_counter(), usage()[0]

    def result(self, events: int) -> dict[str, Any]:
        assert self.t0 is not None
        assert self.t1 is not None
        seconds = self.t1 - self.t0
        return {
            "events": events,
            "seconds": round(seconds, 3),
            "events_per_s": round(events / seconds, 1),
            "cpu_s_per_million": round((self.cpu1 - self.cpu0) / events * 1e6, 2),
            "peak_rss_mb": round(usage()[1] / 2**20, 1),
        }


def watch(counter: Callable[[], int], n: int, clock: Clock, stop: threading.Event) -> None:
    """Mark the clock from another thread as the counter moves; stop at n."""
    while not stop.is_set():
        seen = counter()
        if seen > 0:
            clock.start()
        if seen >= n:
            clock.stop()
            stop.set()
            return
        time.sleep(0.01)  # often enough to time, rarely enough not to steal the GIL


# -- workloads (each in its own process) ----------------------------------------------------


def run_passthrough(cfg: dict[str, Any]) -> dict[str, Any]:
    from confluent_kafka import Consumer, Producer  # noqa: PLC0415

    from workers.kafka_io.clients import next_batch  # noqa: PLC0415

    base = client_settings(cfg["bootstrap"])
    consumer = Consumer({**consumer_settings(cfg["bootstrap"]),
                         "group.id": f"pass-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.offset.store": False,
                         "fetch.wait.max.ms": 10})  # fmt: skip
    producer = Producer({**base, "enable.idempotence": True, "linger.ms": 5,
                         "batch.num.messages": 10000, "delivery.report.only.error": True,
                         "queue.buffering.max.messages": 1_000_000})  # fmt: skip
    consumer.subscribe([cfg["input"]], on_assign=lambda *_: print("READY", flush=True))
    clock, seen, n, out = Clock(), 0, cfg["events"], cfg["output"]
    deadline = time.monotonic() + cfg.get("max_seconds", 300)
    while seen < n and time.monotonic() < deadline:
        msgs = next_batch(consumer, 1000, 0.02)  # batched as the workers batch
        if not msgs:
            continue
        clock.start()
        for m in msgs:
            try:
                producer.produce(out, m.value(), m.key())
            except BufferError:
                producer.poll(0.05)
                producer.produce(out, m.value(), m.key())
        producer.poll(0)
        consumer.store_offsets(msgs[-1])
        seen += len(msgs)
    producer.flush(60)
    clock.stop()
    consumer.close()
    return clock.result(seen)


def run_naive(cfg: dict[str, Any]) -> dict[str, Any]:
    import joblib  # noqa: PLC0415
    from confluent_kafka import Consumer, Producer  # noqa: PLC0415

    model = joblib.load(cfg["model_file"])
    base = client_settings(cfg["bootstrap"])
    consumer = Consumer(
        {
            **base,
            "group.id": f"naive-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    producer = Producer({**base, "enable.idempotence": True})
    consumer.subscribe([cfg["input"]])
    clock, seen, n = Clock(), 0, cfg["events"]
    while seen < n:
        msg = consumer.poll(0.1)
        if msg is None or msg.error() is not None:
            continue
        clock.start()
        event = json.loads(msg.value() or b"")
        row = [[event["features"][f] for f in FEATURES]]
        proba = model.predict_proba(row)[0]
        best = int(proba.argmax())
        prediction = {
            "event_id": event["event_id"],
            "label": int(model.classes_[best]),
            "score": float(proba[best]),
        }
        producer.produce(cfg["output"], json.dumps(prediction).encode(), msg.key())
        producer.poll(0)
        consumer.commit(message=msg, asynchronous=True)
        seen += 1
    producer.flush(60)
    clock.stop()
    consumer.close()
    return clock.result(seen)


def run_infer(cfg: dict[str, Any]) -> dict[str, Any]:
    from workers.kafka_io.infer_loop import InferenceWorker, InferSettings  # noqa: PLC0415
    from workers.model_store import load_newest_good  # noqa: PLC0415

    settings = InferSettings(
        bootstrap_servers=cfg["bootstrap"], input_topic=cfg["input"], output_topic=cfg["output"],
        dlq_topic=cfg["output"] + ".dlq", group_id=f"infer-{uuid.uuid4().hex}",
        batch_size=1000, batch_timeout_ms=20, kafka_config=cfg.get("kafka_config", {}),
        max_value_bytes=1_048_576,
        log_interval_s=3600, confirm_interval_s=cfg.get("confirm_interval_s", 0.5),
        exactly_once=cfg.get("exactly_once", False),
    )  # fmt: skip
    worker = InferenceWorker(settings, load_newest_good(Path(cfg["model_dir"]), None))
    assign = worker._on_assign  # noqa: SLF001 - announce readiness to the latency driver

    def on_assign(*a: Any) -> None:  # noqa: ANN401
        assign(*a)
        print("READY", flush=True)

    worker._on_assign = on_assign  # type: ignore[method-assign,assignment]  # noqa: SLF001
    clock, stop = Clock(), threading.Event()
    threading.Thread(
        target=watch, args=(lambda: worker.stats.consumed, cfg["events"], clock, stop), daemon=True
    ).start()
    if cfg.get("max_seconds"):
        limit = threading.Timer(cfg["max_seconds"], stop.set)
        limit.daemon = True  # must not keep the process alive once the work is done
        limit.start()
    worker.run(stop)  # returns after the final flush and commit
    clock.stop()
    return clock.result(worker.stats.consumed)


def run_monitor(cfg: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="scorestream-bench-monitor-") as state_dir:
        return _run_monitor(cfg, Path(state_dir))


def _run_monitor(cfg: dict[str, Any], state_dir: Path) -> dict[str, Any]:
    from workers.core.monitor import MonitorConfig  # noqa: PLC0415
    from workers.kafka_io.monitor_loop import MonitorSettings, MonitorWorker  # noqa: PLC0415

    settings = MonitorSettings(
        bootstrap_servers=cfg["bootstrap"], predictions_topic=cfg["predictions"],
        labels_topic=cfg["labels"], alerts_topic=cfg["alerts"],
        group_id=f"monitor-{uuid.uuid4().hex}", kafka_config={},
        state_dir=state_dir, config=MonitorConfig(), log_interval_s=3600,
        checkpoint_interval_s=5,
    )  # fmt: skip
    worker = MonitorWorker(settings)
    clock, stop = Clock(), threading.Event()
    # A prediction and a label per event; each label is read twice, from the labels topic
    # and re-keyed from the repartition topic, and that second read is when it can join.
    records = 2 * cfg["events"]
    joined_inputs = (settings.predictions_topic, settings.repartition_topic)

    def consumed() -> int:
        return sum(o for (topic, _), o in list(worker.offsets.items()) if topic in joined_inputs)

    threading.Thread(target=watch, args=(consumed, records, clock, stop), daemon=True).start()
    worker.run(stop)
    clock.stop()
    result = clock.result(records)
    result["joined"] = worker.last_counters.get("joined", 0)
    return result


FIRST_LATENCY_EVENT = 10_000_000  # event ids of the latency runs start here


def run_latency(cfg: dict[str, Any]) -> dict[str, Any]:
    """Produce at a fixed rate while a worker (infer or passthrough) runs; measure latency."""
    from confluent_kafka import Producer  # noqa: PLC0415

    events = make_events(cfg["events"], seed=9, start=FIRST_LATENCY_EVENT)
    # linger.ms as the workers' producers: at 1 ms an idempotent producer's five in-flight
    # requests per partition carry too little each and the stream queues up at ~90k/s.
    producer = Producer({**client_settings(cfg["bootstrap"]), "enable.idempotence": True,
                         "linger.ms": 5, "queue.buffering.max.messages": 2_000_000})  # fmt: skip
    # Connected, metadata known, producer id acquired (a fresh broker may answer "coordinator
    # load in progress" for a second): otherwise the first events wait in this producer's
    # queue and the backlog is blamed on the worker under test.
    producer.produce(cfg["warmup"], b"warm-up")
    producer.flush(30)
    producer.list_topics(cfg["input"], timeout=30)
    worker = subprocess.Popen(
        [sys.executable, "-m", "workers.commands.bench", "--workload", cfg["worker"], "--config",
         json.dumps({**cfg["worker_cfg"], "events": len(events), "max_seconds": 120})],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert worker.stdout is not None
    for line in worker.stdout:  # the worker has joined its group: the stream may start
        if line.startswith("READY"):
            break
    sent_ms = send_paced(producer, cfg["input"], events, cfg["rate"])
    worker_out, _ = worker.communicate(timeout=180)
    if worker.returncode != 0:
        raise RuntimeError(f"latency worker {cfg['worker']} exited {worker.returncode}")
    worker_result = result_line(worker_out)
    if worker_result is None:
        raise RuntimeError(f"latency worker {cfg['worker']} printed no result")
    # The first fifth warms up (group join, first fetch, JIT in the broker): not measured.
    first = len(events) // 5
    sent, latency = output_latencies(cfg["bootstrap"], cfg["output"], sent_ms, first)
    return {
        "rate": cfg["rate"],
        "events": len(latency),
        "p50_ms": float(np.percentile(latency, 50)),
        "p99_ms": float(np.percentile(latency, 99)),
        "p999_ms": float(np.percentile(latency, 99.9)),
        # Which second a high percentile came from: one stall, or every second alike.
        "worst_ms_by_second": worst_by_second(sent, latency),
        "worker_cpu_s_per_million": worker_result["cpu_s_per_million"],
        # The longest the generator went without sending: above a few ms it fell behind its
        # schedule itself, and that stall is in the latencies too.
        "send_gap_max_ms": int(np.diff(sent_ms).max(initial=0)),
    }


def send_paced(
    producer: Any,  # noqa: ANN401 - confluent_kafka.Producer
    topic: str,
    events: list[tuple[bytes, bytes]],
    rate: int,
) -> np.ndarray:
    """Produce `events` at `rate` per second; return when each was handed to the producer."""
    sent_ms = np.zeros(len(events), dtype=np.int64)
    # Nothing allocated per event here, and no cycle collection: a collection walking the
    # million event objects, or a dict of send times resizing, pauses this process for a
    # tenth of a second, and the events sent meanwhile would be late through no fault of the
    # worker under test.
    gc.collect()
    gc.freeze()
    gc.disable()
    start, i = time.perf_counter(), 0
    produce = producer.produce
    # Paced in 1 ms steps: each step produces what is due by then and sleeps. Spinning on the
    # clock per event would burn a core the broker and the worker under test need.
    try:
        while i < len(events):
            due = min(len(events), int((time.perf_counter() - start) * rate) + 1)
            now_ms = time.time_ns() // 1_000_000
            sent_ms[i:due] = now_ms
            for key, value in events[i:due]:
                while True:
                    try:
                        produce(topic, value, key, timestamp=now_ms)
                        break
                    except BufferError:
                        producer.poll(0.001)
            i = due
            producer.poll(0)
            time.sleep(0.001)
        producer.flush(30)
    finally:
        gc.enable()
        gc.unfreeze()
    return sent_ms


def output_latencies(
    bootstrap: str, topic: str, sent_ms: np.ndarray, first: int
) -> tuple[np.ndarray, np.ndarray]:
    """Send time and latency (output's broker timestamp minus send time) of events from
    index `first` on, read from the output topic."""
    from workers.kafka_io.roundtrip import read_to_end  # noqa: PLC0415

    indices: list[int] = []
    stamps: list[int] = []
    for record in read_to_end(bootstrap, topic):
        if record.key is None:
            continue
        index = int(record.key[4:]) - FIRST_LATENCY_EVENT  # "evt-000000042"
        if index >= first:
            indices.append(index)
            stamps.append(record.timestamp_ms)
    wanted = len(sent_ms) - first
    if len(indices) < wanted:
        raise RuntimeError(f"{topic}: {len(indices)} of {wanted} outputs")
    sent = sent_ms[indices]
    return sent, np.asarray(stamps, dtype=np.int64) - sent


def worst_by_second(sent: np.ndarray, latency: np.ndarray) -> list[int]:
    second = (sent - sent.min()) // 1000
    worst = np.full(int(second.max()) + 1, -1, dtype=np.int64)
    np.maximum.at(worst, second, latency)
    return [int(x) for x in worst]


def run_memory(cfg: dict[str, Any]) -> dict[str, Any]:
    """Bytes per pending prediction in the monitor's join, at `pending` of them."""
    from workers.core.label_join import LabelJoin, PendingPrediction  # noqa: PLC0415

    def rss() -> int:
        with open("/proc/self/statm") as f:  # noqa: PTH123
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    n = cfg["pending"]
    join = LabelJoin(3_600_000, 600_000, n + 1)
    gc.collect()
    before = rss()
    model = sys.intern("fraud-model")
    for i in range(n):
        join.add_prediction(
            f"evt-{i:09d}", PendingPrediction(model, 3, i % 2 == 0, 1_700_000_000_000 + i, "1")
        )
    gc.collect()
    after = rss()
    assert len(join.predictions) == n
    return {"pending": n, "bytes_per_pending": round((after - before) / n, 1)}


WORKLOADS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "passthrough": run_passthrough,
    "naive": run_naive,
    "infer": run_infer,
    "monitor": run_monitor,
    "latency": run_latency,
    "memory": run_memory,
}


def in_subprocess(workload: str, cfg: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "workers.commands.bench", "--workload", workload, "--config",
         json.dumps(cfg)],
        capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip
    result = result_line(proc.stdout)
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"{workload} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return result


def result_line(stdout: str) -> dict[str, Any] | None:
    """The last `RESULT {json}` line a workload process printed (`main` prints it)."""
    lines = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(lines[-1][len("RESULT ") :]) if lines else None


# -- the orchestration ----------------------------------------------------------------------


def prepare_models(root: Path) -> dict[str, Path]:
    from sklearn.compose import ColumnTransformer  # noqa: PLC0415
    from sklearn.datasets import make_classification  # noqa: PLC0415
    from sklearn.ensemble import HistGradientBoostingRegressor  # noqa: PLC0415
    from sklearn.impute import SimpleImputer  # noqa: PLC0415
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from sklearn.pipeline import Pipeline, make_pipeline  # noqa: PLC0415
    from sklearn.preprocessing import OneHotEncoder, StandardScaler  # noqa: PLC0415

    from workers.commands.train import Dataset, train_on  # noqa: PLC0415
    from workers.registry import register  # noqa: PLC0415

    x, y = make_classification(n_samples=20_000, n_features=20, n_informative=10, random_state=0)
    data = Dataset("synthetic20", FEATURES, x.astype(np.float64), y)
    # (g): a pipeline as a notebook writes it, fitted on a DataFrame with strings and gaps.
    table = mixed_table(20_000, seed=3)
    target = (np.nan_to_num(table[FEATURES[:5]].to_numpy()).sum(axis=1)
              + (table["country"] == "country1") > 0).astype(int)  # fmt: skip
    prepare = ColumnTransformer([
        ("numbers", make_pipeline(SimpleImputer(), StandardScaler()), FEATURES),
        ("categories", OneHotEncoder(handle_unknown="ignore"), list(CATEGORY_SIZES)),
    ])  # fmt: skip
    mixed = Pipeline([("prepare", prepare), ("classify", LogisticRegression(max_iter=500))])
    mixed.fit(table, target)
    regressor = HistGradientBoostingRegressor(max_iter=100, early_stopping=False, random_state=0)
    regressor.fit(x, x[:, :5].sum(axis=1) + np.sin(x[:, 5]))
    return {
        "lr": train_on("bench_lr", root, data, estimator="logistic_regression"),
        "hgb": train_on("bench_hgb", root, data, estimator="hist_gradient_boosting"),
        "mixed": register(mixed, name="bench_mixed", models_dir=root),
        "hgb_reg": register(regressor, name="bench_hgb_reg", models_dir=root, features=FEATURES),
    }


def preload_joined(bootstrap: str, topics: dict[str, str], n: int) -> None:
    from workers.kafka_io.roundtrip import produce_all  # noqa: PLC0415

    base = 1_700_000_000_000
    predictions, labels = [], []
    for i in range(n):
        event_id = f"evt-{i:09d}"
        p = {"event_id": event_id, "model_name": "bench_lr", "model_version": 1,
             "label": i % 2, "score": 0.8, "probabilities": {"0": 0.2, "1": 0.8},
             "event_time": base + i, "scored_at": base + i}  # fmt: skip
        predictions.append((event_id.encode(), json.dumps(p).encode()))
        label = {"event_id": event_id, "label": (i // 3) % 2, "label_time": base + i + 5}
        labels.append((event_id.encode(), json.dumps(label).encode()))
    produce_all(bootstrap, topics["predictions"], predictions)
    produce_all(bootstrap, topics["labels"], labels)


WORKLOAD_KEYS = ("a", "b", "c", "d", "e", "f", "g", "h", "latency", "memory")


def add_parser(commands: Any, environ: Mapping[str, str]) -> None:  # noqa: ANN401
    bench = commands.add_parser(
        "bench",
        help="measure throughput, latency and memory beside a passthrough and a naive loop",
        description="Against a real broker (SCORESTREAM_BOOTSTRAP_SERVERS, or a local one "
        "started on port 39092 and stopped after): preload --events events, then measure "
        "(a) a bare passthrough, (b) a naive one-message loop, (c) infer with logistic "
        "regression, (d) infer with 100-tree HistGradientBoosting, (e) the monitor, (f) (c) "
        "exactly-once; latency "
        "at half of (c)'s maximum beside (a); bytes per pending prediction in the monitor. "
        "Prints a table with PASS/MISS per target and writes --out. Takes about 5 minutes "
        "(--quick: seconds). Exit 1 when a target is missed.",
    )
    add_arguments(bench)
    add_logging_options(bench, environ)
    bench.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace, _environ: Mapping[str, str]) -> int:
    return run(args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench's options: shared by `scorestream bench` and `python -m workers.commands.bench`."""
    parser.add_argument("--events", type=int, default=200_000, help="events preloaded (200000)")
    parser.add_argument("--partitions", type=int, default=4, help="partitions per topic (4)")
    parser.add_argument("--naive-events", type=int, default=5000, help="events for (b) (5000)")
    parser.add_argument("--pending", type=int, default=1_000_000,
                        help="pending predictions for the memory figure (1000000)")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3, help="runs per workload, median kept (3)")
    parser.add_argument(
        "--only",
        default=",".join(WORKLOAD_KEYS),
        help="comma-separated subset of a,b,c,d,e,f,g,h,latency,memory (all; f is (c) with "
        "--processing-guarantee exactly-once); latency needs c's "
        "maximum and measures it when c is not listed",
    )
    parser.add_argument(
        "--latency-rate",
        type=int,
        help="events/s for the latency runs (default: half of (c)'s measured maximum)",
    )
    parser.add_argument(
        "--latency-seconds",
        type=float,
        default=10.0,
        help="how long each latency run streams; the first fifth is not measured (10)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run for CI")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench/results/throughput.json"),
        help="where the JSON results go (bench/results/throughput.json)",
    )


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:  # noqa: PTH123
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gb": round(memory_gb, 1),
            "python": sys.version.split()[0], "platform": platform.platform()}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workload:
        print("RESULT " + json.dumps(WORKLOADS[args.workload](json.loads(args.config))))
        return 0
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Start a broker unless one is configured, run the selected workloads, report, save."""
    if args.quick:
        args.events, args.naive_events, args.pending, args.repeat = 5000, 300, 20_000, 1
        args.latency_seconds = 1.0
    only = {k.strip() for k in args.only.split(",") if k.strip()}
    if unknown := only - set(WORKLOAD_KEYS):
        print(f"--only: unknown {sorted(unknown)}; choose from {','.join(WORKLOAD_KEYS)}")
        return 2
    results: dict[str, Any] = {"machine": machine(), "events": args.events,
                               "partitions": args.partitions, "workloads": {}}  # fmt: skip
    with bench_broker("scorestream-bench-", 39092) as (bootstrap, scratch):
        print("machine:", describe_machine(results["machine"]))
        Bench(args, bootstrap, scratch, results).run(only)
    ok = report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {args.out}")
    return 0 if ok or args.quick else 1


@contextlib.contextmanager
def bench_broker(prefix: str, port: int) -> Iterator[tuple[str, Path]]:
    """The bootstrap servers to bench against and a scratch folder: the broker of
    SCORESTREAM_BOOTSTRAP_SERVERS when set, else one started here (on `port`) and stopped at
    the end; the folder is removed at the end (the broker's data, the models: gigabytes after
    a full run)."""
    from workers.local_kafka import cluster  # noqa: PLC0415
    from workers.local_kafka.layout import ClusterLayout  # noqa: PLC0415
    from workers.local_kafka.runtime import default_cache_dir  # noqa: PLC0415

    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    bootstrap = os.environ.get("SCORESTREAM_BOOTSTRAP_SERVERS")
    layout = None
    try:
        if not bootstrap:
            layout = ClusterLayout(1, port, scratch / "kafka")
            bootstrap = cluster.start(layout, default_cache_dir(), os.environ.get("KAFKA_HOME"),
                                      detach=False).bootstrap_servers  # fmt: skip
        yield bootstrap, scratch
    finally:
        if layout is not None:
            cluster.stop(layout)
        shutil.rmtree(scratch, ignore_errors=True)


def describe_machine(m: dict[str, Any]) -> str:
    return f"{m['cpus']} CPUs ({m['cpu']}), {m['memory_gb']} GB, Python {m['python']}"


class Bench:
    def __init__(
        self, args: argparse.Namespace, bootstrap: str, scratch: Path, results: dict[str, Any]
    ) -> None:
        self.args = args
        self.bootstrap = bootstrap
        self.results = results
        self.run_id = uuid.uuid4().hex[:6]
        self.models = prepare_models(scratch / "models")
        self.common: dict[str, Any] = {"bootstrap": bootstrap, "events": args.events}
        # Topics of the run in progress, deleted when it ends: a full bench writes tens of
        # gigabytes (a latency run alone streams a million events in and out).
        self.scratch_topics: list[str] = []

    def topic(self, name: str, *, dlq: bool = True, config: dict[str, str] | None = None) -> str:
        """A topic for one run, deleted by `drop_topics` after it."""
        topic = self.shared_topic(name, dlq=dlq, config=config)
        self.scratch_topics += [topic, topic + ".dlq"] if dlq else [topic]
        return topic

    def shared_topic(
        self, name: str, *, dlq: bool = False, config: dict[str, str] | None = None
    ) -> str:
        """A topic kept for the whole bench (the preloaded inputs)."""
        from workers.kafka_io.admin import create_topics  # noqa: PLC0415

        topic = f"bench-{self.run_id}.{name}"
        wanted = {topic: self.args.partitions} | ({topic + ".dlq": 1} if dlq else {})
        create_topics(self.bootstrap, wanted, config=config)
        return topic

    def drop_topics(self) -> None:
        from workers.kafka_io.admin import admin_client  # noqa: PLC0415

        if not self.scratch_topics:
            return
        client = admin_client(self.bootstrap)  # alive until the futures are done
        for future in client.delete_topics(self.scratch_topics).values():
            future.result(timeout=60)
        self.scratch_topics = []

    def run_once(self, workload: str, cfg: dict[str, Any]) -> dict[str, Any]:
        """One workload in its own process; its topics are deleted afterwards."""
        try:
            return in_subprocess(workload, cfg)
        finally:
            self.drop_topics()

    def run(self, only: set[str]) -> None:
        from workers.kafka_io.roundtrip import produce_all  # noqa: PLC0415

        w = self.results["workloads"]
        if only & {"a", "b", "c", "d", "h", "latency"}:
            source = self.shared_topic("features")
            events = make_events(self.args.events, seed=1)
            self.results["event_bytes"] = round(sum(len(v) for _, v in events) / len(events), 1)
            produce_all(self.bootstrap, source, events)
            print(f"preloaded {len(events)} events of ~{self.results['event_bytes']:.0f} B")
            self.common["input"] = source
            # A broker just started runs its JIT cold: warm it with one unmeasured pass of each
            # kind, or whichever workload runs first is slowed by the broker, not by itself.
            self.run_once("passthrough", {**self.common, "output": self.topic("warm-pass")})
            self.run_once("infer", self.infer_cfg("lr", "warm-infer"))
        if "b" in only:
            w["b naive"] = self.run_once("naive", {
                **self.common, "events": self.args.naive_events, "output": self.topic("naive"),
                "model_file": str(self.models["lr"] / "model.joblib")})  # fmt: skip
            print("b", w["b naive"])
        self.measure_in_rounds(self.rounds(only))
        if "latency" in only:
            self.latency(self.args.latency_rate or int(w["c infer-lr"]["events_per_s"] * 0.5))
        if "memory" in only:
            self.results["memory"] = in_subprocess("memory", {"pending": self.args.pending})
            print("memory", self.results["memory"])

    def rounds(self, only: set[str]) -> list[tuple[str, str, Callable[[int], dict[str, Any]]]]:
        """The throughput workloads asked for: (name, worker, config of round i)."""
        from workers.kafka_io.roundtrip import produce_all  # noqa: PLC0415

        rounds: list[tuple[str, str, Callable[[int], dict[str, Any]]]] = []
        if "a" in only:
            rounds.append(("a passthrough", "passthrough", lambda i: {
                **self.common, "output": self.topic(f"pass{i}")}))  # fmt: skip
        if "c" in only or ("latency" in only and not self.args.latency_rate):
            rounds.append(("c infer-lr", "infer", lambda i: self.infer_cfg("lr", f"lr{i}")))
        if "d" in only:
            rounds.append(("d infer-hgb", "infer", lambda i: self.infer_cfg("hgb", f"hgb{i}")))
        if "f" in only:
            rounds.append(("f infer-lr exactly-once", "infer", lambda i: {
                **self.infer_cfg("lr", f"eos{i}"), "exactly_once": True}))  # fmt: skip
        if "g" in only:
            mixed_source = self.shared_topic("mixed-features")
            produce_all(self.bootstrap, mixed_source, make_mixed_events(self.args.events, seed=2))
            rounds.append(("g infer-mixed", "infer", lambda i: {
                **self.infer_cfg("mixed", f"mixed{i}"), "input": mixed_source}))  # fmt: skip
        if "h" in only:
            rounds.append(("h infer-hgb-reg", "infer",
                           lambda i: self.infer_cfg("hgb_reg", f"hgbreg{i}")))  # fmt: skip
        if "e" in only:
            joined = {"predictions": self.shared_topic("predictions"),
                      "labels": self.shared_topic("labels")}  # fmt: skip
            preload_joined(self.bootstrap, joined, self.args.events)
            rounds.append(("e monitor", "monitor", lambda i: {
                **self.common, **joined,
                "alerts": self.topic(f"alerts{i}", dlq=False)}))  # fmt: skip
        return rounds

    def measure_in_rounds(
        self, workloads: list[tuple[str, str, Callable[[int], dict[str, Any]]]]
    ) -> None:
        """Run each workload once per round, `--repeat` rounds, and keep the median run.

        A shared two-core VM runs faster or slower by a third from one minute to the next;
        interleaving puts every workload in every phase, and each ratio to (a) is the median of
        the ratios within a round, so a phase change between two workloads cannot fake one.
        """
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in workloads}
        for i in range(self.args.repeat):
            for name, workload, make_cfg in workloads:
                runs[name].append(self.run_once(workload, make_cfg(i)))
            done = ", ".join(f"{n} {r[-1]['events_per_s']:.0f}/s" for n, r in runs.items())
            print(f"round {i + 1}/{self.args.repeat}: {done}")
        w = self.results["workloads"]
        for name, results in runs.items():
            ordered = sorted(results, key=lambda r: float(r["events_per_s"]))
            w[name] = {**ordered[len(ordered) // 2],
                       "runs_events_per_s": [r["events_per_s"] for r in results]}  # fmt: skip
        if "a passthrough" in runs:
            base = [r["events_per_s"] for r in runs["a passthrough"]]

            def per_round(rs: list[dict[str, Any]]) -> float:
                ratios = [r["events_per_s"] / a for r, a in zip(rs, base, strict=True)]
                return float(np.median(ratios))

            self.results["ratio_to_a"] = {name: per_round(rs) for name, rs in runs.items()}

    def infer_cfg(self, model: str, name: str) -> dict[str, Any]:
        return {**self.common, "output": self.topic(name),
                "model_dir": str(self.models[model].parent)}  # fmt: skip

    def latency(self, rate: int) -> None:
        """(c) and (a) at `rate`, alternating over `--repeat` rounds; the median run is kept.

        One stall of the shared machine (a hundred milliseconds now and then) lifts a run's p99
        by itself; across rounds, the median shows the workers, not the stall.
        """
        runs: dict[str, list[dict[str, Any]]] = {"c infer-lr": [], "a passthrough": []}
        workers = {"c infer-lr": ("infer", {"model_dir": str(self.models["lr"].parent)}),
                   "a passthrough": ("passthrough", {})}  # fmt: skip
        events = max(1000, int(rate * self.args.latency_seconds))
        for i in range(self.args.repeat):
            # Each goes first in every other round: a drift of the machine hits both alike.
            names = list(runs) if i % 2 == 0 else list(reversed(runs))
            for name in names:
                worker, extra = workers[name]
                topic_in = self.topic(f"lat{i}-{worker}.in", dlq=False)
                broker_time = {"message.timestamp.type": "LogAppendTime"}
                topic_out = self.topic(f"lat{i}-{worker}.out", config=broker_time)
                runs[name].append(self.run_once("latency", {
                    "bootstrap": self.bootstrap, "input": topic_in, "output": topic_out,
                    "warmup": self.topic(f"lat{i}-{worker}.warmup", dlq=False),
                    "rate": rate, "events": events, "worker": worker,
                    "worker_cfg": {"bootstrap": self.bootstrap, "input": topic_in,
                                   "output": topic_out, **extra}}))  # fmt: skip
            done = ", ".join(f"{n} p99 {r[-1]['p99_ms']:.0f} ms" for n, r in runs.items())
            print(f"latency round {i + 1}/{self.args.repeat} at {rate}/s: {done}")
        latency = self.results.setdefault("latency", {})
        for name, results in runs.items():
            latency[name] = {
                "rate": rate,
                "seconds": self.args.latency_seconds,
                **{q: float(np.median([r[q] for r in results]))
                   for q in ("p50_ms", "p99_ms", "p999_ms")},
                "runs": results,
            }  # fmt: skip


def targets(results: dict[str, Any]) -> dict[str, bool]:
    """Issue 5's targets, for the workloads that were measured."""
    w, lat, mem = results["workloads"], results.get("latency", {}), results.get("memory")
    rate = {k[0]: r["events_per_s"] for k, r in w.items()}
    to_a = {k[0]: v for k, v in results.get("ratio_to_a", {}).items()}
    b = rate.get("b")
    checks: dict[str, bool] = {}
    if "c" in to_a:
        checks["(c) >= 0.6 x (a)"] = to_a["c"] >= 0.6
    if "d" in to_a:
        checks["(d) >= 0.4 x (a)"] = to_a["d"] >= 0.4
    if b and "c" in rate:
        checks["(c) >= 50 x (b)"] = rate["c"] >= 50 * b
    if "c infer-lr" in lat and "a passthrough" in lat:
        checks["p99 (c) <= p99 (a) + 10 ms"] = (
            lat["c infer-lr"]["p99_ms"] <= lat["a passthrough"]["p99_ms"] + 10
        )
    if "e" in to_a:
        checks["(e) >= 0.5 x (a)"] = to_a["e"] >= 0.5
    if "g" in to_a:
        checks["(g) mixed pipeline >= 0.4 x (a)"] = to_a["g"] >= 0.4
    if "h" in to_a:
        checks["(h) HGB regressor >= 0.4 x (a)"] = to_a["h"] >= 0.4
    if mem:
        checks["<= 300 bytes per pending prediction"] = mem["bytes_per_pending"] <= 300
    return checks


def report(results: dict[str, Any]) -> bool:
    """Print the table and the targets; True when every target measured is met."""
    w = results["workloads"]
    b = w.get("b naive", {}).get("events_per_s")
    to_a = results.get("ratio_to_a", {})

    print(f"\n{'workload':24} {'events/s':>10} {'x (a)':>7} {'x (b)':>8} "
          f"{'CPU s/M':>8} {'RSS MB':>7}   (x (a): median of the per-round ratios)")  # fmt: skip
    for name, r in w.items():
        xa = format(to_a[name], ".2f") if name in to_a else "-"
        xb = format(r["events_per_s"] / b, ".1f") if b else "-"
        print(f"{name:24} {r['events_per_s']:>10.0f} {xa:>7} {xb:>8} "
              f"{r['cpu_s_per_million']:>8.1f} {r['peak_rss_mb']:>7.0f}")  # fmt: skip
    lat = results.get("latency", {})
    for name, r in lat.items():
        p99s = ", ".join(f"{run['p99_ms']:.0f}" for run in r["runs"])
        print(f"latency {name:14} at {r['rate']}/s: p50 {r['p50_ms']:.1f} ms, "
              f"p99 {r['p99_ms']:.1f} ms, p999 {r['p999_ms']:.1f} ms "
              f"(medians of {len(r['runs'])} runs of {r['seconds']:g} s; p99s {p99s})")  # fmt: skip
    mem = results.get("memory")
    if mem:
        print(f"monitor: {mem['bytes_per_pending']:.0f} bytes per pending prediction at "
              f"{mem['pending']:,} pending")  # fmt: skip
    checks = targets(results)
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'MISS'}  {name}")
    print("machine:", describe_machine(results["machine"]))
    results["checks"] = checks
    return all(checks.values())


if __name__ == "__main__":
    raise SystemExit(main())
