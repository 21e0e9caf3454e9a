"""Turn one micro-batch of raw feature-event values into prediction records and dead letters."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import numpy as np

from workers.core.events import (
    ErrorType,
    EventDecoder,
    InvalidEvent,
    Prediction,
)
from workers.core.scoring import Columns, Matrix, ScoredBatch, Scorer, columns_from_rows

_ENCODE = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class ServingModel:
    """What scores a batch: the decoder and scorer of one verified model version."""

    name: str
    version: int
    decoder: EventDecoder
    scorer: Scorer
    # Each Prediction carries its features (for the monitor's Outcome records).
    emit_features: bool = False


@dataclass(slots=True)
class BatchResult:
    """Records to produce, each tied to the index of its source message in the batch."""

    predictions: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # (i, key, value)
    invalid: list[tuple[int, InvalidEvent]] = field(default_factory=list)


def score_batch(
    values: Sequence[bytes | None],
    timestamps_ms: Sequence[int],
    model: ServingModel,
    scored_at_ms: int,
) -> BatchResult:
    """Decode, validate and score `values` with one model call; never raise on bad input."""
    result = BatchResult()
    if timestamps_ms and min(timestamps_ms) < 0:
        # A record without a timestamp (-1: an old producer or message format) is timed when
        # it is scored: a Prediction's event_time is never negative.
        timestamps_ms = [t if t >= 0 else scored_at_ms for t in timestamps_ms]
    decoder = model.decoder
    decode = decoder.decode_unchecked
    indices: list[int] = []
    ids: list[str] = []
    rows: list[tuple[float, ...]] = []
    times: list[int] = []
    with_time = 0
    for i, value in enumerate(values):
        decoded = decode(value)
        if type(decoded) is InvalidEvent:
            result.invalid.append((i, decoded))
            continue
        event_id, row, event_time = decoded  # type: ignore[misc]
        indices.append(i)
        ids.append(event_id)
        rows.append(row)
        if event_time is None:
            times.append(timestamps_ms[i])
        else:
            times.append(event_time)
            with_time += 1
    if not rows:
        return result
    dropped = _key_problems(values, indices, ids, times, with_time, decoder, timestamps_ms)
    batch: Matrix | Columns
    if decoder.plain_numeric:
        batch = np.array(rows, dtype=np.float64)
        finite = np.isfinite(batch)
        not_finite = (
            {}
            if finite.all()
            else {
                j: int(np.flatnonzero(~finite[j])[0])
                for j in np.flatnonzero(~finite.all(axis=1)).tolist()
            }
        )
    else:
        batch = columns_from_rows(rows, decoder.numeric)
        not_finite = batch.not_finite(decoder.numeric)
    if not_finite or dropped:
        keep = _drop_rows(not_finite, dropped, indices, decoder, result)
        if not keep:
            return result
        batch = batch[keep] if isinstance(batch, np.ndarray) else batch.take(keep)
        indices, ids, times, rows = (
            [indices[j] for j in keep],
            [ids[j] for j in keep],
            [times[j] for j in keep],
            [rows[j] for j in keep],
        )
    try:
        scored = _checked(model.scorer.score(batch), len(indices))
    except Exception:  # noqa: BLE001 - a model failure is data: isolate the rows that cause it
        _score_one_by_one(batch, indices, ids, times, rows, model, scored_at_ms, result)
        return result
    _encode(scored, range(len(indices)), indices, ids, times, rows, model, scored_at_ms, result)
    return result


def _drop_rows(
    not_finite: dict[int, int],
    dropped: dict[int, InvalidEvent],
    indices: list[int],
    decoder: EventDecoder,
    result: BatchResult,
) -> list[int]:
    """Dead-letter rows with a key problem or a non-finite feature; return the rows kept."""
    # An overflowing number such as 1e400 decodes to infinity: never let it reach the model.
    for j, first_bad in not_finite.items():
        if j not in dropped:
            result.invalid.append((indices[j], decoder.not_finite(first_bad)))
    result.invalid.extend((indices[j], problem) for j, problem in dropped.items())
    result.invalid.sort(key=lambda item: item[0])
    gone = set(dropped) | set(not_finite)
    return [j for j in range(len(indices)) if j not in gone]


def _key_problems(  # noqa: PLR0913, PLR0917 - the batch columns, passed through
    values: Sequence[bytes | None],
    indices: list[int],
    ids: list[str],
    times: list[int],
    with_time: int,
    decoder: EventDecoder,
    timestamps_ms: Sequence[int],
) -> dict[int, InvalidEvent]:
    """Positions of decoded events that repeat a key or carry too many features, found for the
    whole batch at once.

    Every key is followed by a colon: if the batch holds exactly as many colons as its events'
    keys and ids need, no event has an extra or repeated key (one vectorised count, instead of
    a count per event that cost a tenth of the decoding). Otherwise each event is checked.
    """
    kept = [values[i] or b"" for i in indices]
    joined = b"".join(kept)
    blob = np.frombuffer(joined, dtype=np.uint8)
    colons = int(np.count_nonzero(blob == _COLON))
    needed = len(kept) * decoder.keys_without_extras + with_time + "".join(ids).count(":")
    # A colon escaped as \u003a in an event_id counts in `needed` but not in the raw bytes and
    # could make up for a repeated key's colon: with any escape in the batch, each is checked.
    if colons == needed and b"\\u" not in joined:
        return {}
    problems = {}
    for j, value in enumerate(kept):
        event_time = None if times[j] == timestamps_ms[indices[j]] else times[j]
        problem = decoder.key_problem(value, ids[j], event_time)
        if problem is not None:
            problems[j] = problem
    return problems


_COLON: Final = ord(":")


def _checked(scored: ScoredBatch, expected: int) -> ScoredBatch:
    if len(scored.scores) != expected or not np.isfinite(scored.scores).all():
        raise ValueError("model returned a non-finite or missing score")
    return scored


def _score_one_by_one(  # noqa: PLR0913, PLR0917 - the batch columns, passed through
    matrix: Matrix | Columns,
    indices: list[int],
    ids: list[str],
    times: list[int],
    rows: list[tuple[Any, ...]],
    model: ServingModel,
    scored_at_ms: int,
    result: BatchResult,
) -> None:
    for j in range(len(indices)):
        try:
            scored = _checked(model.scorer.score(matrix[j : j + 1]), 1)
        except Exception as exc:  # noqa: BLE001 - the failing row is dead-lettered, not fatal
            message = f"model {model.name} v{model.version} failed on this event: {exc!r}"
            result.invalid.append((indices[j], InvalidEvent(ErrorType.MODEL, message[:500])))
            continue
        _encode(
            scored,
            [0],
            indices[j : j + 1],
            ids[j : j + 1],
            times[j : j + 1],
            rows[j : j + 1],
            model,
            scored_at_ms,
            result,
        )


def _encode(  # noqa: PLR0913, PLR0917 - the batch columns, passed through
    scored: ScoredBatch,
    positions: Sequence[int],
    indices: Sequence[int],
    ids: Sequence[str],
    times: Sequence[int],
    rows: Sequence[tuple[Any, ...]],
    model: ServingModel,
    scored_at_ms: int,
    result: BatchResult,
) -> None:
    name, version = model.name, model.version
    labels, scores, probabilities = scored.labels, scored.scores, scored.probabilities
    append = result.predictions.append
    names = model.decoder.features if model.emit_features else None
    for k, pos in enumerate(positions):
        event_id = ids[k]
        prediction = Prediction(
            event_id=event_id,
            model_name=name,
            model_version=version,
            label=labels[pos],
            score=scores[pos],
            event_time=times[k],
            scored_at=scored_at_ms,
            probabilities=None if probabilities is None else probabilities[pos],
            features=None if names is None else _named(names, rows[k]),
        )
        append((indices[k], event_id.encode(), _ENCODE(prediction)))


def _named(names: Sequence[str], row: tuple[Any, ...]) -> dict[str, Any]:
    """A row's features by name; a gap (NaN for a number) is null, as in the FeatureEvent."""
    return {
        name: None if isinstance(value, float) and math.isnan(value) else value
        for name, value in zip(names, row, strict=True)
    }
