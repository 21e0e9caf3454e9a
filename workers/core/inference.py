"""Turn one micro-batch of raw feature-event values into prediction records and dead letters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
import numpy as np

from workers.core.events import ErrorType, EventDecoder, InvalidEvent, Prediction
from workers.core.scoring import Matrix, ScoredBatch, Scorer

_ENCODE = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class ServingModel:
    """What scores a batch: the decoder and scorer of one verified model version."""

    name: str
    version: int
    decoder: EventDecoder
    scorer: Scorer


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
    decode = model.decoder.decode_unchecked
    indices: list[int] = []
    ids: list[str] = []
    rows: list[tuple[float, ...]] = []
    times: list[int] = []
    for i, value in enumerate(values):
        decoded = decode(value)
        if type(decoded) is InvalidEvent:
            result.invalid.append((i, decoded))
            continue
        event_id, row, event_time = decoded  # type: ignore[misc]
        indices.append(i)
        ids.append(event_id)
        rows.append(row)
        times.append(timestamps_ms[i] if event_time is None else event_time)
    if not rows:
        return result
    matrix = np.array(rows, dtype=np.float64)
    finite = np.isfinite(matrix)
    if not finite.all():
        # An overflowing number such as 1e400 decodes to infinity: never let it reach the model.
        bad_rows = np.flatnonzero(~finite.all(axis=1)).tolist()
        for j in bad_rows:
            first_bad = int(np.flatnonzero(~finite[j])[0])
            result.invalid.append((indices[j], model.decoder.not_finite(first_bad)))
        dropped = set(bad_rows)
        keep = [j for j in range(len(rows)) if j not in dropped]
        matrix = matrix[keep]
        indices = [indices[j] for j in keep]
        ids = [ids[j] for j in keep]
        times = [times[j] for j in keep]
        result.invalid.sort(key=lambda item: item[0])
        if not keep:
            return result
    try:
        scored = _checked(model.scorer.score(matrix), len(indices))
    except Exception:  # noqa: BLE001 - a model failure is data: isolate the rows that cause it
        _score_one_by_one(matrix, indices, ids, times, model, scored_at_ms, result)
        return result
    _encode(scored, range(len(indices)), indices, ids, times, model, scored_at_ms, result)
    return result


def _checked(scored: ScoredBatch, expected: int) -> ScoredBatch:
    if len(scored.scores) != expected or not np.isfinite(scored.scores).all():
        raise ValueError("model returned a non-finite or missing score")
    return scored


def _score_one_by_one(  # noqa: PLR0913, PLR0917 - the batch columns, passed through
    matrix: Matrix,
    indices: list[int],
    ids: list[str],
    times: list[int],
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
    model: ServingModel,
    scored_at_ms: int,
    result: BatchResult,
) -> None:
    name, version = model.name, model.version
    labels, scores, probabilities = scored.labels, scored.scores, scored.probabilities
    append = result.predictions.append
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
        )
        append((indices[k], event_id.encode(), _ENCODE(prediction)))
