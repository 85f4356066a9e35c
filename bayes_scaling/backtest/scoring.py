"""Scores of the back-test: per target (ARE, interval coverage and width, CRPS), per family
(targets averaged, ARE capped) and aggregated over families, with the intervals that say how
far such figures move by chance (calibrated coverage over few families; a bootstrap over
whole source groups).
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from ..convergence import MIXED_RHAT
from .protocol import CELL_KEY_COLUMNS

__all__ = [
    "ARE_CAP",
    "LEVELS",
    "OBSERVED_COLUMNS",
    "aggregate",
    "chance_range",
    "cluster_bootstrap",
    "coverage_by_mixing",
    "crps_from_draws",
    "family_scores",
    "pooled_coverage",
    "score_target",
    "scores_only",
]

#: Central interval levels scored (coverage columns ``cov_20`` ... ``cov_95``).
LEVELS = (0.2, 0.4, 0.5, 0.6, 0.8, 0.9, 0.95)
ARE_CAP = 1.0
#: Columns that hold observed losses of the runs table (the rest are scores and settings).
OBSERVED_COLUMNS = ("loss_last",)


def scores_only(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` without :data:`OBSERVED_COLUMNS`: what a results file may keep when the runs
    table's losses must not travel with it (a repository, a shared report)."""
    return rows.drop(columns=[c for c in OBSERVED_COLUMNS if c in rows.columns])


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


def pooled_coverage(results: pd.DataFrame, estimator: str = "bayes_hierarchical", min_tokens: float = 1e10, fraction: float = 1.0) -> tuple[float, int]:
    """90% coverage of ``estimator`` pooled over k: mean over its (family, k) cells of each
    family's coverage; and the number of cells. Checked against
    :data:`~bayes_scaling.backtest.report.COVERAGE_BAR`."""
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
