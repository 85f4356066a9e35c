"""Back-test of scaling-law estimators with the protocol of "A Hitchhiker's Guide to
Scaling Law Estimation" (Choshen, Zhang, Andreas, ICML 2025, section 3.2).

Protocol
--------
* Families with at least 3 distinct ``num_params`` (primary metric rows only).
* Target: every run of the largest ``num_params`` (several runs at that size: each is its
  own target and the family's score is their mean). Target checkpoints: that run's
  checkpoints with ``tokens >= 0.7 * max tokens of the run`` (the last 30% of training).
  The token cut does **not** apply to targets, so both cuts score the same points.
* A target whose loss rises over its last 30% (mean loss of the last third of the target
  window above the mean of its first third by more than 2%, well above checkpoint noise) "diverged": it is excluded
  from scoring and listed.
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

Estimators
----------
Objects behind one interface (:mod:`bayes_scaling.estimators`, looked up by the name a cell
carries).

``classic`` and ``classic_huber``: :mod:`bayes_scaling.pointfit`.

``bayes_independent``: the held-out family alone, no pooling, with the weak priors of the
``chinchilla_independent`` spec (:func:`bayes_scaling.cellfit.independent_prior`).

``bayes_hierarchical``: partial pooling with the other families, made affordable in two
stages. (1) Population: every family with >= 3 sizes at the token cut is fitted once, on
all its data, with the same single-family model and the independent prior; the prior of
the held-out family f is the predictive of a new family from a normal population fitted to
every *other* family's posterior (leave-one-family-out, so no target data leak into its own
prior; see :func:`population_priors`): a random-effects meta-analysis, in which a family that
cannot pin a parameter (a wide or two-mode posterior) has little say in it, and a Student-t
predictive that carries the uncertainty of the population's mean and covariance
(:func:`bayes_scaling.cellfit.random_effects_prior`). (The first version, an equal-weight
mixture of the posteriors, let one family with a two-mode posterior of E move every k = 1
prediction.) (2) Each cell is
fitted as a small single-family NUTS model under that prior
(:func:`bayes_scaling.cellfit.fit_cell`: padded shapes and ``jit_model_args`` so one
compilation serves every cell of a shape bucket). The target is predicted as a *new run* of
its family: theta from the cell posterior, a fresh run offset ``u ~ N(0, sigma_run)``, and
observation noise (targets are measured checkpoints). The population fits also learn a size
discrepancy (``sigma_size``: how far runs sit off the law per unit of distance in log N from
a family's largest size), so the offset's sd grows with how far the target lies beyond the
largest training size; five training sizes otherwise pin the law so tightly that its
intervals ignore that the law itself bends (90% coverage at k = 5 was 68% without it).
Why not the full hierarchical NUTS model of :mod:`bayes_scaling.inference`: one fit of the
corpus takes many minutes on the shared 2-core machine, and an honest back-test needs one
per held-out family (or fold) and token cut. The two-stage empirical-Bayes version keeps
leave-one-family-out exact and costs one small fit per family. ``population_priors(...,
method="hierarchical")`` runs the K-fold variant with the full hierarchical fit instead.

Bayesian point prediction: posterior-predictive median. Classic interval: draws from the
fitted covariance ``N(popt, pcov)`` (parameter uncertainty only, the naive baseline).

Running
-------
:func:`protocol_cells` lists the cells; :func:`build_cells` attaches estimators and priors;
:func:`evaluate_cell` is a pure function ``(Cell, seed) -> list of row dicts``;
:func:`run_cells` maps it over an iterable of cells with an *executor* and hands every
finished cell's rows to a *sink* as soon as it completes (so a run can be resumed by
skipping :attr:`Cell.key` values already written). An executor is any object with

    map_unordered(fn, items) -> iterator of (item, fn(item))

yielding pairs in completion order; :class:`LocalExecutor` runs them in this process.
"""

from __future__ import annotations

import csv
import functools
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np
import pandas as pd

from . import estimators as _estimators
from .cellfit import SAMPLER_DEFAULTS
from .convergence import MIXED_RHAT
from .data import Filters, apply_filters, late_window, load_runs, loss_rise, thin_log_spaced
from .errors import ConvergenceWarning, DataError, DataWarning, ExtrapolationWarning

#: Names of the estimators (:data:`bayes_scaling.estimators.ESTIMATORS`), in report order.
ESTIMATORS = tuple(_estimators.ESTIMATORS)
BAYES_ESTIMATORS = tuple(name for name, e in _estimators.ESTIMATORS.items() if e.bayesian)
FRACTIONS = (0.1, 0.2, 0.3, 0.5, 1.0)
MIN_SIZES = 3
#: Central interval levels scored (coverage columns ``cov_20`` ... ``cov_95``).
LEVELS = (0.2, 0.4, 0.5, 0.6, 0.8, 0.9, 0.95)
#: Columns that identify a row (the rest are scores and diagnostics).
ROW_KEY_COLUMNS = ("min_tokens", "family", "target", "k", "fraction", "estimator")
CELL_KEY_COLUMNS = ("min_tokens", "family", "k", "fraction", "estimator")
ARE_CAP = 1.0
#: Columns that hold observed losses of the runs table (the rest are scores and settings).
OBSERVED_COLUMNS = ("loss_last",)


def scores_only(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` without :data:`OBSERVED_COLUMNS`: what a results file may keep when the runs
    table's losses must not travel with it (a repository, a shared report)."""
    return rows.drop(columns=[c for c in OBSERVED_COLUMNS if c in rows.columns])


#: Default sampler settings of the Bayesian cell fits: the library's (one definition) plus
#: the predictive draws scored per target.
BAYES_SETTINGS = {**SAMPLER_DEFAULTS, "n_pred_draws": 400}


# --------------------------------------------------------------------------- cells


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

    ``prior`` is the :class:`~bayes_scaling.cellfit.CellPrior` of the Bayesian estimators
    (None for the point fits); ``settings`` are sampler settings as sorted (key, value) pairs.
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


# --------------------------------------------------------------------------- priors


def population_priors(
    runs,
    scored_families: Iterable[str],
    min_tokens: float,
    *,
    population=None,
    seed: int = 0,
    progress: Callable | None = None,
    executor=None,
    **build_settings,
) -> tuple[dict, pd.DataFrame]:
    """Populations of ``bayes_hierarchical``: one per scored family, without its source group.

    A family's population never holds the family itself nor any family of its source group
    (siblings share data, code and units, so they would leak what the held-out family's
    target looks like): :meth:`bayes_scaling.population.Population.without`.

    Parameters
    ----------
    runs : path or DataFrame
    scored_families : iterable of str
    min_tokens : float
        Token cut of the cells (a population built here uses it).
    population : "public", path or Population, optional
        An existing population (e.g. the shipped public one, built from this corpus at
        tokens >= 1e10); None builds one from ``runs`` with
        :func:`bayes_scaling.population.build` (``build_settings``, ``seed``, ``progress``,
        ``executor`` go to it).

    Returns
    -------
    priors : dict
        scored family -> :class:`~bayes_scaling.population.Population`.
    info : DataFrame
        The population's members (one row each) with ``min_tokens``.
    """
    from . import population as pop_mod

    table = primary_table(runs)
    if population is None:
        pop = pop_mod.build(table, min_tokens=min_tokens, seed=seed, executor=executor, progress=progress, **build_settings)
    else:
        pop = pop_mod.resolve(population)
    groups = pop_mod.source_groups(table)
    priors = {f: pop.without(groups=[groups.get(f, f)], families=[f]) for f in sorted(set(scored_families))}
    return priors, pop.members.assign(min_tokens=min_tokens)


def build_cells(
    protocol: Protocol,
    estimators: Iterable[str] = ESTIMATORS,
    *,
    bayes_fractions: Iterable[float] | None = None,
    bayes_ks: Iterable[int] | None = None,
    population: dict | None = None,
    bayes_settings: dict | None = None,
) -> list[Cell]:
    """Attach estimators (and priors) to the protocol's cells.

    Parameters
    ----------
    protocol : Protocol
    estimators : iterable of str
        Subset of :data:`ESTIMATORS`.
    bayes_fractions, bayes_ks : iterable, optional
        Restrict the (costly) Bayesian estimators to these fractions / k values; the point
        fits run on every cell.
    population : dict, optional
        ``{min_tokens: {family: Population}}`` for ``bayes_hierarchical`` (from
        :func:`population_priors`); required when that estimator is requested.
    bayes_settings : dict, optional
        Overrides of :data:`BAYES_SETTINGS`.
    """
    chosen = _estimators.resolve(estimators)
    settings = tuple(sorted({**BAYES_SETTINGS, **(bayes_settings or {})}.items()))
    bf = None if bayes_fractions is None else {float(p) for p in bayes_fractions}
    bk = None if bayes_ks is None else {int(k) for k in bayes_ks}
    cells = []
    for data in protocol.cells:
        for est in chosen:
            if not est.bayesian:
                cells.append(Cell(data, est.name))
            elif (bf is None or data.fraction in bf) and (bk is None or data.k in bk):
                cells.append(Cell(data, est.name, est.prior(data, population), settings))
    return cells


# --------------------------------------------------------------------------- scoring


def cell_seed(key: tuple, seed: int) -> int:
    """Seed of a cell: a hash of its key mixed with the run seed (order independent)."""
    from .cellfit import stable_seed

    return stable_seed(key, seed)


def crps_from_draws(draws: np.ndarray, y: np.ndarray) -> np.ndarray:
    """CRPS of each column of ``draws`` (S, P) against ``y`` (P,), same units as y.

    Uses the sorted-sample identity ``E|X - y| - E|X - X'| / 2``.
    """
    x = np.sort(draws, axis=0)
    s = x.shape[0]
    term1 = np.mean(np.abs(x - y[None, :]), axis=0)
    weights = (2 * np.arange(1, s + 1) - s - 1)[:, None]
    term2 = np.sum(weights * x, axis=0) / (s * s)
    return term1 - term2


def score_target(y: np.ndarray, point: np.ndarray, draws: np.ndarray | None) -> dict:
    """ARE, coverage, width and CRPS of one target (relative to the observed loss)."""
    out = {"n_target_points": len(y)}
    with np.errstate(invalid="ignore", over="ignore"):
        rel = np.abs(y - point) / y
    out["are"] = float(np.mean(rel)) if np.all(np.isfinite(rel)) else float("inf")
    out["are_last"] = float(rel[-1]) if np.isfinite(rel[-1]) else float("inf")
    out["pred_last"] = float(point[-1])
    out["loss_last"] = float(y[-1])
    for level in LEVELS:
        tag = f"{int(round(level * 100))}"
        if draws is None:
            out[f"cov_{tag}"] = np.nan
            if level in (0.5, 0.9):
                out[f"width_{tag}"] = np.nan
            continue
        q = (1 - level) / 2
        with np.errstate(invalid="ignore"):
            lo, hi = np.nanquantile(draws, [q, 1 - q], axis=0)
        if np.any(np.isnan(lo) | np.isnan(hi)):
            out[f"cov_{tag}"] = np.nan
            if level in (0.5, 0.9):
                out[f"width_{tag}"] = np.nan
            continue
        out[f"cov_{tag}"] = float(np.mean((y >= lo) & (y <= hi)))
        if level in (0.5, 0.9):
            with np.errstate(invalid="ignore", over="ignore"):
                out[f"width_{tag}"] = float(np.mean((hi - lo) / y))
    if draws is None:
        out["crps_rel"] = np.nan
    else:
        finite = np.all(np.isfinite(draws), axis=0)
        out["crps_rel"] = float(np.mean(crps_from_draws(draws, y) / y)) if finite.all() else float("inf")
    return out


def _threads_limited():
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(1)
    except ImportError:  # pragma: no cover - optional speed-up
        import contextlib

        return contextlib.nullcontext()


def evaluate_cell(cell: Cell, seed: int = 0, posterior=None) -> list[dict]:
    """Fit one estimator on one cell and score every target: a pure function.

    Never raises for a failed fit: the rows then have ``status="failed"`` and the message.
    Silent on the warnings a user's fit and prediction print (convergence, extrapolation,
    rising training runs): a cell extrapolates by design, its rows carry r-hat and
    divergences, and it trains on whatever the family's small runs did, so a run in
    worker processes, which do not share the caller's warning filters, prints none per cell.
    ``posterior`` (Bayesian estimators only): a :class:`~bayes_scaling.cellfit.CellPosterior`
    of this cell already fitted elsewhere (e.g. :mod:`bayes_scaling.batched`), used instead
    of fitting.

    Returns
    -------
    list of dict
        One row per target (columns :data:`ROW_KEY_COLUMNS` plus scores and diagnostics).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", ExtrapolationWarning)
        warnings.simplefilter("ignore", DataWarning)
        return _evaluate_cell(cell, seed, posterior)


def _evaluate_cell(cell: Cell, seed: int, posterior) -> list[dict]:
    data = cell.data
    settings = dict(cell.settings)
    s = cell_seed(cell.key, seed)
    base = {
        "min_tokens": data.min_tokens,
        "family": data.family,
        "k": data.k,
        "fraction": data.fraction,
        "estimator": cell.estimator,
        "n_train_points": data.n_train,
        "n_train_runs": len(data.train_models),
        "max_train_params": float(np.max(data.train_num_params)),
        "max_train_tokens": float(np.max(data.train_tokens)),
        "seed": s,
    }
    start = time.perf_counter()
    diag = {"status": "ok", "message": "", "divergences": np.nan, "max_rhat": np.nan}
    predictors = None
    try:
        with _threads_limited():
            fitted = _estimators.ESTIMATORS[cell.estimator].fit(data, cell.prior, settings, s, posterior)
        predictors = fitted.predict
        diag.update(message=fitted.message, divergences=fitted.divergences, max_rhat=fitted.max_rhat)
    except Exception as exc:  # noqa: BLE001 - any estimator failure is a scored outcome
        diag = {**diag, "status": "failed", "message": f"{type(exc).__name__}: {exc}"[:300]}
    fit_seconds = time.perf_counter() - start
    rows = []
    for t_i, target in enumerate(data.targets):
        row = {**base, "target": target.model, "target_params": target.num_params, **diag, "fit_seconds": fit_seconds}
        if predictors is None:
            # every score column, NaN: rows of failed and scored cells share one set of columns
            # (a CSV sink takes its header from the first cell to finish)
            unscored = score_target(target.loss, np.full(len(target.loss), np.nan), None)
            row.update({k: v if k in ("n_target_points", "loss_last") else np.nan for k, v in unscored.items()})
        else:
            point, draws = predictors(target, s + 7919 * (t_i + 1))
            row.update(score_target(target.loss, point, draws))
            if not np.isfinite(row["are"]):
                row["status"] = "nonfinite"
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- runner


class LocalExecutor:
    """Evaluate cells one after another in this process (the default executor).

    Any object with ``map_unordered(fn, items)`` yielding ``(item, fn(item))`` in completion
    order can replace it (e.g. a Ray pool); ``fn`` is a pure, picklable function.
    """

    def map_unordered(self, fn: Callable, items: Iterable) -> Iterator:
        for item in items:
            yield item, fn(item)


class CsvSink:
    """Append finished rows to a CSV file as they arrive (header written once).

    ``append=False`` (default) starts a new file; ``append=True`` keeps the rows already
    there and reuses its header (resume a run by skipping the keys it holds).
    """

    def __init__(self, path, columns: Iterable[str] | None = None, append: bool = False):
        self.path = Path(path)
        self.columns = list(columns) if columns is not None else None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and not append:
            self.path.unlink()
        elif self.path.exists() and self.columns is None:
            with self.path.open(newline="") as fh:
                self.columns = next(csv.reader(fh), None)

    def __call__(self, rows: list[dict]) -> None:
        if not rows:
            return
        if self.columns is None:
            self.columns = list(rows[0].keys())
        new = not self.path.exists()
        with self.path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerows(rows)


def done_keys(path) -> set:
    """Cell keys (:attr:`Cell.key`) already present in a results CSV (for resuming)."""
    path = Path(path)
    if not path.exists():
        return set()
    df = pd.read_csv(path, usecols=list(CELL_KEY_COLUMNS))
    return {
        (float(r.min_tokens), str(r.family), int(r.k), float(r.fraction), str(r.estimator))
        for r in df.drop_duplicates().itertuples(index=False)
    }


def run_cells(
    cells: Iterable[Cell],
    *,
    seed: int = 0,
    executor=None,
    sink: Callable[[list[dict]], None] | None = None,
    progress: Callable[[Cell], None] | None = None,
) -> pd.DataFrame:
    """Evaluate cells with an executor, streaming each finished cell's rows to ``sink``.

    Parameters
    ----------
    cells : iterable of Cell
        Work items; skip keys already done to resume a run.
    seed : int
        Run seed; each cell's seed is :func:`cell_seed` of its key and this.
    executor : object, optional
        Has ``map_unordered(fn, items)``; default :class:`LocalExecutor`.
    sink : callable, optional
        Called with the list of rows of every finished cell, in completion order.
    progress : callable, optional
        Called with each finished cell (e.g. a tqdm bar's update).

    Returns
    -------
    DataFrame
        All rows (one per family x target x k x fraction x cut x estimator).
    """
    executor = executor or LocalExecutor()
    fn = functools.partial(evaluate_cell, seed=seed)
    rows = []
    for cell, cell_rows in executor.map_unordered(fn, cells):
        rows.extend(cell_rows)
        if sink is not None:
            sink(cell_rows)
        if progress is not None:
            progress(cell)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- aggregation


def family_scores(results: pd.DataFrame, by: Iterable[str] = ("min_tokens", "estimator", "k", "fraction")) -> pd.DataFrame:
    """Per-family scores: mean over targets (and any dims not in ``by``) of each score.

    Failed or non-finite fits count as ARE = inf; ``are_capped`` caps each family's ARE
    at 100% before any further averaging.
    """
    by = list(by)
    df = results.copy()
    df["are"] = df["are"].where(np.isfinite(df["are"].astype(float)) | df["are"].isna(), np.inf)
    df.loc[df["status"] != "ok", "are"] = np.inf
    df["failed"] = (df["status"] == "failed").astype(float)
    # per (cell) family ARE: mean over targets, then cap, then average over remaining dims
    cell_cols = list(dict.fromkeys([*by, "family", "k", "fraction", "min_tokens", "estimator"]))
    score_cols = [c for c in df.columns if c.startswith(("cov_", "width_")) or c == "crps_rel"]
    cell = df.groupby(cell_cols, dropna=False).agg(
        are=("are", "mean"), failed=("failed", "max"), **{c: (c, "mean") for c in score_cols}
    ).reset_index()
    cell["are_capped"] = cell["are"].clip(upper=ARE_CAP)
    cell["wild"] = (cell["are"] > ARE_CAP) & (cell["failed"] == 0)
    fam = cell.groupby([*by, "family"], dropna=False).agg(
        are=("are", "mean"),
        are_capped=("are_capped", "mean"),
        wild=("wild", "max"),
        failed=("failed", "max"),
        **{c: (c, "mean") for c in score_cols},
    )
    return fam.reset_index()


def aggregate(results: pd.DataFrame, by: Iterable[str] = ("min_tokens", "estimator", "k")) -> pd.DataFrame:
    """Macro aggregates over families: median ARE, capped-mean ARE, wild/failed counts,
    interval coverage (mean over families), relative width and CRPS (medians over
    families: a single exploding classic covariance would swamp a mean)."""
    by = list(by)
    fam = family_scores(results, by)
    score_cols = [c for c in fam.columns if c.startswith(("cov_", "width_")) or c == "crps_rel"]
    agg = fam.groupby(by, dropna=False).agg(
        n_families=("family", "nunique"),
        are_median=("are", "median"),
        are_capped_mean=("are_capped", "mean"),
        n_wild=("wild", "sum"),
        n_failed=("failed", "sum"),
        **{c: (c, "median" if c.startswith("width_") or c == "crps_rel" else "mean") for c in score_cols},
    )
    return agg.reset_index()


def _pct(x, digits=1):
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "-"
    if np.isinf(x):
        return "inf"
    return f"{100 * x:.{digits}f}"


def _md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(str(c) for c in cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(str(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def _cut_label(c):
    return f"{c:g}"


#: Issue 17's range for the 90% intervals' coverage, pooled over k = 1..5.
COVERAGE_BAR = (0.85, 0.95)
#: Issue 17's ARE bar: hierarchical at most this times the better point fit, by k.
ARE_BAR = {1: 0.6, 2: 0.6}
#: The point fits the hierarchical estimator must beat (the better of them, per statistic).
BASELINES = ("classic", "classic_huber")


def chance_range(n_families: int, nominal: float = 0.9, mass: float = 0.95) -> tuple[float, float]:
    """Central ``mass`` range of the empirical coverage that a *calibrated* ``nominal`` interval
    shows over ``n_families`` families by chance alone.

    A target's checkpoints are a correlated stretch of one curve: nearly always all of them
    fall inside an interval or all outside (every hierarchical target at the 1e10 cut of the
    committed back-test), so a family counts as one Bernoulli(``nominal``) trial and the
    number covered is Binomial(``n_families``, ``nominal``).
    """
    from scipy.stats import binom

    if n_families < 1:
        return (np.nan, np.nan)
    tail = (1 - mass) / 2
    return float(binom.ppf(tail, n_families, nominal) / n_families), float(binom.ppf(1 - tail, n_families, nominal) / n_families)


def _common_cells(results: pd.DataFrame, min_tokens: float, fraction: float) -> pd.DataFrame:
    """Rows at one cut and fraction, on the (family, k) cells where bayes_hierarchical ran."""
    sub = results[(results["min_tokens"] == min_tokens) & (results["fraction"] == fraction)]
    hier_cells = sub[sub["estimator"] == "bayes_hierarchical"][["family", "k"]].drop_duplicates()
    return sub.merge(hier_cells, on=["family", "k"])


def bars(results: pd.DataFrame, min_tokens: float = 1e10, fraction: float = 1.0) -> pd.DataFrame:
    """Issue 17's ARE bars by k, on the cells where bayes_hierarchical ran: its median and
    capped-mean ARE at most the better of :data:`BASELINES` for that statistic, times
    :data:`ARE_BAR` (0.6 at k = 1, 2: 40% lower; 1 elsewhere). Coverage: :func:`pooled_coverage`."""
    sub = _common_cells(results, min_tokens, fraction)
    if sub.empty or not {"bayes_hierarchical", *BASELINES} <= set(sub["estimator"]):
        return pd.DataFrame()
    agg = aggregate(sub, ("estimator", "k"))
    rows = []
    for k in sorted(agg["k"].unique()):
        a = agg[agg["k"] == k].set_index("estimator")
        if not {"bayes_hierarchical", *BASELINES} <= set(a.index):
            continue
        h, need = a.loc["bayes_hierarchical"], ARE_BAR.get(int(k), 1.0)
        best = {stat: min(a.loc[b, stat] for b in BASELINES) for stat in ("are_median", "are_capped_mean")}
        met = [stat for stat in best if not h[stat] <= need * best[stat]]
        rows.append(
            {
                "k": k,
                "families": int(h["n_families"]),
                "bar": f"hier <= {need:g} x best point fit",
                **{f"{b} median / capped %": f"{_pct(a.loc[b, 'are_median'], 2)} / {_pct(a.loc[b, 'are_capped_mean'], 2)}" for b in BASELINES},
                "hier median / capped %": f"{_pct(h['are_median'], 2)} / {_pct(h['are_capped_mean'], 2)}",
                "met": "yes" if not met else "no: " + ", ".join(s.removeprefix("are_") for s in met),
            }
        )
    return pd.DataFrame(rows)


def pooled_coverage(results: pd.DataFrame, estimator: str = "bayes_hierarchical", min_tokens: float = 1e10, fraction: float = 1.0) -> tuple[float, int]:
    """90% coverage of ``estimator`` pooled over k: mean over its (family, k) cells of each
    family's coverage; and the number of cells. Checked against :data:`COVERAGE_BAR`."""
    sub = results[(results["min_tokens"] == min_tokens) & (results["fraction"] == fraction) & (results["estimator"] == estimator)]
    if sub.empty:
        return np.nan, 0
    fam = family_scores(sub, ("estimator", "k"))
    return float(fam["cov_90"].mean()), len(fam)


def cluster_bootstrap(
    scores: pd.DataFrame,
    groups: Mapping[str, str],
    column: str,
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    n_boot: int = 2000,
    level: float = 0.9,
    seed: int = 0,
) -> tuple[float, float]:
    """Central ``level`` interval of ``statistic(scores[column])`` over resamples of whole
    source groups.

    ``scores`` has a ``family`` column (e.g. :func:`family_scores`); each resample draws as
    many source groups as there are, with replacement, and keeps every row of each drawn
    group, so siblings (which share data, code and units) move together and the interval
    is not narrowed by counting them as independent. Families missing from ``groups`` are
    their own group.
    """
    group_of = scores["family"].map(lambda f: groups.get(f, f)).to_numpy()
    values = scores[column].to_numpy(float)
    names = np.unique(group_of)
    rows_of = [np.flatnonzero(group_of == name) for name in names]
    rng = np.random.default_rng(seed)
    stats = [
        statistic(values[np.concatenate([rows_of[i] for i in rng.integers(len(names), size=len(names))])]) for _ in range(n_boot)
    ]
    low, high = np.nanquantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def coverage_by_mixing(results: pd.DataFrame) -> pd.DataFrame:
    """90% coverage, interval width and ARE of Bayesian cells, split by whether their chains mixed.

    One value per cell (mean over its targets); coverage is averaged over cells, width and
    ARE are medians. A cell whose chains sit in different modes pools them half and half,
    whatever their posterior mass, so its intervals say more about the sampler than the data.
    """
    cells = results.groupby(list(CELL_KEY_COLUMNS), dropna=False).agg(
        cov_90=("cov_90", "mean"), width_90=("width_90", "mean"), are=("are", "mean"), max_rhat=("max_rhat", "first")
    )
    rhat = cells["max_rhat"].astype(float)
    cells["mixed"] = np.select([rhat <= MIXED_RHAT, rhat > MIXED_RHAT], ["yes", "no"], "unknown (one chain)")
    out = cells.groupby(["min_tokens", "estimator", "mixed"]).agg(
        cells=("are", "size"), cov_90=("cov_90", "mean"), width_90=("width_90", "median"), are_median=("are", "median")
    )
    return out.reset_index()


def summary_markdown(results: pd.DataFrame, protocol: Protocol | None = None, meta: dict | None = None, population_info: pd.DataFrame | None = None) -> str:
    """Markdown report: settings, macro ARE by estimator x k and x fraction, coverage,
    the bars, a per-family table and the exclusions."""
    out = ["# Back-test: ARE and interval coverage", ""]
    if meta:
        out += ["## Settings", ""] + [f"- **{k}**: {v}" for k, v in meta.items()] + [""]
    out += [
        "ARE = mean over target checkpoints of |L - L_hat| / L, averaged over a family's targets; "
        "cells are aggregated over families by the median and by the mean of ARE capped at 100%. "
        "Failed fits count as ARE = inf (100% capped). Entries: `median / capped mean` in %, "
        "then `(wild, failed)` counts of families. Coverage = share of target checkpoints inside the "
        "central interval, averaged over targets then families; interval width and CRPS are relative to the "
        "observed loss, medians over families.",
        "",
    ]
    estimators = [e for e in ESTIMATORS if e in set(results["estimator"])]
    for cut in sorted(results["min_tokens"].unique(), reverse=True):
        sub = results[results["min_tokens"] == cut]
        out += [f"## Token cut {_cut_label(cut)}", ""]
        full = sub[sub["fraction"] == 1.0]
        if not full.empty:
            agg = aggregate(full, ("estimator", "k"))
            out += ["### ARE by estimator x k (fraction 1.0)", ""]
            table = {"k": sorted(agg["k"].unique())}
            for est in estimators:
                a = agg[agg["estimator"] == est].set_index("k")
                table[est] = [
                    f"{_pct(a.loc[k, 'are_median'])} / {_pct(a.loc[k, 'are_capped_mean'])} "
                    f"({int(a.loc[k, 'n_wild'])}, {int(a.loc[k, 'n_failed'])}; n={int(a.loc[k, 'n_families'])})"
                    if k in a.index
                    else "-"
                    for k in table["k"]
                ]
            out += [_md_table(pd.DataFrame(table)), ""]
        agg = aggregate(sub, ("estimator", "fraction"))
        out += ["### ARE by estimator x fraction (each family's ARE averaged over its k, capped first)", ""]
        table = {"fraction": sorted(agg["fraction"].unique())}
        for est in estimators:
            a = agg[agg["estimator"] == est].set_index("fraction")
            table[est] = [
                f"{_pct(a.loc[p, 'are_median'])} / {_pct(a.loc[p, 'are_capped_mean'])}" if p in a.index else "-"
                for p in table["fraction"]
            ]
        out += [_md_table(pd.DataFrame(table)), ""]
        agg = aggregate(sub[sub["fraction"] == 1.0] if not full.empty else sub, ("estimator", "k"))
        out += ["### Interval coverage and width (fraction 1.0; nominal 50% and 90%)", ""]
        rows = []
        for _, r in agg.iterrows():
            if np.isnan(r.get("cov_90", np.nan)):
                continue
            rows.append(
                {
                    "estimator": r["estimator"],
                    "k": r["k"],
                    "cov 50%": _pct(r.get("cov_50", np.nan)),
                    "cov 90%": _pct(r["cov_90"]),
                    "width 50% (rel)": _pct(r.get("width_50", np.nan), 2),
                    "width 90% (rel)": _pct(r.get("width_90", np.nan), 2),
                    "CRPS (rel, %)": _pct(r.get("crps_rel", np.nan), 2),
                    "n": int(r["n_families"]),
                }
            )
        if rows:
            out += [_md_table(pd.DataFrame(rows)), ""]
        cov_all = aggregate(full if not full.empty else sub, ("estimator",))
        rows = [
            {"estimator": r["estimator"], **{f"{int(round(100 * l))}%": _pct(r.get(f"cov_{int(round(100 * l))}", np.nan)) for l in LEVELS}}
            for _, r in cov_all.iterrows()
            if not np.isnan(r.get("cov_90", np.nan))
        ]
        if rows:
            out += ["### Calibration: empirical coverage at each nominal level (all k, fraction 1.0)", "", _md_table(pd.DataFrame(rows)), ""]
        b = bars(results, cut, 1.0)
        if not b.empty:
            scope = "" if cut >= 1e10 else "; the issue sets them at the 1e10 cut, here for comparison only"
            cov, n_cells = pooled_coverage(results, "bayes_hierarchical", cut, 1.0)
            low, high = COVERAGE_BAR
            out += [
                f"### Bars of issue 17 (cells where bayes_hierarchical ran{scope})",
                "",
                _md_table(b),
                "",
                f"90% coverage of bayes_hierarchical pooled over k: {_pct(cov)}% of {n_cells} (family, k) cells "
                f"(bar {_pct(low, 0)}-{_pct(high, 0)}%: {'met' if low <= cov <= high else 'missed'}).",
                "",
            ]
        if not full.empty:
            fam = family_scores(full, ("estimator", "k"))
            pt = fam.pivot_table(index=["family", "k"], columns="estimator", values="are", aggfunc="mean")
            pt = pt[[e for e in estimators if e in pt.columns]]
            pt = pt.map(lambda v: _pct(v, 2)).reset_index()
            out += ["### Per-family ARE % (fraction 1.0)", "", _md_table(pt), ""]
    bayes = results[results["estimator"].isin(BAYES_ESTIMATORS)]
    if len(bayes) and {"max_rhat", "divergences", "fit_seconds", "status"} <= set(bayes.columns):
        cells = bayes.drop_duplicates(list(CELL_KEY_COLUMNS))
        conv = cells.groupby(["min_tokens", "estimator"]).agg(
            cells=("family", "size"),
            failed=("status", lambda s: int((s == "failed").sum())),
            rhat_over_1_05=("max_rhat", lambda x: f"{100 * np.mean(x > 1.05):.0f}%"),
            rhat_over_1_2=("max_rhat", lambda x: f"{100 * np.mean(x > 1.2):.0f}%"),
            median_rhat=("max_rhat", lambda x: f"{np.nanmedian(x):.3f}"),
            with_divergences=("divergences", lambda x: int((x > 0).sum())),
            median_seconds=("fit_seconds", lambda x: f"{np.median(x):.1f}"),
        ).reset_index()
        by_mixing = coverage_by_mixing(bayes)
        by_mixing["cov_90"] = by_mixing["cov_90"].map(_pct)
        by_mixing["width_90"] = by_mixing["width_90"].map(_pct)
        by_mixing["are_median"] = by_mixing["are_median"].map(lambda v: _pct(v, 2))
        out += [
            "## Convergence of the Bayesian cell fits",
            "",
            "max r-hat per cell: the fit's own convergence check (arviz's rank-normalised split r-hat over the law "
            "parameters and the scales, what `fit` reports to its user); "
            "cells above 1.05 have not mixed and their intervals should be read with care.",
            "",
            _md_table(conv),
            "",
            f"Cells that mixed (r-hat <= {MIXED_RHAT}) and cells that did not: 90% coverage (mean over cells), "
            "relative width of the 90% interval and ARE (medians over cells), in %.",
            "",
            _md_table(by_mixing),
            "",
        ]
    if population_info is not None and len(population_info):
        # the population's members (Population.members); each family's prior leaves out its source group
        cols = ["min_tokens", "family", "group", "unit", "n_sizes", "n_points", "divergences", "max_rhat"]
        pi = population_info[[c for c in cols if c in population_info.columns]].copy()
        if "max_rhat" in pi:
            pi["max_rhat"] = pi["max_rhat"].map(lambda v: f"{v:.3f}")
        out += ["## Population members (bayes_hierarchical; each family's prior leaves out its source group)", "", _md_table(pi), ""]
    if protocol is not None:
        out += ["## Exclusions", ""]
        if len(protocol.diverged_targets):
            d = protocol.diverged_targets.copy()
            d["rise"] = d["rise"].map(lambda r: f"{100 * r:.2f}%")
            out += ["Diverged targets (loss rising over the last 30%; not scored):", "", _md_table(d), ""]
        else:
            out += ["No diverged targets.", ""]
        if len(protocol.skipped_families):
            out += ["Families not back-tested:", "", _md_table(protocol.skipped_families), ""]
        if len(protocol.empty_cells):
            e = protocol.empty_cells.groupby(["min_tokens", "family"]).size().reset_index(name="cells without training data")
            out += ["Cells with no training checkpoints (not scored):", "", _md_table(e), ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- fan data


def fan_data(
    runs,
    family: str,
    k: int,
    *,
    estimators: Iterable[str] = ("classic", "bayes_independent"),
    fraction: float = 1.0,
    min_tokens: float = 1e10,
    max_checkpoints: int | None = 30,
    priors: dict | None = None,
    n_grid: int = 60,
    seed: int = 0,
    bayes_settings: dict | None = None,
) -> dict:
    """Data of a fan chart: training points, target points and each estimator's
    prediction (median, 50% and 90% bands) along the target run's token axis.

    ``priors`` maps estimator name -> CellPrior for the Bayesian estimators (default:
    the independent prior for ``bayes_independent``; ``bayes_hierarchical`` needs one);
    ``bayes_settings`` overrides :data:`BAYES_SETTINGS`.

    Returns
    -------
    dict with ``train`` (DataFrame), ``targets`` (DataFrame) and ``bands`` (DataFrame:
    estimator, tokens, median, q05, q25, q75, q95).
    """
    proto = protocol_cells(runs, ks=[k], fractions=[fraction], min_tokens=min_tokens, max_checkpoints=max_checkpoints, families=[family])
    if not proto.cells:
        raise DataError(f"no back-test cell for family {family!r} at k={k}, fraction={fraction}, min_tokens={min_tokens:g}")
    data = proto.cells[0]
    target = data.targets[0]
    lo_tok = min(data.train_tokens.min(), target.tokens.min())
    grid = np.geomspace(lo_tok, target.tokens.max(), n_grid)
    grid_target = Target(target.model, target.num_params, grid, np.ones_like(grid))
    bands = []
    settings = {**BAYES_SETTINGS, **(bayes_settings or {})}
    for est in _estimators.resolve(estimators):
        prior = (priors or {}).get(est.name)
        if prior is None:
            prior = est.prior(data, None)
        fitted = est.fit(data, prior, settings, cell_seed(Cell(data, est.name).key, seed))
        point, draws = fitted.predict(grid_target, seed)
        row = {"estimator": est.name, "tokens": grid, "median": point}
        if draws is not None:
            with np.errstate(invalid="ignore"):
                q = np.nanquantile(draws, [0.05, 0.25, 0.75, 0.95], axis=0)
            row.update(q05=q[0], q25=q[1], q75=q[2], q95=q[3])
        bands.append(pd.DataFrame(row))
    train = pd.DataFrame({"num_params": data.train_num_params, "tokens": data.train_tokens, "loss": data.train_loss})
    targets = pd.concat(
        [pd.DataFrame({"model": t.model, "num_params": t.num_params, "tokens": t.tokens, "loss": t.loss}) for t in data.targets]
    )
    return {"family": family, "k": k, "train": train, "targets": targets, "bands": pd.concat(bands, ignore_index=True)}


# --------------------------------------------------------------------------- one call


def _no_cells_reason(protocol: Protocol) -> str:
    """Why a protocol has no cells, naming the first families and their reasons."""
    reasons = [f"{r.family}: {r.reason}" for r in protocol.skipped_families.itertuples(index=False)]
    if len(protocol.empty_cells):
        empty = sorted(set(protocol.empty_cells["family"]))
        reasons.append(f"{', '.join(empty[:5])}: no training checkpoints at these cuts, k and fractions")
    if not reasons:
        reasons.append(f"{', '.join(protocol.families[:5])}: no requested k below the family's number of sizes")
    shown = "; ".join(reasons[:5]) + (f"; ... ({len(reasons)} in all)" if len(reasons) > 5 else "")
    return f"no family has a cell ({shown}); a family needs {MIN_SIZES} distinct sizes and a target run that did not diverge"


@dataclass
class BacktestResult:
    """Rows, the protocol and the population-fit info of a back-test."""

    results: pd.DataFrame
    protocol: Protocol
    population_info: pd.DataFrame = field(default_factory=pd.DataFrame)

    def summary(self, meta: dict | None = None) -> str:
        return summary_markdown(self.results, self.protocol, meta, self.population_info)


def backtest(
    runs,
    *,
    estimators: Iterable[str] = ESTIMATORS,
    ks: Iterable[int] | None = None,
    fractions: Iterable[float] = FRACTIONS,
    min_tokens: float | Iterable[float] = 1e10,
    max_checkpoints: int | None = 30,
    families: Iterable[str] | None = None,
    bayes_fractions: Iterable[float] | None = None,
    bayes_ks: Iterable[int] | None = None,
    bayes_settings: dict | None = None,
    population=None,
    population_settings: dict | None = None,
    seed: int = 0,
    executor=None,
    sink=None,
    progress=None,
    on_cells: Callable[[list], None] | None = None,
) -> BacktestResult:
    """Run the whole back-test: protocol, populations, every cell, in one call.

    See :func:`protocol_cells`, :func:`population_priors`, :func:`build_cells` and
    :func:`run_cells` for the parameters. ``population`` ("public", a path or a Population)
    serves every cut; None builds one per cut from ``runs`` with ``population_settings``
    (:data:`bayes_scaling.population.BUILD_DEFAULTS` keys). ``on_cells`` receives the list of
    cells before they run (e.g. to size a progress bar).
    """
    table = primary_table(runs)
    protocol = protocol_cells(table, ks=ks, fractions=fractions, min_tokens=min_tokens, max_checkpoints=max_checkpoints, families=families)
    if not protocol.cells:
        raise DataError(f"nothing to back-test: {_no_cells_reason(protocol)}")
    estimators = tuple(estimators)
    priors_by_cut, info = None, []
    if any(est.needs_population for est in _estimators.resolve(estimators)):
        priors_by_cut = {}
        cuts = sorted({c.min_tokens for c in protocol.cells})
        for cut in cuts:
            scored = sorted({c.family for c in protocol.cells if c.min_tokens == cut})
            priors, pinfo = population_priors(
                table, scored, cut, population=population, seed=seed, executor=executor, **(population_settings or {})
            )
            priors_by_cut[cut] = priors
            info.append(pinfo)
    cells = build_cells(
        protocol, estimators, bayes_fractions=bayes_fractions, bayes_ks=bayes_ks, population=priors_by_cut, bayes_settings=bayes_settings
    )
    if on_cells is not None:
        on_cells(cells)
    results = run_cells(cells, seed=seed, executor=executor, sink=sink, progress=progress)
    return BacktestResult(results, protocol, pd.concat(info, ignore_index=True) if info else pd.DataFrame())
