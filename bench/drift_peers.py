"""NannyML's and Evidently's drift detection on the streams of bench/drift_quality.py.

Run by drift_quality.py inside the bench's own environment of peers (their pins clash with
ours: Evidently needs pandas < 3), with this repository on PYTHONPATH so both build the very
same streams from workers/example_data/streams.py. Each live stream is cut into tumbling
chunks of CHUNK events; every chunk is judged against the whole reference with each tool's
defaults:
- NannyML UnivariateDriftCalculator: its default methods (Jensen-Shannon for both kinds) and
  thresholds (reference chunks' mean + 3 standard deviations);
- NannyML DataReconstructionDriftCalculator: PCA at 65% variance, mean +- 3 std;
- Evidently DataDriftPreset: its default per-column test (reference over 1,000 rows:
  normed Wasserstein > 0.1 for numbers, Jensen-Shannon > 0.1 for categories).
Prints one JSON object: per scenario and seed, for each chunk end, the columns each flagged.

    python bench/drift_peers.py --seeds 30 --scenarios stationary,mean_shift,...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from typing import Any

import numpy as np

from workers.example_data.streams import CATEGORICAL, FEATURES, cyclic_stream

CHUNK = 500
REFERENCE_ROWS = 20_000


def frame(columns: dict[str, Any]) -> Any:  # noqa: ANN401 - a DataFrame
    import pandas as pd  # noqa: PLC0415

    data = pd.DataFrame({f: columns[f] for f in FEATURES})
    for f in CATEGORICAL:
        data[f] = data[f].astype(object)
    return data


def nannyml_flags(reference: Any, analysis: Any) -> tuple[list[list[str]], list[bool]]:  # noqa: ANN401
    import nannyml as nml  # noqa: PLC0415

    univariate = nml.UnivariateDriftCalculator(
        column_names=list(FEATURES),
        treat_as_categorical=list(CATEGORICAL),
        chunk_size=CHUNK,
    ).fit(reference)
    result = univariate.calculate(analysis).filter(period="analysis").to_df()
    columns: list[list[str]] = [[] for _ in range(len(result))]
    for feature in FEATURES:
        for method in ("jensen_shannon",):
            key = (feature, method, "alert")
            if key in result.columns:
                for i, flagged in enumerate(result[key].tolist()):
                    if flagged:
                        columns[i].append(feature)
    numeric = [f for f in FEATURES if f not in CATEGORICAL]
    reconstruction = nml.DataReconstructionDriftCalculator(
        column_names=numeric, chunk_size=CHUNK
    ).fit(reference[numeric])
    rec = reconstruction.calculate(analysis[numeric]).filter(period="analysis").to_df()
    multivariate = [bool(v) for v in rec[("reconstruction_error", "alert")].tolist()]
    return columns, multivariate


def evidently_flags(reference: Any, analysis: Any) -> list[list[str]]:  # noqa: ANN401
    from evidently import Report  # noqa: PLC0415
    from evidently.presets import DataDriftPreset  # noqa: PLC0415

    flags = []
    for start in range(0, len(analysis) - CHUNK + 1, CHUNK):
        chunk = analysis.iloc[start : start + CHUNK].reset_index(drop=True)
        snapshot = Report([DataDriftPreset()]).run(chunk, reference).dict()
        drifted = []
        for metric in snapshot["metrics"]:
            config = metric["config"]
            if config.get("type") != "evidently:metric_v2:ValueDrift":
                continue
            value, threshold = metric["value"], config.get("threshold")
            method = str(config.get("method", ""))
            if value is None or threshold is None or not np.isfinite(value):
                continue
            # p-value tests drift below their threshold, distances at or above it.
            p_value = "p_value" in method or "test" in method.lower()
            if (value < threshold) if p_value else (value >= threshold):
                drifted.append(config["column"])
        flags.append(drifted)
    return flags


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--scenarios", required=True)
    parser.add_argument("--stationary-rows", type=int, default=20_000)
    parser.add_argument("--change-rows", type=int, default=4000)
    parser.add_argument("--change-at", type=int, default=2000)
    # Evidently builds a report per chunk (about 1.3 s each here): fewer seeds and a shorter
    # stationary stream keep the bench to minutes. Its false alarms need no more to show.
    parser.add_argument("--evidently-seeds", type=int, default=5)
    parser.add_argument("--evidently-stationary-rows", type=int, default=10_000)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    started = time.monotonic()
    out: dict[str, Any] = {"chunk": CHUNK, "results": {}}
    for scenario in args.scenarios.split(","):
        runs = []
        for seed in range(args.seeds):
            reference = frame(cyclic_stream(REFERENCE_ROWS, seed))
            change = None if scenario == "stationary" else scenario
            rows = args.stationary_rows if change is None else args.change_rows
            analysis = frame(cyclic_stream(rows, seed + 1000, start=REFERENCE_ROWS, change=change,
                                           change_at=REFERENCE_ROWS + args.change_at))  # fmt: skip
            univariate, multivariate = nannyml_flags(reference, analysis)
            run: dict[str, Any] = {"ends": [CHUNK * (i + 1) for i in range(len(univariate))],
                                   "nannyml_univariate": univariate,
                                   "nannyml_reconstruction": multivariate}  # fmt: skip
            if seed < args.evidently_seeds:
                limit = args.evidently_stationary_rows if change is None else rows
                run["evidently"] = evidently_flags(reference, analysis.iloc[:limit])
            runs.append(run)
        out["results"][scenario] = runs
        print(f"peers: {scenario} done at {time.monotonic() - started:.0f} s", file=sys.stderr)
    import evidently  # noqa: PLC0415
    import nannyml  # noqa: PLC0415

    out["versions"] = {"nannyml": nannyml.__version__, "evidently": evidently.__version__}
    out["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
