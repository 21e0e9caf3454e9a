"""`scorestream report`: rolling accuracy over time, the drift point and the alerts, drawn from
the predictions, labels and alerts topics into report.png and report.html."""

from __future__ import annotations

import argparse
import base64
import html
import importlib.util
import json
import time
from bisect import bisect_right
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException

from workers.commands.shared import EXIT_OK, add_kafka_options, add_logging_options, positive_int
from workers.core.report import (
    ReportAlert,
    ReportData,
    ReportError,
    accuracy_around_drift,
    build_report,
)
from workers.kafka_io.roundtrip import Received, read_to_end
from workers.settings import add_option, kafka_config

ALERT_STYLE = {  # marker, colour
    "drift_detected": ("v", "tab:red"),
    "accuracy_below_threshold": ("X", "tab:orange"),
    "accuracy_recovered": ("^", "tab:green"),
    "feature_drift": ("D", "tab:purple"),
}


def add_parser(commands: Any, environ: Mapping[str, str]) -> None:  # noqa: ANN401 - argparse's
    report = commands.add_parser(
        "report",
        help="draw rolling accuracy, the drift point and the alerts from the topics",
        description="Read the predictions, labels and alerts topics from their start, join "
        "each prediction to its label by event_id as the monitor does (within its label TTLs), "
        "and write OUT/report.png (accuracy over the last --window outcomes per model version "
        "against event time, the drift point if given, each alert as a marker at the time it "
        "was raised) and OUT/report.html (the picture with the counts and the alerts). Needs "
        "matplotlib (pip install 'scorestream[report]').",
    )
    add_kafka_options(report, environ)
    add_option(report, "--predictions-topic", environ=environ, default="predictions",
               help="Predictions")  # fmt: skip
    add_option(report, "--labels-topic", environ=environ, default="labels", help="Labels")
    add_option(report, "--alerts-topic", environ=environ, default="alerts", help="Alerts")
    add_option(report, "--window", environ=environ, type=positive_int, default=500,
               help="outcomes per rolling-accuracy point")  # fmt: skip
    add_option(report, "--drift-at-ms", environ=environ, type=int,
               help="event time (epoch ms) to mark as the drift point")  # fmt: skip
    add_option(report, "--accuracy-threshold", environ=environ, type=float, default=0.8,
               help="drawn as a dotted line")  # fmt: skip
    add_option(report, "--label-ttl-s", environ=environ, type=float, default=3600.0,
               help="as the monitor's: a label later than this after its prediction's event "
               "time is not joined")  # fmt: skip
    add_option(report, "--orphan-label-ttl-s", environ=environ, type=float, default=600.0,
               help="as the monitor's: a label earlier than this before its prediction's "
               "event time is not joined")  # fmt: skip
    add_option(report, "--out", environ=environ, type=Path, default=Path("report-out"),
               help="folder for report.png and report.html")  # fmt: skip
    add_logging_options(report, environ)
    report.set_defaults(handler=run)


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    check_drawing_available()
    data = report_from_topics(
        args.bootstrap_servers, predictions_topic=args.predictions_topic,
        labels_topic=args.labels_topic, alerts_topic=args.alerts_topic, window=args.window,
        drift_at_ms=args.drift_at_ms,
        kafka_config=kafka_config(args.kafka_config, args.kafka_config_file, environ),
        label_ttl_ms=int(args.label_ttl_s * 1000),
        orphan_label_ttl_ms=int(args.orphan_label_ttl_s * 1000),
    )  # fmt: skip
    title = f"scorestream: {args.predictions_topic} joined with {args.labels_topic}"
    png, page = write_report(data, args.out, title=title,
                             accuracy_threshold=args.accuracy_threshold)  # fmt: skip
    print(json.dumps({"report_png": str(png), "report_html": str(page), **data.counts}))
    return EXIT_OK


def check_drawing_available() -> None:
    """Refuse before any work when the picture cannot be drawn."""
    if importlib.util.find_spec("matplotlib") is None:
        raise ReportError(
            "the report needs matplotlib, which is not installed: "
            "pip install 'scorestream[report]' (make venv installs it)"
        )


def report_from_topics(  # noqa: PLR0913 - the topics and the drawing's settings
    bootstrap_servers: str,
    *,
    predictions_topic: str,
    labels_topic: str,
    alerts_topic: str,
    window: int,
    drift_at_ms: int | None = None,
    kafka_config: dict[str, str] | None = None,
    label_ttl_ms: int | None = 3_600_000,
    orphan_label_ttl_ms: int | None = 600_000,
) -> ReportData:
    def records(topic: str) -> list[Received]:
        try:
            return read_to_end(bootstrap_servers, topic, kafka_config)
        except (KafkaException, TimeoutError) as exc:
            raise ReportError(
                f"cannot read {topic} from {bootstrap_servers}: {exc}; check the topic names "
                "and --bootstrap-servers"
            ) from exc

    predictions = records(predictions_topic)
    labels = records(labels_topic)
    return build_report(
        [r.value for r in predictions],
        [r.value for r in labels],
        [r.value for r in records(alerts_topic)],
        window,
        drift_at_ms,
        label_timestamps=[r.timestamp_ms for r in labels],
        label_ttl_ms=label_ttl_ms,
        orphan_label_ttl_ms=orphan_label_ttl_ms,
    )


def write_report(
    data: ReportData, out_dir: Path, *, title: str, accuracy_threshold: float | None = 0.8
) -> tuple[Path, Path]:
    """report.png and report.html (the picture embedded, with the counts and the alerts)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "report.png"
    _draw(data, png, title, accuracy_threshold)
    page = out_dir / "report.html"
    page.write_text(_page(data, png.read_bytes(), title))
    return png, page


def _draw(data: ReportData, path: Path, title: str, threshold: float | None) -> None:
    try:
        import matplotlib as mpl  # noqa: PLC0415 - optional: the worker image has none

        mpl.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as exc:
        raise ReportError("the report needs matplotlib: pip install 'scorestream[report]'") from exc
    start = data.start_ms or 0
    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=110)
    try:
        for version, points in sorted(data.series.items()):
            xs = [(p.time_ms - start) / 1000 for p in points]
            ax.plot(xs, [p.accuracy for p in points], linewidth=1.6, label=f"{version} accuracy")
        if threshold is not None:
            ax.axhline(threshold, color="grey", linestyle=":", linewidth=1,
                       label=f"threshold {threshold:g}")  # fmt: skip
        if data.drift_at_ms is not None:
            ax.axvline((data.drift_at_ms - start) / 1000, color="black", linestyle="--",
                       linewidth=1.2, label="drift injected")  # fmt: skip
        shown: set[str] = set()
        for alert in data.alerts:
            marker, colour = ALERT_STYLE.get(alert.alert, ("o", "tab:blue"))
            ax.scatter([(alert.time_ms - start) / 1000], [_accuracy_at(data, alert)],
                       marker=marker, color=colour, s=90, zorder=5, edgecolors="black",
                       label=None if alert.alert in shown else alert.alert)  # fmt: skip
            shown.add(alert.alert)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("seconds since the first event (event time; alerts at the time raised)")
        ax.set_ylabel(f"accuracy over the last {data.window} outcomes")
        ax.set_title(title)
        ax.grid(visible=True, alpha=0.3)
        ax.legend(loc="lower left", fontsize="small")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def _accuracy_at(data: ReportData, alert: ReportAlert) -> float:
    """The alerting version's rolling accuracy when the alert was raised (for the marker)."""
    points = data.series.get(alert.version) or next(iter(data.series.values()), [])
    if not points:
        return 0.5
    i = bisect_right([p.time_ms for p in points], alert.time_ms)
    return points[max(i - 1, 0)].accuracy


def _page(data: ReportData, png: bytes, title: str) -> str:
    esc = html.escape
    counts = "".join(
        f"<tr><th>{esc(k.replace('_', ' '))}</th><td>{v:,}</td></tr>"
        for k, v in data.counts.items()
    )
    around = accuracy_around_drift(data)
    for side, value in around.items():
        shown = "n/a" if value is None else f"{value:.3f}"
        counts += f"<tr><th>accuracy {side} the drift</th><td>{shown}</td></tr>"
    start = data.start_ms or 0
    alerts = (
        "".join(
            f"<tr><td>{(a.time_ms - start) / 1000:.1f} s</td><td>{esc(a.alert)}</td>"
            f"<td>{esc(a.severity)}</td><td>{esc(a.version)}</td><td>{a.joined:,}</td></tr>"
            for a in data.alerts
        )
        or '<tr><td colspan="5">none</td></tr>'
    )
    image = base64.b64encode(png).decode()
    generated = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1250px}}
table{{border-collapse:collapse;margin:1em 0}}th,td{{border:1px solid #ccc;padding:.3em .7em;
text-align:left}}img{{max-width:100%}}</style></head>
<body><h1>{esc(title)}</h1>
<img alt="rolling accuracy over time with the drift point and the alerts"
 src="data:image/png;base64,{image}">
<h2>Counts</h2><table>{counts}</table>
<h2>Alerts</h2><table><tr><th>when</th><th>alert</th><th>severity</th><th>model</th>
<th>outcomes joined</th></tr>{alerts}</table>
<p>Window: last {data.window} outcomes per model version. Generated {esc(generated)}.</p>
<script type="application/json" id="counts">{esc(json.dumps(data.counts))}</script>
</body></html>
"""
