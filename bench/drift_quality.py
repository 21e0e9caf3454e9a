"""Drift-detection quality on streams with known change points, 30 seeds each.

Concept drift (on the stream of wrong/right outcomes): Bernoulli error streams whose rate rises
0.2 -> 0.3 and 0.2 -> 0.4 at t=5000 (10,000 samples), and 10,000-sample streams without drift.
The default detector is measured beside river's ADWIN defaults in the same run. Data drift: a
0.5 sigma mean shift of one of ten features at t=5000, and river's SEA concept drift (the label
function changes, the features do not) as a negative control that must stay silent.

    python bench/drift_quality.py [--seeds 30] [--out bench/results/drift_quality.json]

Regressors (issue 15): absolute errors whose scale rises 1.5x at t=5000 (normal errors; Laplace
errors, heavier-tailed, shown beside), each river detector on |error| beside the default CUSUM.

Data drift on real-shaped streams (issue 16; workers/example_data/streams.py: one event a
minute, daily and weekly cycles, categories, gaps, constant columns), 30 seeds each, the
default checks calibrated on a 20,000-event reference beside NannyML's univariate and
reconstruction drift and Evidently's default column tests on tumbling chunks of 500 events of
the same streams (bench/drift_peers.py, run in the bench's own environment of peers, made on
first use under ~/.cache/scorestream/bench-peers; --no-peers skips them): a stationary stream
(false alarms per 10k events; constant columns must raise none), a 0.5 sigma mean shift, the
variance doubled, a new category at 10%, a correlation flip with unchanged marginals, and CBPE
under pure covariate shift (windows of 1,000 predictions).

Targets (issue 4): default 30/30 detected, mean delay <= 300 (0.2->0.3) (its <= 80 for
0.2->0.4 is below the optimal detector's bound at that false-alarm rate: issue 16 restates it
as within 1.2x of that bound for both), <= 0.1 false alarms per 10k samples, feature shift
found within 200 samples, silent on SEA. Issue 15: regressor MAE x1.5 30/30 detected, mean
delay <= 300, <= 0.1 false alarms per 10k. Issue 16: concept drift within 1.2x the optimal
CUSUM bound; data drift <= 0.1 false alarms per 10k on the cyclic stream, 0 on constant
columns; mean shift found within 200 events, variance x2 within 500, a new category within
500, a correlation flip within 1,000 by the multivariate check while the univariate ones stay
silent (30/30 found, mean delay, as issue 4 measured it; the worst seed is printed beside);
CBPE |estimated - realized| <= 0.03 in 95% of windows.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from river.datasets import synth

from workers.core.calibrated_drift import ReferenceDrift
from workers.core.drift import (
    DEFAULT_DETECTOR,
    DEFAULT_ERROR_DETECTOR,
    DETECTORS,
    ERROR_DETECTORS,
    ConceptDrift,
    ErrorDrift,
    FeatureDrift,
)
from workers.core.estimation import expected, fit_calibration
from workers.core.feature_summary import summarize_features
from workers.example_data.streams import CATEGORICAL, FEATURES, cyclic_stream, rows_of

CHANGE_AT = 5000
LENGTH = 10_000


@dataclass
class Result:
    stream: str
    detector: str
    detected: int
    seeds: int
    mean_delay: float | None
    false_alarms_per_10k: float


def error_stream(seed: int, after: float | None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if after is None:
        return rng.random(LENGTH) < 0.2
    return np.concatenate([rng.random(CHANGE_AT) < 0.2, rng.random(LENGTH - CHANGE_AT) < after])


def measure(
    hits: Iterable[Iterable[bool]], drift_at: int | None
) -> tuple[int, float | None, float]:
    """Detection rate, mean delay of the first hit after the change, false alarms per 10k."""
    detected, delays, false_alarms, samples = 0, [], 0, 0
    for stream_hits in hits:
        first = None
        for t, hit in enumerate(stream_hits):
            samples += 1 if drift_at is None or t < drift_at else 0
            if not hit:
                continue
            if drift_at is not None and t >= drift_at:
                first = t - drift_at if first is None else first
            else:
                false_alarms += 1
        if first is not None:
            detected += 1
            delays.append(first)
    mean_delay = float(np.mean(delays)) if delays else None
    return detected, mean_delay, false_alarms / samples * 10_000 if samples else 0.0


def concept(detector: str, seeds: int) -> list[Result]:
    results = []
    for name, after in (("error 0.2->0.3", 0.3), ("error 0.2->0.4", 0.4), ("no drift", None)):

        def run(seed: int, after: float | None = after) -> list[bool]:
            d = ConceptDrift(detector)
            return [d.update(correct=not e) for e in error_stream(seed, after).tolist()]

        drift_at = None if after is None else CHANGE_AT
        detected, delay, fa = measure((run(s) for s in range(seeds)), drift_at)
        results.append(Result(name, detector, detected if drift_at else 0, seeds, delay, fa))
    return results


def regression_errors(seed: int, rise: float | None, tails: str) -> np.ndarray:
    """Absolute errors of a regressor whose error scale rises by `rise` at CHANGE_AT."""
    rng = np.random.default_rng(50_000 + seed)
    draw = rng.normal if tails == "normal" else rng.laplace
    scale = np.ones(LENGTH)
    if rise is not None:
        scale[CHANGE_AT:] = rise
    return np.abs(draw(0.0, 1.0, LENGTH) * scale * 12.5)


def regression(detector: str, seeds: int) -> list[Result]:
    results = []
    for name, rise, tails in (
        ("MAE x1.5 (normal errors)", 1.5, "normal"),
        ("MAE x1.5 (Laplace errors)", 1.5, "laplace"),
        ("regressor, no drift", None, "normal"),
        ("regressor, no drift (Laplace)", None, "laplace"),
    ):

        def run(seed: int, rise: float | None = rise, tails: str = tails) -> list[bool]:
            d = ErrorDrift(detector)
            return [d.update(abs_error=e) for e in regression_errors(seed, rise, tails).tolist()]

        drift_at = None if rise is None else CHANGE_AT
        detected, delay, fa = measure((run(s) for s in range(seeds)), drift_at)
        results.append(Result(name, detector, detected if drift_at else 0, seeds, delay, fa))
    return results


def feature_shift(seeds: int) -> Result:
    def run(seed: int) -> list[bool]:
        rng = np.random.default_rng(10_000 + seed)
        train = rng.normal(0, 1, (5000, 10))
        summary = summarize_features(train, [f"x{j}" for j in range(10)])
        monitor = FeatureDrift(
            list(summary),
            [v["mean"] for v in summary.values()],
            [v["std"] for v in summary.values()],
        )
        live = rng.normal(0, 1, (LENGTH, 10))
        live[CHANGE_AT:, 3] += 0.5 * summary["x3"]["std"]
        return [bool(monitor.update(row)) for row in live.tolist()]

    detected, delay, fa = measure((run(s) for s in range(seeds)), CHANGE_AT)
    return Result("feature 0.5 sigma shift", "mean_z_test", detected, seeds, delay, fa)


def sea_negative_control(seeds: int) -> Result:
    def rows(variant: int, seed: int, n: int) -> np.ndarray:
        stream = synth.SEA(variant=variant, seed=seed)
        return np.array([[x[k] for k in sorted(x)] for x, _ in itertools.islice(stream, n)])

    def run(seed: int) -> list[bool]:
        train = rows(0, 20_000 + seed, 5000)
        summary = summarize_features(train, ["x0", "x1", "x2"])
        monitor = FeatureDrift(
            list(summary),
            [v["mean"] for v in summary.values()],
            [v["std"] for v in summary.values()],
        )
        live = np.vstack([rows(0, 30_000 + seed, CHANGE_AT), rows(2, 40_000 + seed, CHANGE_AT)])
        return [bool(monitor.update(row)) for row in live.tolist()]

    # The features never move: every hit is a false alarm, before or after the concept change.
    _, _, fa = measure((run(s) for s in range(seeds)), None)
    return Result("SEA concept drift (features unchanged)", "mean_z_test", 0, seeds, None, fa)


def cusum_bound(p0: float, p1: float, false_alarms_per_10k: float) -> float:
    """Mean delay of the optimal detector (CUSUM knowing p0 and p1) at that false-alarm rate.

    Siegmund's approximations: ARL0 = (e^h - h - 1) / D(p0||p1) fixes the threshold h, and the
    delay is (h + e^-h - 1) / D(p1||p0). No detector that must also estimate p0 does better.
    """

    def kl(a: float, b: float) -> float:
        return a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))

    arl0 = 10_000 / false_alarms_per_10k
    h = 1.0
    for _ in range(100):
        h = math.log(arl0 * kl(p0, p1) + h + 1)
    return (h + math.exp(-h) - 1) / kl(p1, p0)


# -- data drift on real-shaped streams (issue 16) ------------------------------------------

REFERENCE_ROWS = 20_000
STATIONARY_ROWS = 20_000
CHANGE_ROWS = 4000
LIVE_CHANGE_AT = 2000
COOLDOWN = 1000  # the monitor's --drift-cooldown: one alarm per episode
MULTIVARIATE = "(all numeric features)"
# What each change must be found by, and within how many events.
DATA_TARGETS: dict[str, tuple[tuple[str, ...], int]] = {
    "mean_shift": (("score",), 200),
    "variance": (("score",), 500),
    "new_category": (("channel",), 500),
    "correlation_flip": ((MULTIVARIATE,), 1000),
}
CONSTANTS = ("region", "fee", "currency")
NUMERIC = [f not in CATEGORICAL for f in FEATURES]


@dataclass
class DataResult:
    scenario: str
    detector: str
    seeds: int
    detected: int | None
    mean_delay: float | None
    max_delay: float | None
    false_alarms_per_10k: float
    constant_alarms: int
    univariate_after_flip: int | None = None


@dataclass
class Run:
    """One stream through one detector: alarms (event index, what fired) and their causes."""

    alarms: list[int]
    first_target: int | None
    constant_hits: int
    univariate_on_flip: int
    events: int
    change_at: int | None


def our_run(scenario: str, seed: int) -> Run:
    reference = cyclic_stream(REFERENCE_ROWS, seed)
    columns = [np.asarray(reference[f], dtype=np.float64) if n else reference[f]
               for f, n in zip(FEATURES, NUMERIC, strict=True)]  # fmt: skip
    drift = ReferenceDrift(FEATURES, NUMERIC, columns)
    change = None if scenario == "stationary" else scenario
    rows = STATIONARY_ROWS if change is None else CHANGE_ROWS
    live = cyclic_stream(rows, seed + 1000, start=REFERENCE_ROWS, change=change,
                         change_at=REFERENCE_ROWS + LIVE_CHANGE_AT)  # fmt: skip
    targets = DATA_TARGETS[scenario][0] if change else ()
    alarms: list[int] = []
    first, constants, flip_univariate = None, 0, 0
    for t, row in enumerate(rows_of(live)):
        found = drift.update(row)
        if not found:
            continue
        constants += sum(f.check == "constant" for f in found)
        if not alarms or t - alarms[-1] >= COOLDOWN:
            alarms.append(t)
        after = change is not None and t >= LIVE_CHANGE_AT
        if after and first is None and any(f.feature in targets for f in found):
            first = t - LIVE_CHANGE_AT
        if change == "correlation_flip":
            flip_univariate += sum(f.feature in {"x1", "x2"} for f in found)
    return Run(alarms, first, constants, flip_univariate, rows,
               None if change is None else LIVE_CHANGE_AT)  # fmt: skip


def peer_runs(peers: dict[str, Any], scenario: str, tool: str) -> list[Run]:
    """Chunk verdicts of a peer as Runs: an alarm at each flagged chunk's end."""
    runs = []
    change = None if scenario == "stationary" else scenario
    targets = DATA_TARGETS[scenario][0] if change else ()
    for record in peers["results"].get(scenario, []):
        if tool not in record:
            continue
        flags = record[tool]
        alarms, first, constants, flip = [], None, 0, 0
        for end, flagged in zip(record["ends"], flags, strict=False):
            names = ([MULTIVARIATE] if flagged else []) if isinstance(flagged, bool) else flagged
            if not names:
                continue
            alarms.append(end - 1)
            constants += sum(n in CONSTANTS for n in names)
            after = change is not None and end > LIVE_CHANGE_AT
            if after and first is None and any(n in targets for n in names):
                first = end - LIVE_CHANGE_AT
            flip += sum(n in {"x1", "x2"} for n in names) if after else 0
        events = record["ends"][len(flags) - 1] if flags else 0
        runs.append(Run(alarms, first, constants, flip, events,
                        None if change is None else LIVE_CHANGE_AT))  # fmt: skip
    return runs


def summarise(scenario: str, detector: str, runs: list[Run]) -> DataResult:
    false_alarms = sum(
        sum(1 for a in r.alarms if r.change_at is None or a < r.change_at) for r in runs
    )
    quiet_events = sum(r.events if r.change_at is None else r.change_at for r in runs)
    delays = [r.first_target for r in runs if r.first_target is not None]
    changed = scenario != "stationary"
    return DataResult(
        scenario, detector, len(runs),
        len(delays) if changed else None,
        float(np.mean(delays)) if delays else None,
        float(max(delays)) if delays else None,
        false_alarms / quiet_events * 10_000 if quiet_events else 0.0,
        sum(r.constant_hits for r in runs),
        sum(r.univariate_on_flip for r in runs) if scenario == "correlation_flip" else None,
    )  # fmt: skip


def peers_environment() -> Path:
    """The bench's own environment of peers (Evidently needs pandas < 3), made once."""
    home = Path(os.environ.get("SCORESTREAM_BENCH_PEERS", Path.home() / ".cache" / "scorestream"
                               / "bench-peers"))  # fmt: skip
    python = home / "bin" / "python"
    if not python.exists():
        print(f"making the peers' environment in {home} (once; a few minutes)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(home)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "nannyml==0.13.1",
                        "evidently==0.7.23", "pandas<3"], check=True)  # fmt: skip
    return python


def start_peers(seeds: int, scenarios: list[str]) -> subprocess.Popen[str]:
    python = peers_environment()
    root = Path(__file__).resolve().parent.parent
    # Their usage reporting would try the internet on every run.
    env = {**os.environ, "PYTHONPATH": str(root), "NML_DISABLE_USAGE_LOGGING": "1",
           "DO_NOT_TRACK": "1"}  # fmt: skip
    return subprocess.Popen(
        [str(python), str(root / "bench" / "drift_peers.py"), "--seeds", str(seeds),
         "--scenarios", ",".join(scenarios), "--stationary-rows", str(STATIONARY_ROWS),
         "--change-rows", str(CHANGE_ROWS), "--change-at", str(LIVE_CHANGE_AT)],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def data_drift(seeds: int) -> list[DataResult]:
    return [summarise(scenario, "scorestream", [our_run(scenario, s) for s in range(seeds)])
            for scenario in ("stationary", *DATA_TARGETS)]  # fmt: skip


def peer_results(peers: dict[str, Any]) -> list[DataResult]:
    results = []
    for scenario in ("stationary", *DATA_TARGETS):
        for tool in ("nannyml_univariate", "nannyml_reconstruction", "evidently"):
            runs = peer_runs(peers, scenario, tool)
            if runs:
                results.append(summarise(scenario, tool, runs))
    return results


@dataclass
class CbpeResult:
    window: int
    windows: int
    within: int
    mean_abs_error: float
    raw_mean_abs_error: float
    # An estimate that knew the true P(y | x) of every event: what binomial noise alone allows.
    oracle_within: int
    accuracy_before: float
    accuracy_after: float


def cbpe(seeds: int, sizes: tuple[int, ...] = (1000, 2000)) -> list[CbpeResult]:
    """A logistic regression on x1, score and amount; calibrated on a held-out quarter of the
    reference; live under covariate shift (x1 and score shrunk to 0.35: harder cases, the
    relation unchanged, accuracy falls). Windows of each size, tumbling."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

    def design(columns: dict[str, Any]) -> np.ndarray:
        amount = np.nan_to_num(np.asarray(columns["amount"], dtype=np.float64), nan=20.0)
        return np.stack([columns["x1"], columns["score"], amount], axis=1)

    runs = []
    for seed in range(seeds):
        reference = cyclic_stream(REFERENCE_ROWS, seed)
        x, y = design(reference), np.asarray(reference["label"])
        fit = REFERENCE_ROWS * 3 // 4
        model = LogisticRegression().fit(x[:fit], y[:fit])
        calibration = fit_calibration(model.predict_proba(x[fit:]), y[fit:].tolist())
        assert calibration is not None
        live = cyclic_stream(STATIONARY_ROWS, seed + 1000, start=REFERENCE_ROWS,
                             change="covariate_shift",
                             change_at=REFERENCE_ROWS + LIVE_CHANGE_AT)  # fmt: skip
        features = design(live)
        proba = model.predict_proba(features)
        predicted = proba.argmax(axis=1)
        right = predicted == np.asarray(live["label"])
        chance = np.array([e.correct for p in proba.tolist()
                           if (e := expected(calibration, p)) is not None])  # fmt: skip
        # The generator's own relation (streams.py): the chance each prediction is right.
        true_p = 1 / (1 + np.exp(-(1.5 * features[:, 0] + features[:, 1]
                                   + (features[:, 2] - 20.0) / 10.0)))  # fmt: skip
        oracle = np.where(predicted == 1, true_p, 1 - true_p)
        runs.append((right, chance, proba.max(axis=1), oracle))
    results = []
    for size in sizes:
        errors: list[float] = []
        raw: list[float] = []
        oracle_errors: list[float] = []
        before: list[float] = []
        after: list[float] = []
        for right, chance, confidence, oracle in runs:
            for start in range(0, STATIONARY_ROWS - size + 1, size):
                part = slice(start, start + size)
                realized = float(right[part].mean())
                errors.append(abs(float(chance[part].mean()) - realized))
                raw.append(abs(float(confidence[part].mean()) - realized))
                oracle_errors.append(abs(float(oracle[part].mean()) - realized))
                (before if start + size <= LIVE_CHANGE_AT else after).append(realized)
        results.append(CbpeResult(
            size, len(errors), sum(e <= 0.03 for e in errors), float(np.mean(errors)),
            float(np.mean(raw)), sum(e <= 0.03 for e in oracle_errors),
            float(np.mean(before)) if before else float("nan"), float(np.mean(after)),
        ))  # fmt: skip
    return results


def print_data_drift(results: list[DataResult], cbpe_results: list[CbpeResult]) -> None:
    print(f"\n{'data drift scenario':22} {'detector':24} {'found':>7} {'mean delay':>11} "
          f"{'max delay':>10} {'FA/10k':>8} {'on constants':>13}")  # fmt: skip
    for r in results:
        found = "-" if r.detected is None else f"{r.detected}/{r.seeds}"
        mean = "-" if r.mean_delay is None else f"{r.mean_delay:.0f}"
        most = "-" if r.max_delay is None else f"{r.max_delay:.0f}"
        print(f"{r.scenario:22} {r.detector:24} {found:>7} {mean:>11} {most:>10} "
              f"{r.false_alarms_per_10k:>8.3f} {r.constant_alarms:>13}")  # fmt: skip
    flip = [r for r in results if r.scenario == "correlation_flip"]
    for r in flip:
        print(f"correlation flip, univariate alarms on x1/x2 after the change ({r.detector}): "
              f"{r.univariate_after_flip}")  # fmt: skip
    for c in cbpe_results:
        print(f"CBPE under covariate shift, windows of {c.window:,}: |estimated - realized| <= "
              f"0.03 in {c.within}/{c.windows} ({c.within / c.windows:.1%}; an estimate knowing "
              f"the true P(y|x): {c.oracle_within / c.windows:.1%}); mean |error| "
              f"{c.mean_abs_error:.4f} (uncalibrated confidence: {c.raw_mean_abs_error:.4f}); "
              f"accuracy {c.accuracy_after:.3f} after the shift")  # fmt: skip


def data_checks(results: list[DataResult], cbpe_results: list[CbpeResult]) -> dict[str, bool]:
    ours = {r.scenario: r for r in results if r.detector == "scorestream"}

    def within(scenario: str) -> bool:
        """Every seed detected, the mean delay within the target (as issue 4 measured it)."""
        r = ours[scenario]
        limit = DATA_TARGETS[scenario][1]
        return r.detected == r.seeds and r.mean_delay is not None and r.mean_delay <= limit

    return {
        "data drift: <= 0.1 false alarms / 10k on the cyclic stream": max(
            r.false_alarms_per_10k for r in ours.values()) <= 0.1,
        "data drift: 0 alarms on constant columns": all(
            r.constant_alarms == 0 for r in ours.values()),
        "data drift: 0.5 sigma mean shift: 30/30, within 200": within("mean_shift"),
        "data drift: variance x2: 30/30, within 500": within("variance"),
        "data drift: new category at 10%: 30/30, within 500": within("new_category"),
        "data drift: correlation flip: 30/30, within 1,000": within("correlation_flip"),
        "data drift: correlation flip: univariate silent": ours[
            "correlation_flip"].univariate_after_flip == 0,
        # Windows of 1,000 (the monitor's --window). The realized accuracy's own binomial
        # noise (sd 0.0145 at 0.70) keeps even an estimate that knows the true P(y|x) near the
        # line there: the oracle's share is printed beside.
        "CBPE: |estimated - realized| <= 0.03 in 95% of windows": all(
            c.within >= 0.95 * c.windows for c in cbpe_results if c.window == 1000),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("bench/results/drift_quality.json"))
    parser.add_argument(
        "--no-peers", action="store_true",
        help="skip NannyML and Evidently (no environment of peers is made)",
    )  # fmt: skip
    args = parser.parse_args()
    started = time.monotonic()
    # The peers run beside our own measurements (two cores): started first, read last.
    scenarios = ["stationary", *DATA_TARGETS]
    peers_process = None if args.no_peers else start_peers(args.seeds, scenarios)
    results = concept(DEFAULT_DETECTOR, args.seeds) + concept("adwin", args.seeds)
    results += [feature_shift(args.seeds), sea_negative_control(args.seeds)]
    for detector in ERROR_DETECTORS:
        results += regression(detector, args.seeds)
    print(f"default detector: {DEFAULT_DETECTOR} = {DETECTORS[DEFAULT_DETECTOR].description}")
    print(f"default regressor detector: {DEFAULT_ERROR_DETECTOR}")
    print(f"{'stream':40} {'detector':18} {'detected':>9} {'mean delay':>11} {'FA/10k':>7}")
    for r in results:
        delay = "-" if r.mean_delay is None else f"{r.mean_delay:.1f}"
        found = (
            "-"
            if "no drift" in r.stream or r.stream.startswith("SEA")
            else (f"{r.detected}/{r.seeds}")
        )
        print(
            f"{r.stream:40} {r.detector:18} {found:>9} {delay:>11} {r.false_alarms_per_10k:>7.3f}"
        )
    by = {(r.stream, r.detector): r for r in results}
    d = DEFAULT_DETECTOR
    checks = {
        "30/30 detected 0.2->0.3": by[("error 0.2->0.3", d)].detected == args.seeds,
        "30/30 detected 0.2->0.4": by[("error 0.2->0.4", d)].detected == args.seeds,
        "delay <= 300 (0.2->0.3)": (by[("error 0.2->0.3", d)].mean_delay or 1e9) <= 300,
        "<= 0.1 false alarms / 10k": max(
            by[(s, d)].false_alarms_per_10k
            for s in ("error 0.2->0.3", "error 0.2->0.4", "no drift")
        )
        <= 0.1,
        "feature shift within 200": (
            by[("feature 0.5 sigma shift", "mean_z_test")].mean_delay or 1e9
        )
        <= 200,
        "regressor MAE x1.5: 30/30 detected": by[
            ("MAE x1.5 (normal errors)", DEFAULT_ERROR_DETECTOR)
        ].detected
        == args.seeds,
        "regressor MAE x1.5: delay <= 300": (
            by[("MAE x1.5 (normal errors)", DEFAULT_ERROR_DETECTOR)].mean_delay or 1e9
        )
        <= 300,
        "regressor: <= 0.1 false alarms / 10k": max(
            by[(s, DEFAULT_ERROR_DETECTOR)].false_alarms_per_10k
            for s in ("MAE x1.5 (normal errors)", "regressor, no drift")
        )
        <= 0.1,
        "silent on SEA": by[
            ("SEA concept drift (features unchanged)", "mean_z_test")
        ].false_alarms_per_10k
        == 0,
    }
    for p1 in (0.3, 0.4):
        bound = cusum_bound(0.2, p1, 0.1)
        measured = by[(f"error 0.2->{p1}", d)].mean_delay or 1e9
        print(
            f"lower bound on the mean delay for 0.2->{p1} at 0.1 false alarms/10k (optimal "
            f"CUSUM that knows both rates): {bound:.0f} samples; measured {measured:.0f} = "
            f"{measured / bound:.2f}x"
        )
        checks[f"concept drift 0.2->{p1} within 1.2x the optimal bound"] = measured <= 1.2 * bound
    cbpe_results = cbpe(args.seeds)
    data_results = data_drift(args.seeds)
    peers = None
    if peers_process is not None:
        output, _ = peers_process.communicate()
        if peers_process.returncode == 0:
            peers = json.loads(output)
            print(f"peers: nannyml {peers['versions']['nannyml']}, evidently "
                  f"{peers['versions']['evidently']}, chunks of {peers['chunk']} events, "
                  f"{peers['seconds']:.0f} s")  # fmt: skip
        else:
            print(f"peers failed (exit {peers_process.returncode}); their rows are missing")
    if peers is not None:
        data_results += peer_results(peers)
    data_results.sort(key=lambda r: ["stationary", *DATA_TARGETS].index(r.scenario))
    print_data_drift(data_results, cbpe_results)
    checks.update(data_checks(data_results, cbpe_results))
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'MISS'}  {name}")
    ratio_03 = by[("error 0.2->0.3", "adwin")].mean_delay, by[("error 0.2->0.3", d)].mean_delay
    if ratio_03[0] and ratio_03[1]:
        print(f"ADWIN defaults take {ratio_03[0] / ratio_03[1]:.2f}x as long on 0.2->0.3")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "results": [asdict(r) for r in results],
                "data_drift": [asdict(r) for r in data_results],
                "cbpe": [asdict(c) for c in cbpe_results],
                "peers": None
                if peers is None
                else {k: peers[k] for k in ("versions", "chunk", "seconds")},
                "checks": checks,
                "seconds": round(time.monotonic() - started, 1),
            },
            indent=2,
        )
    )
    print(f"written {args.out} in {time.monotonic() - started:.0f} s")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
