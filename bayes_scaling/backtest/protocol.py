"""The back-test's protocol: which cells there are, with the training points and targets each
holds (no estimator yet). The protocol is that of "A Hitchhiker's Guide to Scaling Law
Estimation" (Choshen, Zhang, Andreas, ICML 2025, section 3.2):

* Families with at least 3 distinct ``num_params`` (primary metric rows only).
* Target: every run of the largest ``num_params`` (several runs at that size: each is its
  own target and the family's score is their mean). Target checkpoints: that run's
  checkpoints with ``tokens >= 0.7 * max tokens of the run`` (the last 30% of training).
  The token cut does **not** apply to targets, so both cuts score the same points.
* A target whose loss rises over its last 30% (mean loss of the last third of the target
  window above the mean of its first third by more than 2%, well above checkpoint noise)
  "diverged": it is excluded from scoring and listed.
* Training set for ``k`` = 1 .. (number of smaller sizes): all runs of the ``k`` smallest
  sizes, their checkpoints with ``tokens >= min_tokens`` (the token cut), and optionally
  only the first fraction ``p`` of training: ``tokens <= p * max tokens over the selected
  training runs``. Then each run is thinned to at most ``max_checkpoints`` log-spaced
  checkpoints (:func:`bayes_scaling.data.thin_log_spaced`; None keeps all). Every
  estimator sees exactly the same training points and targets.
* Scores per (family, target, k, fraction, cut, estimator): ARE = mean over target
  checkpoints of ``|L - L_hat| / L``; coverage of central 20..95% intervals; mean relative
  interval width; relative CRPS (from draws). Aggregates over families use the median and
  the mean of ARE capped at 100%, plus counts of wild (> 100%) and failed fits; a failed fit
  counts as ARE = inf (capped to 100%) so estimators are compared on the same cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd

from ..data import Filters, apply_filters, late_window, load_runs, loss_rise, thin_log_spaced
from ..errors import DataError

__all__ = [
    "CELL_KEY_COLUMNS",
    "Cell",
    "CellData",
    "FRACTIONS",
    "MIN_SIZES",
    "Protocol",
    "ROW_KEY_COLUMNS",
    "Target",
    "no_cells_reason",
    "primary_table",
    "protocol_cells",
]

FRACTIONS = (0.1, 0.2, 0.3, 0.5, 1.0)
MIN_SIZES = 3
#: Columns that identify a row (the rest are scores and diagnostics).
ROW_KEY_COLUMNS = ("min_tokens", "family", "target", "k", "fraction", "estimator")
CELL_KEY_COLUMNS = ("min_tokens", "family", "k", "fraction", "estimator")


@dataclass(frozen=True)
class Target:
    """One target run: its checkpoints in the last 30% of training (nats, tokens)."""

    model: str
    num_params: float
    tokens: np.ndarray
    loss: np.ndarray


@dataclass(frozen=True)
class CellData:
    """Training points and targets of one (family, k, fraction, token cut), no estimator."""

    family: str
    k: int
    fraction: float
    min_tokens: float
    train_num_params: np.ndarray
    train_tokens: np.ndarray
    train_loss: np.ndarray
    train_run: np.ndarray  # int run index 0 .. n_runs-1
    train_models: tuple[str, ...]
    targets: tuple[Target, ...]

    @property
    def n_train(self) -> int:
        return len(self.train_loss)


@dataclass(frozen=True)
class Cell:
    """A unit of work: one estimator on one :class:`CellData` (picklable, self-contained).

    ``estimator`` is a name in :data:`bayes_scaling.backtest.estimators.REGISTRY`; ``prior``
    is what that estimator's ``prior`` gave (a :class:`~bayes_scaling.cellfit.CellPrior`, a
    :class:`~bayes_scaling.population.Population`, or None for the point fits); ``settings``
    are sampler settings as sorted (key, value) pairs.
    """

    data: CellData
    estimator: str
    prior: object = None
    settings: tuple = ()

    @property
    def key(self) -> tuple:
        """``(min_tokens, family, k, fraction, estimator)``: unique per cell."""
        d = self.data
        return (float(d.min_tokens), d.family, int(d.k), float(d.fraction), self.estimator)


@dataclass(frozen=True)
class Protocol:
    """Cells of the protocol plus what it excluded, with reasons."""

    cells: tuple[CellData, ...]
    families: tuple[str, ...]
    skipped_families: pd.DataFrame  # family, reason
    diverged_targets: pd.DataFrame  # family, target, rise
    empty_cells: pd.DataFrame  # min_tokens, family, k, fraction, reason


def primary_table(runs) -> pd.DataFrame:
    """Validated runs table with one curve per run (primary metric), no token cut."""
    return apply_filters(load_runs(runs), Filters(min_tokens=0.0, max_checkpoints=None, primary_only=True))


def _check_values(ks, fractions, min_tokens_list, max_checkpoints):
    for k in ks or ():
        if int(k) != k or k < 1:
            raise DataError(f"k values must be integers >= 1, got {k!r}")
    for p in fractions:
        if not (0 < p <= 1):
            raise DataError(f"fractions must be in (0, 1], got {p!r}")
    for c in min_tokens_list:
        if not np.isfinite(c) or c < 0:
            raise DataError(f"min_tokens must be finite and >= 0, got {c!r}")
    if max_checkpoints is not None and (int(max_checkpoints) != max_checkpoints or max_checkpoints < 1):
        raise DataError(f"max_checkpoints must be a positive integer or None, got {max_checkpoints!r}")


def protocol_cells(
    runs,
    *,
    ks: Iterable[int] | None = None,
    fractions: Iterable[float] = FRACTIONS,
    min_tokens: float | Iterable[float] = 1e10,
    max_checkpoints: int | None = 30,
    families: Iterable[str] | None = None,
) -> Protocol:
    """Select the back-test cells of a runs table.

    Parameters
    ----------
    runs : path or DataFrame
        Runs table (validated with :func:`bayes_scaling.data.load_runs`; primary rows kept).
    ks : iterable of int, optional
        Numbers of smallest sizes to train on; default every k from 1 to the number of
        smaller sizes. Values above a family's number of smaller sizes are skipped for it.
    fractions : iterable of float
        Fractions of training kept (``tokens <= p * max tokens of the training runs``).
    min_tokens : float or iterable of float
        Token cut(s) applied to the training checkpoints (one set of cells per cut).
    max_checkpoints : int or None
        Thin each training run to at most this many log-spaced checkpoints.
    families : iterable of str, optional
        Restrict to these families.

    Returns
    -------
    Protocol
    """
    cuts = (float(min_tokens),) if np.isscalar(min_tokens) else tuple(float(c) for c in min_tokens)
    fractions = tuple(float(p) for p in fractions)
    ks = None if ks is None else tuple(sorted({int(k) for k in ks}))
    _check_values(ks, fractions, cuts, max_checkpoints)
    table = primary_table(runs)
    if families is not None:
        families = tuple(families)
        unknown = sorted(set(families) - set(table["family"]))
        if unknown:
            raise DataError(f"families not in the runs table: {unknown}")
        table = table[table["family"].isin(families)]
    cells, kept, skipped, div_rows, empty = [], [], [], [], []
    for family, g in table.groupby("family", sort=True):
        sizes = np.sort(g["num_params"].unique())
        if len(sizes) < MIN_SIZES:
            skipped.append({"family": family, "reason": f"{len(sizes)} distinct sizes (< {MIN_SIZES})"})
            continue
        targets = []
        for model, run in g[g["num_params"] == sizes[-1]].groupby("model", sort=True):
            tok, loss = late_window(run["tokens"], run["loss"])
            is_div, rise = loss_rise(loss)
            if is_div:
                div_rows.append({"family": family, "target": model, "rise": rise, "n_points": len(loss)})
                continue
            targets.append(Target(str(model), float(sizes[-1]), tok, loss))
        if not targets:
            skipped.append({"family": family, "reason": "every target run diverged"})
            continue
        kept.append(family)
        family_ks = range(1, len(sizes)) if ks is None else [k for k in ks if k < len(sizes)]
        for cut in cuts:
            for k in family_ks:
                pool = g[g["num_params"].isin(sizes[:k])]
                max_tokens = pool["tokens"].max()
                pool = pool[pool["tokens"] >= cut]
                for p in fractions:
                    sel = pool[pool["tokens"] <= p * max_tokens]
                    if len(sel) == 0:
                        empty.append(
                            {"min_tokens": cut, "family": family, "k": k, "fraction": p, "reason": "no training checkpoints"}
                        )
                        continue
                    cells.append(_cell_data(family, k, p, cut, sel, max_checkpoints, tuple(targets)))
    return Protocol(
        cells=tuple(cells),
        families=tuple(kept),
        skipped_families=pd.DataFrame(skipped, columns=["family", "reason"]),
        diverged_targets=pd.DataFrame(div_rows, columns=["family", "target", "rise", "n_points"]),
        empty_cells=pd.DataFrame(empty, columns=["min_tokens", "family", "k", "fraction", "reason"]),
    )


def _cell_data(family, k, p, cut, sel, max_checkpoints, targets) -> CellData:
    parts = []
    for _, run in sel.groupby("model", sort=True):
        if max_checkpoints is not None:
            run = run.iloc[np.sort(thin_log_spaced(run["tokens"].to_numpy(), int(max_checkpoints)))]
        else:
            run = run.sort_values("tokens")
        parts.append(run)
    sel = pd.concat(parts)
    models = tuple(str(m) for m in dict.fromkeys(sel["model"]))
    run_idx = sel["model"].map({m: i for i, m in enumerate(models)}).to_numpy(dtype=int)
    return CellData(
        family=str(family),
        k=int(k),
        fraction=float(p),
        min_tokens=float(cut),
        train_num_params=sel["num_params"].to_numpy(dtype=float),
        train_tokens=sel["tokens"].to_numpy(dtype=float),
        train_loss=sel["loss"].to_numpy(dtype=float),
        train_run=run_idx,
        train_models=models,
        targets=targets,
    )


def no_cells_reason(protocol: Protocol) -> str:
    """Why a protocol has no cells, naming the first families and their reasons."""
    reasons = [f"{r.family}: {r.reason}" for r in protocol.skipped_families.itertuples(index=False)]
    if len(protocol.empty_cells):
        empty = sorted(set(protocol.empty_cells["family"]))
        reasons.append(f"{', '.join(empty[:5])}: no training checkpoints at these cuts, k and fractions")
    if not reasons:
        reasons.append(f"{', '.join(protocol.families[:5])}: no requested k below the family's number of sizes")
    shown = "; ".join(reasons[:5]) + (f"; ... ({len(reasons)} in all)" if len(reasons) > 5 else "")
    return f"no family has a cell ({shown}); a family needs {MIN_SIZES} distinct sizes and a target run that did not diverge"
