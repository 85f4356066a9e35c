"""Running the back-test.

:func:`~bayes_scaling.backtest.protocol.protocol_cells` lists the cells; :func:`build_cells`
attaches estimators and priors; :func:`evaluate_cell` is a pure function
``(Cell, seed) -> list of row dicts``; :func:`run_cells` maps it over an iterable of cells
with an *executor* and hands every finished cell's rows to a *sink* as soon as it completes.
An executor is any object with

    map_unordered(fn, items) -> iterator of (item, fn(item))

yielding pairs in completion order; :class:`LocalExecutor` runs them in this process.
:func:`backtest` does it all in one call: protocol, populations, cells, rows.

Results on disk and resuming have one mechanism, :mod:`bayes_scaling.distributed`'s:
:class:`~bayes_scaling.distributed.ParquetSink` writes each finished cell as its own file,
atomically, and :class:`~bayes_scaling.distributed.ResumeExecutor` skips the cells it holds.
"""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd

from ..cellfit import SAMPLER_DEFAULTS, stable_seed
from ..errors import ConvergenceWarning, DataError, DataWarning, ExtrapolationWarning
from . import estimators as _estimators
from .estimators import ESTIMATORS
from .populations import population_priors
from .protocol import FRACTIONS, Cell, Protocol, Target, no_cells_reason, primary_table, protocol_cells
from .report import summary_markdown
from .scoring import score_target

__all__ = [
    "BAYES_SETTINGS",
    "BacktestResult",
    "LocalExecutor",
    "backtest",
    "build_cells",
    "cell_seed",
    "evaluate_cell",
    "fan_data",
    "run_cells",
]


#: Default sampler settings of the Bayesian cell fits: the library's (one definition) plus
#: the predictive draws scored per target.
BAYES_SETTINGS = {**SAMPLER_DEFAULTS, "n_pred_draws": 400}


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


def cell_seed(key: tuple, seed: int) -> int:
    """Seed of a cell: a hash of its key mixed with the run seed (order independent)."""
    return stable_seed(key, seed)


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
            fitted = _estimators.REGISTRY[cell.estimator].fit(data, cell.prior, settings, s, posterior)
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
            unscored = score_target(target.loss, np.full(len(target.loss), np.nan), None)
            row.update({k: v if k in ("n_target_points", "loss_last") else np.nan for k, v in unscored.items()})
        else:
            point, draws = predictors(target, s + 7919 * (t_i + 1))
            row.update(score_target(target.loss, point, draws))
            if not np.isfinite(row["are"]):
                row["status"] = "nonfinite"
        rows.append(row)
    return rows


class LocalExecutor:
    """Evaluate cells one after another in this process (the default executor).

    Any object with ``map_unordered(fn, items)`` yielding ``(item, fn(item))`` in completion
    order can replace it (e.g. a Ray pool); ``fn`` is a pure, picklable function.
    """

    def map_unordered(self, fn: Callable, items: Iterable) -> Iterator:
        for item in items:
            yield item, fn(item)


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
        Work items (to resume a run, wrap the executor in
        :class:`~bayes_scaling.distributed.ResumeExecutor`).
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

    ``priors`` maps estimator name -> prior for the Bayesian estimators (default: the
    estimator's own, the independent prior for ``bayes_independent``; ``bayes_hierarchical``
    needs a Population);
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
        raise DataError(f"nothing to back-test: {no_cells_reason(protocol)}")
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
