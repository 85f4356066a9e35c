"""The shape every log reader returns: the scalar curves of one training run.

Readers of TensorBoard, W&B, Hugging Face Trainer and Megatron files turn what they find
into :class:`RunLog` objects (one per run) with the same layout, so that selecting the
loss, computing tokens and cleaning happen once, in :mod:`bayes_scaling.io.ingest`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import DataError

__all__ = ["Curve", "RunLog", "RunRef", "curves_from_frame", "describe_tags", "read_ref", "strip_suffix", "walk_files"]

#: How many tag names an error message lists before "...".
TAGS_SHOWN = 30


@dataclass(frozen=True)
class Curve:
    """One logged scalar of one run, in the order it was logged (restarts included).

    Attributes
    ----------
    step : ndarray of int64
        The step the logger attached to each value (optimizer steps, or samples for
        Megatron's ``... vs samples`` tags).
    value : ndarray of float64
        The logged values, unconverted (NaN and inf kept).
    source : ndarray of int
        Index into :attr:`RunLog.sources` of the file each value came from.
    """

    step: np.ndarray
    value: np.ndarray
    source: np.ndarray

    def __len__(self) -> int:
        return len(self.step)


@dataclass(frozen=True)
class RunLog:
    """The scalars of one training run as read from its logs.

    Attributes
    ----------
    name : str
        Run name as the mapping file refers to it.
    format : str
        ``"tensorboard"``, ``"wandb"``, ``"trainer_state"`` or ``"megatron"``.
    sources : tuple of str
        Files (or URLs) the values came from.
    curves : dict
        Tag -> :class:`Curve`; a reader asked for some tags keeps only those.
    tags : tuple of str
        Every scalar tag seen in the run (for error messages), sorted.
    attrs : dict
        Run-level values some formats record: ``max_steps``, ``global_step``,
        ``num_input_tokens_seen``, ``total_flos``, ``truncated_records``.
    """

    name: str
    format: str
    sources: tuple[str, ...]
    curves: dict
    tags: tuple[str, ...]
    attrs: dict = field(default_factory=dict)

    def curve(self, tag: str) -> Curve:
        """The curve of ``tag``; DataError listing the tags that exist when it is absent."""
        if tag not in self.curves:
            raise DataError(f"{self.sources[0]}: run {self.name!r} has no scalar tag {tag!r}; {describe_tags(self.tags)}")
        return self.curves[tag]


@dataclass(frozen=True)
class RunRef:
    """A run found in a source, not necessarily read yet.

    ``load(tags)`` returns its :class:`RunLog`; ``tags`` (a set, or None for all) lets
    readers of large files skip the scalars nobody asked for.
    """

    name: str
    format: str
    origin: str
    load: Callable[[frozenset | None], RunLog]


def read_ref(log: RunLog, origin: str) -> RunRef:
    """A RunRef for a log already read in full (formats small enough to read at once)."""
    return RunRef(log.name, log.format, origin, lambda tags=None: log)


def strip_suffix(name: str, suffixes) -> str:
    """``name`` without the first of ``suffixes`` it ends with (a run named by its file)."""
    for suffix in suffixes:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def walk_files(directory):
    """``(folder, file names)`` below ``directory``, folders in name order, following
    symbolic links (a sweep folder of links to run folders is common) but never into a
    folder twice."""
    seen = set()
    for root, dirs, files in os.walk(directory, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        yield root, files


def describe_tags(tags) -> str:
    tags = sorted(tags)
    if not tags:
        return "it has no scalar tags"
    shown = ", ".join(repr(t) for t in tags[:TAGS_SHOWN])
    more = f", ... ({len(tags) - TAGS_SHOWN} more)" if len(tags) > TAGS_SHOWN else ""
    return f"tags there: {shown}{more}"


def curves_from_frame(frame: pd.DataFrame, step: np.ndarray, columns) -> dict:
    """Tag -> Curve for the numeric ``columns`` of a wide table (one row per logged step).

    Empty cells (a metric not logged at that step) are skipped; NaN written by the logger
    cannot be told apart from an empty cell in these exports, so both are skipped.
    """
    curves = {}
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
        present = ~np.isnan(values)
        if present.any():
            curves[str(column)] = Curve(step[present], values[present], np.zeros(int(present.sum()), dtype=np.int32))
    return curves
