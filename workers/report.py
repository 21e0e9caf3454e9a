"""`scorestream report`: rolling accuracy over time, the drift point and the alerts, drawn from
the predictions, labels and alerts topics into report.png and report.html."""

from __future__ import annotations

import base64
import html
import json
import time
from bisect import bisect_right
from pathlib import Path

from confluent_kafka import KafkaException

from workers.core.report import (
    ReportAlert,
    ReportData,
    ReportError,
    accuracy_around_drift,
    build_report,
)
from workers.kafka_io.roundtrip import read_to_end

ALERT_STYLE = {  # marker, colour
    "drift_detected": ("v", "tab:red"),
    "accuracy_below_threshold": ("X", "tab:orange"),
    "accuracy_recovered": ("^", "tab:green"),
    "feature_drift": ("D", "tab:purple"),
}


def report_from_topics(  # noqa: PLR0913 - the topics and the drawing's settings
    bootstrap_servers: str,
    *,
    predictions_topic: str,
    labels_topic: str,
    alerts_topic: str,
    window: int,
    drift_at_ms: int | None = None,
    kafka_config: dict[str, str] | None = None,
) -> ReportData:
    def values(topic: str) -> list[bytes | None]:
        try:
            return [r.value for r in read_to_end(bootstrap_servers, topic, kafka_config)]
        except (KafkaException, TimeoutError) as exc:
            raise ReportError(
                f"cannot read {topic} from {bootstrap_servers}: {exc}; check the topic names "
                "and --bootstrap-servers"
            ) from exc

    return build_report(
        values(predictions_topic),
        values(labels_topic),
        values(alerts_topic),
        window,
        drift_at_ms,
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
