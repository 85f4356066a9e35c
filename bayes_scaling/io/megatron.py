"""Megatron-LM stdout logs: the ``iteration N/M | ... |`` lines it prints while training.

A training line (``training_log`` in ``megatron/training/training.py``) reads::

     [2024-05-01 12:00:00] iteration      100/    5000 | consumed samples:        51200 |
     elapsed time per iteration (ms): 812.3 | learning rate: 3.000000E-04 |
     global batch size:   512 | lm loss: 7.123456E+00 | loss scale: 1.0 | grad norm: 1.234 |
     number of skipped iterations:   0 | number of nan iterations:   0 |

(one line). Every ``name: number`` field becomes a tag at step N (``lm loss``,
``consumed samples``, ``global batch size``, ...); fields that are not numbers (elapsed
time as h:mm:ss) are skipped. A validation line
``validation loss at iteration N | lm loss value: X | lm loss PPL: Y |`` gives the tags
Megatron writes to TensorBoard: ``lm loss validation`` and ``lm loss validation ppl``.
M (``--train-iters``) is kept as ``attrs["max_steps"]``. One file is one run, named by the
file name without its extension; concatenate the logs of a resumed job in order.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import DataError
from .logs import Curve, RunLog, RunRef, read_ref, strip_suffix

__all__ = ["file_ref", "read_log"]

#: Extensions dropped from a log's file name to name its run.
LOG_SUFFIXES = (".log", ".txt", ".out", ".err", ".stdout")
_ITERATION = re.compile(r"\biteration\s+(\d+)\s*/\s*(\d+)\s*\|")
_VALIDATION = re.compile(r"\bvalidation loss at ([^|]*)\|")
_AT_ITERATION = re.compile(r"iteration\s+(\d+)")


def file_ref(path: Path) -> RunRef:
    return read_ref(read_log(path), str(path))


def read_log(path: Path, name: str | None = None) -> RunLog:
    """Read one Megatron stdout log; the run is named by the file stem unless ``name`` is given.

    Raises
    ------
    DataError
        The file cannot be read or holds no training line (``iteration N/M | ...``).
    """
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise DataError(f"cannot read Megatron log {path}: {exc}") from exc
    columns: dict[str, tuple[list, list]] = {}
    last_iteration, max_steps, trained = 0, None, False
    for line in text.splitlines():
        match = _ITERATION.search(line)
        if match:
            last_iteration, max_steps, trained = int(match.group(1)), int(match.group(2)), True
            _add_fields(columns, line[match.end() :], last_iteration, lambda key: key)
            continue
        match = _VALIDATION.search(line)
        if match:
            at = _AT_ITERATION.search(match.group(1))
            step = int(at.group(1)) if at else last_iteration  # "at the end of training" follows the last one
            _add_fields(columns, line[match.end() :], step, _validation_tag)
    if not trained:
        raise DataError(f"{path}: no Megatron training lines ('iteration N/M | ... | lm loss: X |'): no loss lines in this log")
    curves = {
        tag: Curve(np.asarray(s, dtype=np.int64), np.asarray(v, dtype=float), np.zeros(len(s), dtype=np.int32)) for tag, (s, v) in columns.items()
    }
    attrs = {"max_steps": max_steps} if max_steps else {}
    return RunLog(name or strip_suffix(path.name, LOG_SUFFIXES), "megatron", (str(path),), curves, tuple(sorted(curves)), attrs)


def _validation_tag(key: str) -> str:
    if key.endswith(" PPL"):
        return f"{key[:-4]} validation ppl"
    if key.endswith(" value"):
        return f"{key[:-6]} validation"
    return f"{key} validation"


def _add_fields(columns: dict, fields: str, step: int, tag_of) -> None:
    for field in fields.split("|"):
        key, sep, value = field.partition(":")
        if not sep:
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        steps, values = columns.setdefault(tag_of(key.strip()), ([], []))
        steps.append(step)
        values.append(number)
