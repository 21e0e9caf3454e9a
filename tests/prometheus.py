"""A real Prometheus for the tests: Debian's package, unpacked into the cache (no service is
installed or started by the package manager), or whatever `prometheus`/`promtool` is on PATH."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


class PrometheusUnavailableError(RuntimeError):
    """Prometheus cannot be found or fetched; the message says what was tried."""


def prometheus_binaries(cache: Path) -> tuple[Path, Path]:
    """(prometheus, promtool): from PATH, else from the cache, else fetched into the cache."""
    on_path = shutil.which("prometheus"), shutil.which("promtool")
    if on_path[0] and on_path[1]:
        return Path(on_path[0]), Path(on_path[1])
    root = cache / "prometheus-deb"
    binaries = root / "usr" / "bin" / "prometheus", root / "usr" / "bin" / "promtool"
    if all(b.is_file() for b in binaries):
        return binaries
    if not shutil.which("apt-get"):
        raise PrometheusUnavailableError("no prometheus on PATH and no apt-get to fetch one")
    with tempfile.TemporaryDirectory() as download:
        fetched = _download(Path(download))
        staging = root.with_name(root.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        subprocess.run(["dpkg-deb", "-x", str(fetched), str(staging)], check=True)
        shutil.rmtree(root, ignore_errors=True)
        staging.rename(root)
    return binaries


def _download(into: Path) -> Path:
    """`apt-get download prometheus`; once more after `apt-get update` when the package lists
    are missing (fresh containers ship without them) and we may refresh them."""
    for attempt in range(2):
        done = subprocess.run(
            ["apt-get", "download", "prometheus"],
            cwd=into, capture_output=True, text=True, check=False,
        )  # fmt: skip
        debs = sorted(into.glob("prometheus_*.deb"))
        if done.returncode == 0 and debs:
            return debs[-1]
        if attempt == 0 and os.geteuid() == 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
            continue
        raise PrometheusUnavailableError(
            f"apt-get download prometheus failed: {done.stderr.strip()[-300:]}"
        )
    raise AssertionError("unreachable")


def wait_ready(url: str, timeout_s: float = 60.0) -> None:
    """Poll Prometheus's readiness endpoint (an HTTP answer, not a guess by sleeping)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise TimeoutError(f"Prometheus at {url} not ready within {timeout_s} s: {last}")
