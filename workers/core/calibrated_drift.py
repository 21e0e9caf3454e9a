"""Data drift judged against a reference stream, with thresholds calibrated on that stream.

The reference is a sample of what the model was registered with, in its original order. Each
check is computed over the live stream's last `n` events and compared with a threshold that
comes from two places:
- the statistic's distribution for independent events (a chi-square for binned frequencies and
  squared z-scores), at a false-flag chance per check of FALSE_FLAG (that of |z| > 5);
- the reference cut into windows of the same `n` events in its original order: the statistic's
  mean there over what independence predicts (the *inflation*, at least 1) scales that
  threshold, and it is never below 1.1x the largest value any reference window reached.
So a feature that cycles with the hour or the weekday (consecutive events are no independent
sample) gets the wider threshold its cycles call for, a feature that does not keeps the tight
one, and a stretch like one already in the reference is not drift.

Checks, per feature (`UnivariateDrift`):
- numeric: the mean of the values present (z-test), the share of them beyond the reference's
  5% and 95% quantiles (an exact binomial test) and their distribution over ten reference
  quantile bins (Jensen-Shannon);
- categorical: frequencies over the reference's categories, one bucket for other categories it
  held and one for values it never held (Jensen-Shannon, reporting `unseen_share`);
- a feature with one value in the reference (a constant) is compared exactly: any other value
  is drift, and round-off never is, since no sums are taken;
- every feature: its missing rate (an exact binomial test).
Across features (`MultivariateDrift`): the mean PCA reconstruction error of the numeric features,
with the PCA fitted on the reference, which sees a change of correlation that leaves every
marginal as it was.

Checks run every `step` events on the last `n` events, from scratch (counts, no running sums).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from scipy.stats import binom, chi2, norm

# The two-sided tail of |z| > 5, the chance of a false flag of one check.
FALSE_FLAG: Final = 5.733e-7
# Over the largest statistic of the reference's own windows: what a live window must exceed.
REFERENCE_MARGIN: Final = 1.1
QUANTILE_BINS: Final = 10
# Categories listed by name; the reference's other values share one bucket.
TOP_CATEGORIES: Final = 50
# Values of the reference remembered to tell "another known category" from "never seen".
KNOWN_VALUES: Final = 1000
# NannyML's default for its reconstruction drift: components that explain this much variance.
PCA_VARIANCE: Final = 0.65
# A feature whose window means vary this many times more than independent events would make
# them follows the clock: the multivariate check leaves it out (see ReferenceDrift).
CYCLIC_INFLATION: Final = 4.0

MISSING = 0  # bin of a missing value, for every feature

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Finding:
    """One check over its threshold."""

    feature: str
    check: str  # mean, tails, distribution, frequencies, constant, missing_rate, multivariate
    method: str  # "z_test", "jensen_shannon", "exact", "binomial_test", "pca_reconstruction_error"
    statistic: float
    threshold: float
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """How far over its threshold: features are ranked by it."""
        if self.threshold <= 0:
            return math.inf
        return self.statistic / self.threshold


@dataclass(frozen=True, slots=True)
class Threshold:
    """A check's threshold for a window of `n` events, and how it was reached."""

    value: float
    inflation: float  # reference windows' mean statistic over the independent-events mean
    reference_max: float | None  # None: the reference is shorter than a window
    windows: int


def calibrate(  # noqa: PLR0913 - the statistic's null, then what the reference says
    reference_stats: Floats,
    null_mean: float,
    null_quantile: float,
    *,
    sampling: float = 1.0,
    relative_sd: float = math.sqrt(2.0),
    independent: float = 0.0,
) -> Threshold:
    """A threshold from the statistic over the reference's windows (see the module doc).

    `sampling` (1 + n / reference size) widens the independent-events distribution by the
    reference's own sampling error: a window is compared with a sample, not the population,
    and a reference of a few hundred rows is as uncertain as the window itself.

    The inflation is an estimate from `independent` non-overlapping windows' worth of data;
    two of its standard errors (`relative_sd`: the statistic's sd over its mean for
    independent events, sqrt(2 / df) for a chi-square) are taken off, so the noise of the
    estimate does not blunt the checks of a feature with no cycle at all (a mean of 1.2
    over 100 windows is chance; one of 150 for an hour-of-day column is not)."""
    null_mean, null_quantile = null_mean * sampling, null_quantile * sampling
    finite = reference_stats[np.isfinite(reference_stats)]
    if finite.size == 0:
        return Threshold(null_quantile, 1.0, None, 0)
    noise = 2 * relative_sd / math.sqrt(independent) if independent > 0 else 0.0
    inflation = max(1.0, float(finite.mean()) / null_mean - noise)
    largest = float(finite.max())
    value = max(inflation * null_quantile, REFERENCE_MARGIN * largest)
    return Threshold(value, inflation, largest, int(finite.size))


def window_starts(length: int, n: int, step: int) -> Ints:
    return np.arange(0, length - n + 1, max(1, step), dtype=np.int64)


class Binning:
    """How a feature's values fall into bins: 0 missing; a numeric feature's values into
    quantile bins of the reference (or, for a constant, 1 = the constant and 2 = anything
    else); a categorical feature's into one bin per listed category, then other, then unseen."""

    def __init__(self, numeric: bool, reference: Sequence[Any] | Floats) -> None:
        self.numeric = numeric
        self.constant_value: Any = None
        self.edges: Floats = np.zeros(0)
        self.index: dict[Any, int] = {}
        self.known: frozenset[Any] = frozenset()
        self.labels: list[str] = ["(missing)"]
        if numeric:
            values = np.asarray(reference, dtype=np.float64)
            present = values[~np.isnan(values)]
            distinct = np.unique(present)
            if distinct.size == 1:
                self.constant_value = float(distinct[0])
                self.bins = 3
                self.labels += ["(constant)", "(other)"]
                return
            quantiles = np.linspace(0, 1, QUANTILE_BINS + 1)[1:-1]
            self.edges = np.unique(np.quantile(present, quantiles)) if present.size else np.zeros(0)
            self.bins = len(self.edges) + 2
            bounds = ["-inf", *map(_short, self.edges), "inf"]
            self.labels += [f"[{a}, {b})" for a, b in itertools.pairwise(bounds)]
            return
        present_values = [v for v in reference if v is not None]
        counts: dict[Any, int] = {}
        for value in present_values:
            key = category_key(value)
            counts[key] = counts.get(key, 0) + 1
        ranked = sorted(counts, key=lambda k: (-counts[k], str(k)))
        listed = ranked[:TOP_CATEGORIES]
        self.index = {key: j + 1 for j, key in enumerate(listed)}
        self.known = frozenset(ranked[:KNOWN_VALUES])
        if len(counts) == 1:
            self.constant_value = listed[0][1]
        self.other = len(listed) + 1
        self.unseen = len(listed) + 2
        self.bins = len(listed) + 3
        self.labels += [str(key[1]) for key in listed] + ["(other)", "(unseen)"]

    @property
    def constant(self) -> bool:
        return self.constant_value is not None

    def codes(self, values: Sequence[Any] | Floats) -> Ints:
        if self.numeric:
            array = np.asarray(values, dtype=np.float64)
            gap = np.isnan(array)
            if self.constant:
                inner = np.where(array == self.constant_value, 1, 2)
            else:
                inner = 1 + np.searchsorted(self.edges, array, side="right")
            return np.where(gap, MISSING, inner).astype(np.int64)
        index, known = self.index, self.known
        out = np.empty(len(values), dtype=np.int64)
        for j, value in enumerate(values):
            if value is None:
                out[j] = MISSING
                continue
            key = category_key(value)
            code = index.get(key)
            if code is None:
                code = self.other if key in known else self.unseen
            out[j] = code
        return out


def category_key(value: Any) -> tuple[str, Any]:  # noqa: ANN401
    """A category's dictionary key: True and 1 are different categories."""
    return (type(value).__name__, value)


def _short(value: float) -> str:
    return f"{value:.4g}"


def jensen_shannon(live: Floats, reference: Floats) -> Floats:
    """Row-wise Jensen-Shannon divergence (natural log) of two sets of distributions."""
    middle = 0.5 * (live + reference)
    # 0 log 0 is 0: the ratios are taken as 1 where a share is 0 (no warnings to silence).
    safe = np.where(middle > 0, middle, 1.0)
    a = live * np.log(np.where(live > 0, live, 1.0) / safe)
    b = reference * np.log(np.where(reference > 0, reference, 1.0) / safe)
    divergence: Floats = 0.5 * (a.sum(axis=-1) + b.sum(axis=-1))
    return divergence


def window_sums(values: npt.NDArray[Any], starts: Ints, n: int) -> npt.NDArray[Any]:
    """Sums over each window [start, start + n) along the first axis, from one cumulative sum
    (booleans sum to counts)."""
    running = np.cumsum(values, axis=0)
    cumulative = np.concatenate([np.zeros((1, *running.shape[1:]), running.dtype), running])
    result: npt.NDArray[Any] = cumulative[starts + n] - cumulative[starts]
    return result


def _window_counts(codes: Ints, bins: int, starts: Ints, n: int) -> Ints:
    """Bin counts of each window [start, start + n) of the codes."""
    onehot = np.zeros((codes.size, bins), dtype=np.int64)
    onehot[np.arange(codes.size), codes] = 1
    return window_sums(onehot, starts, n)


class _Feature:
    """One feature's checks: its binning, its reference figures and calibrated thresholds."""

    def __init__(  # noqa: PLR0913 - a feature, then its windows
        self, name: str, numeric: bool, reference: Sequence[Any] | Floats, *,
                 n: int, shape_n: int, step: int) -> None:  # fmt: skip
        self.name = name
        self.binning = binning = Binning(numeric, reference)
        codes = binning.codes(reference)
        total = max(codes.size, 1)
        self.n, self.shape_n = n, shape_n
        counts = np.bincount(codes, minlength=binning.bins).astype(np.float64)
        # Never exactly 0 or 1: a rate the reference could have missed.
        floor = 0.5 / total
        self.missing_rate = min(max(counts[MISSING] / total, floor), 1 - floor)
        present = counts[1:].sum()
        self.reference_share = counts[1:] / present if present else counts[1:]
        starts = window_starts(codes.size, n, step)
        windows = _window_counts(codes, binning.bins, starts, n)
        self.missing_threshold = calibrate(
            self._missing_z2(windows), 1.0, _CHI2_1, sampling=1 + n / total, independent=total / n
        )
        self.missing_band = BinomialBand(self.missing_rate, self.missing_threshold.value)
        # Categories: frequencies over the short window; numbers: a shape over the long one.
        self.shape_window = n if not numeric else shape_n
        shape_counts = (
            windows if not numeric
            else _window_counts(codes, binning.bins, window_starts(codes.size, shape_n, step),
                                shape_n)
        )  # fmt: skip
        self.bins_present = int((self.reference_share > 0).sum())
        self.df = max(self.bins_present - 1, 1)
        self.shape_threshold = calibrate(
            self._shape_statistic(shape_counts),
            float(self.df),
            float(chi2.isf(FALSE_FLAG, self.df)),
            sampling=1 + self.shape_window / max(float(present), 1.0),
            relative_sd=math.sqrt(2.0 / self.df),
            independent=float(present) / self.shape_window,
        )
        self.moments: list[_Moment | _Tails] = []
        if numeric and not binning.constant:
            values = np.asarray(reference, dtype=np.float64)
            mean = _Moment(values, starts, n)
            if mean.std > 0:
                # The mean over both windows: the short one finds a large shift soon, the long
                # one a small shift at all (0.5 sigma needs ~(5 / 0.5)^2 = 100 events, 0.25
                # sigma 400).
                long_starts = window_starts(values.size, shape_n, step)
                self.moments = [mean, _Tails(values, starts, n),
                                _Moment(values, long_starts, shape_n)]  # fmt: skip

    @property
    def numeric(self) -> bool:
        return self.binning.numeric

    def _missing_z2(self, windows: Ints) -> Floats:
        return binomial_z2(windows[:, MISSING], windows.sum(axis=1), self.missing_rate)

    def _shape_statistic(self, windows: Ints) -> Floats:
        """8 m JSD: for small differences, Pearson's chi-square over the bins."""
        present = windows[:, 1:].astype(np.float64)
        m = present.sum(axis=1)
        live = present / np.where(m > 0, m, 1.0)[:, None]
        stat: Floats = 8.0 * m * jensen_shannon(live, self.reference_share[None, :])
        return np.where(m > 0, stat, np.nan)

    def check(self, codes: Ints, values: Floats | None) -> list[Finding]:
        """`codes`: this feature's last `max(n, shape_n)` codes (oldest first); `values` its
        numbers the same way (numeric features)."""
        found: list[Finding] = []
        short = codes[-self.n :]
        counts = np.bincount(short, minlength=self.binning.bins)
        if self.binning.constant:
            different = int(counts[2:].sum())
            if different:
                found.append(Finding(self.name, "constant", "exact", float(different), 0.0,
                                     {"values_not_constant": different,
                                      "reference_value": self.binning.constant_value}))  # fmt: skip
        elif short.size >= self.n:
            if values is not None:
                found += self._moments(values)
            if not self.numeric:  # categories: frequencies over the short window, counted
                found += self._shape(counts)
            elif codes.size >= self.shape_n:
                shape_codes = codes[-self.shape_n :]
                found += self._shape(np.bincount(shape_codes, minlength=self.binning.bins))
        missing = int(counts[MISSING])
        if short.size >= self.n and not self.missing_band.passes(missing, short.size):
            found.append(Finding(
                self.name, "missing_rate", "binomial_test",
                math.sqrt(self.missing_band.z2(missing, short.size)),
                math.sqrt(self.missing_threshold.value),
                {"reference_missing_rate": round(self.missing_rate, 6),
                 "live_missing_rate": missing / short.size},
            ))  # fmt: skip
        return found

    def _moments(self, values: Floats) -> list[Finding]:
        found = []
        for moment in self.moments:
            recent = values[-moment.window :]
            present = recent[~np.isnan(recent)]
            if recent.size < moment.window or present.size < moment.window // 2:
                continue
            finding = moment.check(self.name, present)
            if finding is not None:
                found.append(finding)
        return found

    def _shape(self, counts: Ints) -> list[Finding]:
        m = int(counts[1:].sum())
        if m < self.shape_window // 2:
            return []
        statistic = float(self._shape_statistic(counts[None, :])[0])
        if not statistic > self.shape_threshold.value:
            return []
        live = counts[1:] / m
        # Reported as the Jensen-Shannon distance (base 2, in [0, 1]) and its threshold.
        distance = math.sqrt(max(statistic, 0.0) / (8 * m) / math.log(2))
        limit = math.sqrt(self.shape_threshold.value / (8 * m) / math.log(2))
        changed = live - self.reference_share
        top = np.argsort(-np.abs(changed))[:3]
        stats: dict[str, Any] = {
            "most_changed": {self.binning.labels[j + 1]: round(float(changed[j]), 4)
                             for j in top.tolist() if changed[j] != 0},
        }  # fmt: skip
        if not self.numeric:
            stats["unseen_share"] = round(float(live[self.binning.unseen - 1]), 4)
        check = "frequencies" if not self.numeric else "distribution"
        return [Finding(self.name, check, "jensen_shannon", distance, limit, stats)]

    def describe(self) -> dict[str, Any]:
        """What the checks of this feature compare with (for logs and the README's tables)."""
        out: dict[str, Any] = {
            "kind": "numeric" if self.numeric else "categorical",
            "constant": self.binning.constant,
            "missing_inflation": round(self.missing_threshold.inflation, 2),
        }
        if not self.binning.constant:
            out["shape_inflation"] = round(self.shape_threshold.inflation, 2)
            for moment in self.moments:
                key = moment.name if moment.window == self.n else f"{moment.name}_long"
                out[f"{key}_inflation"] = round(moment.threshold.inflation, 2)
        return out


_CHI2_1: Final = float(chi2.isf(FALSE_FLAG, 1))


def binomial_z2(k: Floats | Ints, n: Floats | Ints, p: float) -> Floats:
    """An exact two-sided binomial test of `k` in `n` at rate `p`, as a squared normal deviate
    (so one chi-square threshold serves every check). Exact, not the normal approximation:
    a 2% rate in 200 events is far from normal, and its approximation flags too often."""
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    tail = np.minimum(1.0, 2 * np.minimum(binom.cdf(k, n, p), binom.sf(k - 1, n, p)))
    z = norm.isf(tail / 2)
    result: Floats = np.where(n > 0, z * z, np.nan)
    return result


class BinomialBand:
    """The counts `k` of `n` an exact binomial test at rate `p` lets pass under a threshold
    (in squared-deviate units), worked out once per `n`: a live check is then two integer
    comparisons, not a call into scipy's distributions (which cost more than the event)."""

    def __init__(self, p: float, threshold: float) -> None:
        self.p, self.threshold = p, threshold
        self._bands: dict[int, tuple[int, int]] = {}

    def passes(self, k: int, n: int) -> bool:
        band = self._bands.get(n)
        if band is None:
            passing = np.flatnonzero(binomial_z2(np.arange(n + 1), np.full(n + 1, n), self.p)
                                     <= self.threshold)  # fmt: skip
            # The statistic falls away from n p on both sides: the passing counts are a run.
            band = self._bands[n] = (int(passing[0]), int(passing[-1])) if passing.size else (1, 0)
        return band[0] <= k <= band[1]

    def z2(self, k: int, n: int) -> float:
        return float(binomial_z2(np.array([k]), np.array([n]), self.p)[0])


class _Moment:
    """A z-test on the window mean of the values present ("mean")."""

    name = "mean"

    def __init__(self, values: Floats, starts: Ints, n: int) -> None:
        self.window = n
        gap = np.isnan(values)
        present = values[~gap]
        self.mean = float(present.mean()) if present.size else 0.0
        self.std = float(present.std()) if present.size else 0.0
        total = window_sums(np.where(gap, 0.0, values), starts, n)
        count = window_sums(~gap, starts, n)
        self.threshold = calibrate(
            self._z2(total, count),
            1.0,
            _CHI2_1,
            sampling=1 + n / max(present.size, 1),
            independent=present.size / n,
        )

    def _z2(self, total: Floats, count: Ints) -> Floats:
        if self.std <= 0:
            return np.full(np.shape(total), np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = (total / count - self.mean) / (self.std / np.sqrt(count))
        result: Floats = np.where(count > 0, z * z, np.nan)
        return result

    def check(self, feature: str, present: Floats) -> Finding | None:
        """Built only for a feature with a spread (std > 0)."""
        # Plain floats: this runs for every numeric feature at every step.
        live = float(present.sum()) / present.size
        z = (live - self.mean) / (self.std / math.sqrt(present.size))
        if not z * z > self.threshold.value:
            return None
        shift = round((live - self.mean) / self.std, 4)
        stats = {"reference_mean": self.mean, "live_mean": live, "shift_sigma": shift,
                 "z": round(z, 2), "window": self.window}  # fmt: skip
        return Finding(feature, self.name, "z_test", abs(z), math.sqrt(self.threshold.value),
                       stats)  # fmt: skip


# The reference's outer quantiles: a share of values beyond them is what a change of scale
# (or of the tails alone) moves, whatever the shape of the distribution.
TAIL_QUANTILES: Final = (0.05, 0.95)


class _Tails:
    """The share of values present outside the reference's 5% and 95% quantiles, against the
    reference's own share (an exact binomial test): a variance that doubles pushes it from 10%
    to about 25%, a distribution that narrows pulls it down. Counting needs no moments, so a
    heavy-tailed or skewed feature is judged as fairly as a normal one."""

    name = "tails"

    def __init__(self, values: Floats, starts: Ints, n: int) -> None:
        self.window = n
        gap = np.isnan(values)
        present = values[~gap]
        low, high = np.quantile(present, TAIL_QUANTILES) if present.size else (0.0, 0.0)
        self.low, self.high = float(low), float(high)
        outside = ~gap & ((values < self.low) | (values > self.high))
        floor = 0.5 / max(present.size, 1)
        share = float(outside.sum()) / max(present.size, 1)
        self.share = min(max(share, floor), 1 - floor)
        k, m = window_sums(outside, starts, n), window_sums(~gap, starts, n)
        self.threshold = calibrate(
            binomial_z2(k, m, self.share),
            1.0,
            _CHI2_1,
            sampling=1 + n / max(present.size, 1),
            independent=present.size / n,
        )
        self.band = BinomialBand(self.share, self.threshold.value)

    def check(self, feature: str, present: Floats) -> Finding | None:
        k = int(((present < self.low) | (present > self.high)).sum())
        if self.band.passes(k, present.size):
            return None
        z2 = self.band.z2(k, present.size)
        live = k / present.size
        return Finding(
            feature, self.name, "binomial_test", math.sqrt(z2),
            math.sqrt(self.threshold.value),
            {"reference_tail_share": round(self.share, 4), "live_tail_share": round(live, 4),
             "z": round(math.copysign(math.sqrt(z2), live - self.share), 2)},
        )  # fmt: skip


class UnivariateDrift:
    """Every feature's checks against the reference; rows are added one event at a time and
    checked every `step` events over the last `window` (`shape_window`: numeric shapes)."""

    def __init__(  # noqa: PLR0913
        self,
        names: Sequence[str],
        numeric: Sequence[bool],
        reference: Sequence[Sequence[Any] | Floats],
        *,
        window: int = 200,
        shape_window: int = 500,
        step: int | None = None,
    ) -> None:
        self.names = tuple(names)
        self.window, self.shape_window = window, shape_window
        self.step = step or max(1, window // 20)
        self.features = [
            _Feature(name, is_number, column, n=window, shape_n=shape_window, step=self.step)
            for name, is_number, column in zip(names, numeric, reference, strict=True)
        ]
        self.span = max(window, shape_window)
        self._codes = np.zeros((0, len(self.names)), dtype=np.int64)
        self._values = np.zeros((0, len(self.names)), dtype=np.float64)
        self._pending: list[Sequence[Any]] = []
        self.seen = 0

    def update(self, row: Sequence[Any]) -> list[Finding]:
        """Add one event's features (manifest order); every `step` events, what is over."""
        self._pending.append(row)
        self.seen += 1
        if len(self._pending) < self.step:
            return []
        return self.flush()

    def flush(self) -> list[Finding]:
        if not self._pending:
            return []
        block = self._pending
        self._pending = []
        columns = list(zip(*block, strict=True))
        codes = np.stack(
            [f.binning.codes(col) for f, col in zip(self.features, columns, strict=True)], axis=1
        )
        values = np.stack(
            [np.asarray(col, dtype=np.float64) if f.numeric else np.zeros(len(col))
             for f, col in zip(self.features, columns, strict=True)], axis=1,
        )  # fmt: skip
        self._codes = np.concatenate([self._codes, codes])[-self.span :]
        self._values = np.concatenate([self._values, values])[-self.span :]
        found: list[Finding] = []
        for j, feature in enumerate(self.features):
            found += feature.check(self._codes[:, j], self._values[:, j] if feature.numeric
                                   else None)  # fmt: skip
        return sorted(found, key=lambda f: -f.ratio)

    def describe(self) -> dict[str, dict[str, Any]]:
        return {f.name: f.describe() for f in self.features}

    def restart(self) -> None:
        """Forget the live window; the calibrated thresholds stay."""
        self._codes = self._codes[:0]
        self._values = self._values[:0]
        self._pending = []


class MultivariateDrift:
    """Mean PCA reconstruction error of the numeric features over the last `window` events.

    The PCA is fitted on the reference standardised (gaps as the mean) and keeps the components
    that explain PCA_VARIANCE of its variance; a row's error is the Euclidean distance between
    it and its reconstruction. The window mean's z-score against the reference rows' error is
    calibrated on the reference's windows like the univariate checks (one-sided: only a rise).
    Features constant in the reference are left out: they are compared exactly anyway.
    """

    def __init__(
        self,
        names: Sequence[str],
        reference: Floats,
        *,
        window: int = 500,
        step: int | None = None,
    ) -> None:
        matrix = np.asarray(reference, dtype=np.float64)
        with warnings.catch_warnings():  # an all-gap column: NaN, left out below
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(matrix, axis=0) if matrix.size else np.zeros(matrix.shape[1])
            std = np.nanstd(matrix, axis=0) if matrix.size else np.zeros(matrix.shape[1])
            spread = np.nanmax(matrix, axis=0) - np.nanmin(matrix, axis=0) if matrix.size else std
        # Constant means min == max: the std of 0.1 repeated is 1.4e-17, not 0.
        keep = np.flatnonzero(np.isfinite(std) & (spread > 0))
        self.names = tuple(names[j] for j in keep.tolist())
        self.columns = keep
        self.window = window
        self.step = step or max(1, window // 20)
        self.mean, self.std = mean[keep], std[keep]
        self.enabled = keep.size >= 2 and matrix.shape[0] >= 2
        self._residuals = np.zeros((0, keep.size))
        self._pending: list[Floats] = []
        if not self.enabled:
            self.components = np.zeros((0, keep.size))
            self.threshold = Threshold(math.inf, 1.0, None, 0)
            return
        standard = self._standardise(matrix[:, keep])
        _, singular, vt = np.linalg.svd(standard - standard.mean(axis=0), full_matrices=False)
        explained = np.cumsum(singular**2) / max(float((singular**2).sum()), 1e-300)
        count = int(np.searchsorted(explained, PCA_VARIANCE) + 1)
        count = min(max(count, 1), keep.size - 1)
        self.components = vt[:count]
        self.center = standard.mean(axis=0)
        residuals = self._residual(standard)
        errors = np.sqrt((residuals**2).sum(axis=1))
        self.error_mean = float(errors.mean())
        self.error_std = float(errors.std()) or 1e-12
        self.residual_power = (residuals**2).mean(axis=0)
        starts = window_starts(errors.size, window, self.step)
        z = (window_sums(errors, starts, window) / window - self.error_mean) / (
            self.error_std / math.sqrt(window)
        )
        # A one-sided z of 5; in squared units to share `calibrate` with the other checks.
        squared = np.where(z > 0, z * z, 0.0)
        # One-sided: max(z, 0)^2 has mean 1/2 and sd sqrt(5) times that for independent rows.
        self.threshold = calibrate(
            squared,
            0.5,
            25.0,
            sampling=1 + window / errors.size,
            relative_sd=math.sqrt(5.0),
            independent=errors.size / window,
        )

    def _standardise(self, matrix: Floats) -> Floats:
        standard = (matrix - self.mean) / self.std
        return np.where(np.isnan(standard), 0.0, standard)

    def _residual(self, standard: Floats) -> Floats:
        centred = standard - self.center
        result: Floats = centred - centred @ self.components.T @ self.components
        return result

    def update(self, row: Floats) -> Finding | None:
        """Add one event's numbers (all features, manifest order; gaps as NaN)."""
        if not self.enabled:
            return None
        self._pending.append(row)
        if len(self._pending) < self.step:
            return None
        return self.flush()

    def flush(self) -> Finding | None:
        if not self._pending:
            return None
        block = np.asarray(self._pending, dtype=np.float64)[:, self.columns]
        self._pending = []
        residuals = self._residual(self._standardise(block))
        self._residuals = np.concatenate([self._residuals, residuals])[-self.window :]
        if self._residuals.shape[0] < self.window:
            return None
        squared = self._residuals**2
        live = float(np.sqrt(squared.sum(axis=1)).mean())
        z = (live - self.error_mean) / (self.error_std / math.sqrt(self.window))
        if z <= 0 or z * z <= self.threshold.value:
            return None
        # Contributions: each feature's share of the rise in squared residual.
        rise = squared.mean(axis=0) - self.residual_power
        order = np.argsort(-rise)[:5]
        positive = float(np.clip(rise, 0, None).sum()) or 1.0
        return Finding(
            "(all numeric features)", "multivariate", "pca_reconstruction_error",
            live, self.error_mean + math.sqrt(self.threshold.value) * self.error_std
            / math.sqrt(self.window),
            {"reference_error": round(self.error_mean, 6), "z": round(z, 2),
             "components": int(self.components.shape[0]),
             "contributions": {self.names[j]: round(max(float(rise[j]), 0.0) / positive, 4)
                               for j in order.tolist() if rise[j] > 0}},
        )  # fmt: skip


class ReferenceDrift:
    """The data-drift checks of one model version's features: univariate per feature and the
    multivariate check on its numeric ones, all calibrated on the version's reference."""

    def __init__(  # noqa: PLR0913
        self,
        names: Sequence[str],
        numeric: Sequence[bool],
        reference: Sequence[Sequence[Any] | Floats],
        *,
        window: int = 200,
        shape_window: int = 500,
        multivariate_window: int = 500,
        sha256: str = "",
    ) -> None:
        self.names = tuple(names)
        self.sha256 = sha256
        self.windows = (window, shape_window, multivariate_window)
        self.univariate = UnivariateDrift(
            names, numeric, reference, window=window, shape_window=shape_window
        )
        self.numeric = self._steady([j for j, is_number in enumerate(numeric) if is_number])
        matrix = (
            np.stack([np.asarray(reference[j], dtype=np.float64) for j in self.numeric], axis=1)
            if self.numeric
            else np.zeros((0, 0))
        )
        self.multivariate = MultivariateDrift(
            [self.names[j] for j in self.numeric], matrix, window=multivariate_window
        )

    @property
    def seen(self) -> int:
        return self.univariate.seen

    def update(self, row: Sequence[Any]) -> list[Finding]:
        found = self.univariate.update(row)
        if self.multivariate.enabled:
            numbers = np.array([row[j] for j in self.numeric], dtype=np.float64)
            combined = self.multivariate.update(numbers)
            if combined is not None:
                found = sorted([*found, combined], key=lambda f: -f.ratio)
        return found

    def _steady(self, numeric: list[int]) -> list[int]:
        """The numeric features the multivariate check takes: those whose window means do not
        follow the clock (inflation up to CYCLIC_INFLATION). A feature that cycles with the
        hour puts its cycle into every row's reconstruction error, which would drown a change
        of correlation among the others; it keeps its own calibrated checks. With fewer than
        two such features, all of them."""
        steady = [
            j for j in numeric
            if (moments := self.univariate.features[j].moments)
            and moments[0].threshold.inflation <= CYCLIC_INFLATION
        ]  # fmt: skip
        return steady if len(steady) >= 2 else numeric
