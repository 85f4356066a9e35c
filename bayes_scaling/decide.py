"""Decisions under uncertainty, computed from posterior draws of one family's parameters.

Every function here takes an ``xr.Dataset`` of per-draw family parameters, as returned by
:func:`bayes_scaling.predict.family_draws`: variables ``log_e, log_a, log_b, alpha, beta``
and optionally ``run_offset`` (an offset on log loss; 0 when absent), with dims
``(chain, draw)``. The law is the centred Chinchilla form of :mod:`bayes_scaling.laws`::

    L = exp(run_offset) * (exp(log_e) + exp(log_a - alpha * x_n) + exp(log_b - beta * x_d))
    x_n = log(N / 1e9),  x_d = log(D / 1e11)

Every answer is a distribution over draws, returned as xarray (per draw) beside a
DataFrame summary (median and intervals). Nothing is printed or plotted here.

Compute-optimal allocation for ``C = 6 N D`` (closed form, per draw). With ``s = x_n + x_d
= log(C / (6 N_ref D_ref))`` fixed, ``a exp(-alpha x) + b exp(-beta (s - x))`` is minimised at::

    x_n* = (log(alpha) + log_a - log(beta) - log_b + beta * s) / (alpha + beta)
    x_d* = s - x_n*

Another FLOPs function ``flops_fn(num_params, tokens) -> flops`` (increasing in tokens) is
handled numerically: tokens are found by bisection for each ``N``, the best ``N`` on a log
grid and refined by golden-section search, per draw.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import xarray as xr
from scipy import optimize

from bayes_scaling.errors import DataError, DecisionWarning, FitError
from bayes_scaling.laws import PARAM_NAMES, REFERENCE_PARAMS, REFERENCE_TOKENS

#: Quantiles reported by every summary table (columns q05, q25, median, q75, q95).
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
SAMPLE_DIMS = ("chain", "draw")

#: Search range of tokens per parameter (D / N) used to bracket compute-optimal N.
TOKENS_PER_PARAM_RANGE = (1e-3, 1e6)
_LOG_FLOPS_SEARCH = (np.log(1e6), np.log(1e45))

FlopsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def six_nd(num_params, tokens):
    """Training FLOPs ``6 N D`` (the default FLOPs function)."""
    return 6.0 * np.asarray(num_params, dtype=float) * np.asarray(tokens, dtype=float)


# --------------------------------------------------------------------------- validation


def _positive_array(name, value):
    arr = np.atleast_1d(np.asarray(value, dtype=float))
    if arr.ndim != 1 or arr.size == 0:
        raise DataError(f"{name} must be a positive number or a 1-d sequence of them, got shape {arr.shape}")
    bad = ~np.isfinite(arr) | (arr <= 0)
    if bad.any():
        raise DataError(f"{name} must be finite and > 0; got {arr[bad][0]!r} ({int(bad.sum())} bad value(s))")
    return arr


def _probability(name, value):
    p = float(value)
    if not np.isfinite(p) or not 0.0 < p < 1.0:
        raise DataError(f"{name} must be strictly between 0 and 1, got {value!r}")
    return p


def _check_draws(draws, name="draws"):
    if not isinstance(draws, xr.Dataset):
        raise FitError(f"{name} must be an xarray.Dataset of per-draw family parameters, got {type(draws).__name__}")
    missing = [p for p in PARAM_NAMES if p not in draws]
    if missing:
        raise FitError(f"{name} lacks parameter(s) {missing}; expected {list(PARAM_NAMES)} (+ optional run_offset)")
    for p in PARAM_NAMES:
        if set(draws[p].dims) != set(SAMPLE_DIMS):
            raise FitError(f"{name}[{p!r}] must have dims {SAMPLE_DIMS}, got {draws[p].dims}")
    return draws


def _param_arrays(draws):
    """Flat NumPy arrays (one entry per draw) of the law's parameters and the run offset."""
    out = {p: draws[p].transpose(*SAMPLE_DIMS).values.reshape(-1).astype(float) for p in PARAM_NAMES}
    if "run_offset" in draws:
        out["run_offset"] = draws["run_offset"].transpose(*SAMPLE_DIMS).values.reshape(-1).astype(float)
    else:
        out["run_offset"] = np.zeros_like(out["log_e"])
    # a planned run's spread grows with its distance in log N from the largest size trained
    out["size_offset"] = draws["size_offset"].transpose(*SAMPLE_DIMS).values.reshape(-1).astype(float) if "size_offset" in draws else np.zeros_like(out["log_e"])
    out["size_anchor"] = float(draws.attrs.get("size_anchor", 0.0))
    # reference points of the centred parametrisation (attrs of family_draws; laws defaults otherwise)
    out["log_ref_n"] = np.log(float(draws.attrs.get("reference_params", REFERENCE_PARAMS)))
    out["log_ref_d"] = np.log(float(draws.attrs.get("reference_tokens", REFERENCE_TOKENS)))
    return out


def _log_flops_ref(p):
    return np.log(6.0) + p["log_ref_n"] + p["log_ref_d"]


def _shape(draws):
    return draws.sizes["chain"], draws.sizes["draw"]


def _to_dataarray(values, draws, extra_dim=None, extra_coord=None, name=None):
    """Wrap a (n_draws, ...) array back into a (chain, draw, extra_dim) DataArray."""
    n_chain, n_draw = _shape(draws)
    values = np.asarray(values)
    coords = {"chain": draws["chain"].values, "draw": draws["draw"].values}
    if extra_dim is None:
        return xr.DataArray(values.reshape(n_chain, n_draw), dims=SAMPLE_DIMS, coords=coords, name=name)
    coords[extra_dim] = extra_coord
    return xr.DataArray(values.reshape(n_chain, n_draw, -1), dims=(*SAMPLE_DIMS, extra_dim), coords=coords, name=name)


# --------------------------------------------------------------------------- maths


def _log_loss(p, log_n, log_d):
    """Log loss (incl. run offset) at ``log N, log D``, with a leading axis of size n_draws or 1."""
    x_n = np.atleast_1d(log_n) - p["log_ref_n"]
    x_d = np.atleast_1d(log_d) - p["log_ref_d"]
    extra = (1,) * (max(x_n.ndim, x_d.ndim) - 1)

    def col(v):
        return v.reshape(v.shape + extra)

    terms = np.logaddexp(col(p["log_e"]), col(p["log_a"]) - col(p["alpha"]) * x_n)
    offset = col(p["run_offset"]) + col(p["size_offset"]) * np.abs(x_n - p["size_anchor"])
    return np.logaddexp(terms, col(p["log_b"]) - col(p["beta"]) * x_d) + offset


def loss(draws, num_params, tokens):
    """Loss of a run of ``num_params`` parameters trained on ``tokens`` tokens, per draw.

    Parameters
    ----------
    draws : xr.Dataset
        Per-draw family parameters (see module docstring).
    num_params, tokens : float or sequence of float
        Parameters N and training tokens D (raw counts, not billions), broadcast together.

    Returns
    -------
    xr.DataArray
        Loss in the family's units (nats), dims ``(chain, draw, point)``.
    """
    _check_draws(draws)
    n = _positive_array("num_params", num_params)
    d = _positive_array("tokens", tokens)
    try:
        n, d = np.broadcast_arrays(n, d)
    except ValueError:
        raise DataError(f"num_params ({n.size} values) and tokens ({d.size} values) do not broadcast") from None
    p = _param_arrays(draws)
    values = np.exp(_log_loss(p, np.log(n)[None, :], np.log(d)[None, :]))
    return _to_dataarray(values, draws, "point", np.arange(n.size), name="loss").assign_coords(
        num_params=("point", n), tokens=("point", d)
    )


def _optimum_closed_form(p, log_flops):
    """Per-draw optimal ``x_n`` for ``C = 6ND``; ``log_flops`` broadcasts against (n_draws, 1)."""
    s = np.asarray(log_flops)[None, ...] - _log_flops_ref(p)
    col = {k: p[k][:, None] for k in ("log_a", "log_b", "alpha", "beta")}
    return (np.log(col["alpha"]) + col["log_a"] - np.log(col["beta"]) - col["log_b"] + col["beta"] * s) / (
        col["alpha"] + col["beta"]
    )


def _tokens_for(flops_fn, num_params, flops):
    """Tokens D with ``flops_fn(N, D) == C`` by bisection on log D; NaN where not reachable."""
    num_params, flops = np.broadcast_arrays(np.asarray(num_params, float), np.asarray(flops, float))
    lo = np.full(num_params.shape, np.log(1e-6))
    hi = np.full(num_params.shape, np.log(1e30))
    f_lo = np.asarray(flops_fn(num_params, np.exp(lo)), float)
    f_hi = np.asarray(flops_fn(num_params, np.exp(hi)), float)
    if f_lo.shape != num_params.shape:
        raise DataError(f"flops_fn must return an array shaped like its inputs, got {f_lo.shape} for {num_params.shape}")
    feasible = (f_lo <= flops) & (f_hi >= flops)
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        above = np.asarray(flops_fn(num_params, np.exp(mid)), float) >= flops
        hi = np.where(above, mid, hi)
        lo = np.where(above, lo, mid)
    return np.where(feasible, np.exp(0.5 * (lo + hi)), np.nan)


def _log_n_bracket(flops, num_params_bounds):
    if num_params_bounds is not None:
        lo, hi = _positive_array("num_params_bounds", num_params_bounds)
        if not lo < hi:
            raise DataError(f"num_params_bounds must be (low, high) with low < high, got {num_params_bounds!r}")
        return np.log(lo), np.log(hi)
    r_lo, r_hi = TOKENS_PER_PARAM_RANGE
    return 0.5 * np.log(flops / 6.0 / r_hi), 0.5 * np.log(flops / 6.0 / r_lo)


def _optimum_numerical(p, flops, flops_fn, num_params_bounds=None, grid_size=241, iterations=40):
    """Per-draw optimal log N for one budget under a general FLOPs function (grid + golden section)."""
    lo, hi = _log_n_bracket(flops, num_params_bounds)
    grid = np.linspace(lo, hi, grid_size)
    d_grid = _tokens_for(flops_fn, np.exp(grid), flops)
    if np.isnan(d_grid).all():
        raise DataError(f"flops_fn cannot reach a budget of {flops:.3g} FLOPs for any N in [{np.exp(lo):.3g}, {np.exp(hi):.3g}]")
    ll = _log_loss(p, grid[None, :], np.log(d_grid)[None, :])
    ll = np.where(np.isnan(ll), np.inf, ll)
    k = np.argmin(ll, axis=1)
    at_bound = (k == 0) | (k == grid_size - 1)
    if at_bound.any():
        warnings.warn(
            f"compute-optimal N hits the search bound for {at_bound.mean():.1%} of draws at {flops:.3g} FLOPs; "
            "pass num_params_bounds to widen it",
            DecisionWarning,
            stacklevel=3,
        )
    a = grid[np.clip(k - 1, 0, grid_size - 1)]
    b = grid[np.clip(k + 1, 0, grid_size - 1)]

    def objective(log_n):
        d = _tokens_for(flops_fn, np.exp(log_n), flops)
        out = _log_loss(p, log_n, np.log(d))
        return np.where(np.isnan(out), np.inf, out)

    golden = (np.sqrt(5.0) - 1.0) / 2.0
    c = b - golden * (b - a)
    d = a + golden * (b - a)
    fc, fd = objective(c), objective(d)
    for _ in range(iterations):
        left = fc < fd
        b = np.where(left, d, b)
        a = np.where(left, a, c)
        new_c = b - golden * (b - a)
        new_d = a + golden * (b - a)
        c_next = np.where(left, new_c, d)
        d_next = np.where(left, c, new_d)
        f_new = objective(np.where(left, new_c, new_d))
        fc, fd = np.where(left, f_new, fd), np.where(left, fc, f_new)
        c, d = c_next, d_next
    return 0.5 * (a + b)


def _optimal_log_n(p, flops, flops_fn=None, num_params_bounds=None):
    """(n_draws, n_budgets) array of per-draw compute-optimal log N, and matching log D."""
    log_c = np.log(flops)
    if flops_fn is None:
        with np.errstate(invalid="ignore", divide="ignore"):  # the draws fixed just below
            log_n = _optimum_closed_form(p, log_c) + p["log_ref_n"]
        # alpha or beta <= 0: loss does not fall with N (or D), so no interior optimum; such a
        # draw's optimum is the edge of the search range of N, found numerically
        edge = ~((p["alpha"] > 0) & (p["beta"] > 0))
        if edge.any():
            warnings.warn(
                f"{int(edge.sum())} of {edge.size} draws have alpha or beta <= 0 (loss does not fall with N or D): "
                "no compute-optimal split; they take the edge of the search range of N",
                DecisionWarning,
                stacklevel=3,
            )
            sub = {k: v[edge] if np.ndim(v) == 1 and len(v) == len(edge) else v for k, v in p.items()}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DecisionWarning)  # "hits the search bound": said above
                log_n[edge] = np.stack([_optimum_numerical(sub, c, six_nd, num_params_bounds) for c in flops], axis=1)
        log_d = log_c[None, :] - np.log(6.0) - log_n
        return log_n, log_d
    log_n = np.stack([_optimum_numerical(p, c, flops_fn, num_params_bounds) for c in flops], axis=1)
    log_d = np.log(_tokens_for(flops_fn, np.exp(log_n), flops[None, :]))
    return log_n, log_d


# --------------------------------------------------------------------------- summaries


def summarize(da, dims=SAMPLE_DIMS, quantiles=QUANTILES):
    """Median, quantiles and mean of a per-draw DataArray over ``dims``, as a DataFrame.

    Columns: ``median, q05, q25, q75, q95, mean`` (for the default quantiles), one row per
    remaining coordinate combination (the index keeps the remaining dims).
    """
    qs = da.quantile(list(quantiles), dim=list(dims))
    cols = {}
    for q in quantiles:
        key = "median" if q == 0.5 else f"q{round(q * 100):02d}"
        cols[key] = qs.sel(quantile=q, drop=True)
    cols["mean"] = da.mean(dim=list(dims))
    ds = xr.Dataset(cols)
    order = ["median"] + [c for c in cols if c not in ("median", "mean")] + ["mean"]
    if not ds.dims:
        return pd.DataFrame({k: [float(ds[k])] for k in order})
    return ds.to_dataframe()[order]


def _prob(mask_da):
    return mask_da.mean(dim=list(SAMPLE_DIMS))


# --------------------------------------------------------------------------- planned run


@dataclass(frozen=True)
class PlannedRun:
    """Loss distribution of planned runs.

    Attributes
    ----------
    loss : xr.DataArray
        Loss (nats) per draw, dims ``(chain, draw, point)`` with coords num_params, tokens.
    table : pd.DataFrame
        One row per point: num_params, tokens, flops (6ND), median, q05..q95, mean, and
        ``p_below_target`` (P(loss <= target)) when a target was given.
    """

    loss: xr.DataArray
    table: pd.DataFrame


def planned_run(draws, num_params, tokens, target_loss=None):
    """Loss of planned run(s) at ``(num_params, tokens)`` and P(loss <= target_loss).

    Parameters
    ----------
    draws : xr.Dataset
        Per-draw parameters of the family (use ``kind="new_run"`` draws for a run not yet
        trained, so the seed-to-seed spread is included).
    num_params, tokens : float or sequence of float
        Model size N (parameters) and training tokens D, broadcast together.
    target_loss : float, optional
        Target loss in the family's units (nats).
    """
    da = loss(draws, num_params, tokens)
    table = summarize(da).reset_index(drop=True)
    table.insert(0, "flops", six_nd(da["num_params"].values, da["tokens"].values))
    table.insert(0, "tokens", da["tokens"].values)
    table.insert(0, "num_params", da["num_params"].values)
    if target_loss is not None:
        target = _positive_array("target_loss", target_loss)[0]
        table["p_below_target"] = _prob(da <= target).values
    return PlannedRun(loss=da, table=table)


# --------------------------------------------------------------------------- compute-optimal


@dataclass(frozen=True)
class Allocation:
    """Compute-optimal allocation per draw for one or more FLOP budgets.

    Attributes
    ----------
    draws : xr.Dataset
        ``num_params`` (N*), ``tokens`` (D*), ``tokens_per_param`` (D*/N*) and ``loss`` (nats,
        at the optimum) per draw, dims ``(chain, draw, budget)``; coord ``flops`` on budget.
    table : pd.DataFrame
        One row per (flops, quantity) with median, q05..q95 and mean.
    """

    draws: xr.Dataset
    table: pd.DataFrame


def compute_optimal(draws, flops, flops_fn: FlopsFn | None = None, *, num_params_bounds=None):
    """Per-draw compute-optimal N*, D* for FLOP budget(s) C, and the loss they reach.

    Parameters
    ----------
    draws : xr.Dataset
        Per-draw family parameters.
    flops : float or sequence of float
        Training budget(s) C in FLOPs, > 0.
    flops_fn : callable, optional
        ``flops_fn(num_params, tokens) -> flops`` (vectorised, increasing in tokens). Default
        ``6 N D``, solved in closed form; any other function is solved numerically.
    num_params_bounds : (float, float), optional
        Search range of N for the numerical path (default: tokens per parameter within
        :data:`TOKENS_PER_PARAM_RANGE` under 6ND).
    """
    _check_draws(draws)
    c = _positive_array("flops", flops)
    p = _param_arrays(draws)
    log_n, log_d = _optimal_log_n(p, c, flops_fn, num_params_bounds)
    ll = _log_loss(p, log_n, log_d)
    budget = np.arange(c.size)

    def wrap(v, name):
        return _to_dataarray(v, draws, "budget", budget, name=name)

    ds = xr.Dataset(
        {
            "num_params": wrap(np.exp(log_n), "num_params"),
            "tokens": wrap(np.exp(log_d), "tokens"),
            "tokens_per_param": wrap(np.exp(log_d - log_n), "tokens_per_param"),
            "loss": wrap(np.exp(ll), "loss"),
        }
    ).assign_coords(flops=("budget", c))
    return Allocation(draws=ds, table=_allocation_table(ds))


def _allocation_table(ds):
    rows = []
    for q in ("num_params", "tokens", "tokens_per_param", "loss"):
        t = summarize(ds[q]).reset_index()
        t.insert(1, "quantity", q)
        rows.append(t)
    table = pd.concat(rows, ignore_index=True)
    table.insert(1, "flops", ds["flops"].values[table["budget"].values])
    return table.drop(columns="budget").sort_values(["flops", "quantity"], kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------- isoFLOP + robust choices


@dataclass(frozen=True)
class IsoFlop:
    """Loss along the isoFLOP curve of one budget, and the choices of N it supports.

    Attributes
    ----------
    flops : float
        The budget C (FLOPs).
    loss : xr.DataArray
        Loss (nats) per draw along the curve, dims ``(chain, draw, num_params)``; coord
        ``tokens`` on num_params.
    table : pd.DataFrame
        One row per N on the curve: num_params, tokens, median, q05..q95, mean.
    choices : pd.DataFrame
        One row per rule (``expected_loss``, ``quantile_<q>``, ``plug_in``,
        ``median_of_optima``): num_params, tokens, tokens_per_param, and the loss distribution
        at that N over all draws (median, q05..q95, mean).
    optimum : Allocation
        Per-draw compute-optimal allocation at this budget.
    """

    flops: float
    loss: xr.DataArray
    table: pd.DataFrame
    choices: pd.DataFrame
    optimum: Allocation


def isoflop(draws, flops, num_params=None, flops_fn: FlopsFn | None = None, *, quantile=0.9, num_params_bounds=None, grid_size=81):
    """isoFLOP curve (loss vs N at fixed C) with bands, and robust vs plug-in choices of N.

    The robust choices minimise, over N on the isoFLOP line, the posterior expected loss and
    the posterior ``quantile`` of the loss (a cautious planner's choice); the plug-in choice is
    the optimum of the posterior-median parameters; ``median_of_optima`` is the median of the
    per-draw optima. Under uncertainty these differ.

    Parameters
    ----------
    draws : xr.Dataset
        Per-draw family parameters.
    flops : float
        Budget C (FLOPs), > 0.
    num_params : sequence of float, optional
        Model sizes N on the curve. Default: ``grid_size`` log-spaced values spanning the
        per-draw optima widened by 10x each side.
    flops_fn : callable, optional
        FLOPs function (default 6ND).
    quantile : float
        Upper quantile minimised by the cautious choice (0 < q < 1).
    """
    _check_draws(draws)
    c = _positive_array("flops", flops)
    if c.size != 1:
        raise DataError(f"isoflop takes one budget, got {c.size}")
    c = float(c[0])
    q = _probability("quantile", quantile)
    fn = flops_fn if flops_fn is not None else six_nd
    p = _param_arrays(draws)
    optimum = compute_optimal(draws, c, flops_fn, num_params_bounds=num_params_bounds)
    n_star = optimum.draws["num_params"].values.reshape(-1)
    if num_params is None:
        # draws with alpha or beta <= 0 have no interior optimum (NaN): span the others
        if np.isnan(n_star).all():
            raise DataError(f"no posterior draw has a compute-optimal N at {c:.3g} FLOPs (alpha or beta <= 0 in every draw)")
        lo, hi = np.nanquantile(n_star, [0.01, 0.99])
        grid = np.geomspace(lo / 10.0, hi * 10.0, grid_size)
    else:
        grid = np.sort(_positive_array("num_params", num_params))
    d_grid = _tokens_for(fn, grid, c)
    keep = np.isfinite(d_grid)
    if not keep.any():
        raise DataError(f"no N on the isoFLOP grid reaches {c:.3g} FLOPs")
    grid, d_grid = grid[keep], d_grid[keep]
    curve = loss(draws, grid, d_grid)
    curve = curve.swap_dims(point="num_params").drop_vars("point")
    table = summarize(curve).reset_index()
    table.insert(1, "tokens", d_grid)

    lo_x, hi_x = np.log(grid[0]), np.log(grid[-1])

    def losses_at(log_n):
        d = _tokens_for(fn, np.exp(np.atleast_1d(log_n)), c)
        return np.exp(_log_loss(p, log_n, np.log(d)))

    def argmin(stat):
        vals = stat(curve.values.reshape(-1, grid.size))
        k = int(np.argmin(vals))
        a, b = np.log(grid[max(k - 1, 0)]), np.log(grid[min(k + 1, grid.size - 1)])
        if a == b:
            return a
        res = optimize.minimize_scalar(lambda x: float(stat(losses_at(x)[:, None])[0]), bounds=(a, b), method="bounded",
                                       options={"xatol": 1e-6})
        return float(np.clip(res.x, lo_x, hi_x))

    plug = {k: np.array([np.median(v)]) if np.ndim(v) else v for k, v in p.items()}
    plug_log_n, _ = _optimal_log_n(plug, np.array([c]), flops_fn, num_params_bounds)
    chosen = {
        "expected_loss": argmin(lambda m: m.mean(axis=0)),
        f"quantile_{q:g}": argmin(lambda m: np.quantile(m, q, axis=0)),
        "plug_in": float(plug_log_n[0, 0]),
        "median_of_optima": float(np.log(np.nanmedian(n_star))),
    }
    rows = []
    for rule, log_n in chosen.items():
        n = float(np.exp(log_n))
        d = float(_tokens_for(fn, np.array([n]), c)[0])
        at = summarize(loss(draws, n, d)).reset_index(drop=True).iloc[0].to_dict()
        rows.append({"rule": rule, "num_params": n, "tokens": d, "tokens_per_param": d / n, **at})
    choices = pd.DataFrame(rows)
    return IsoFlop(flops=c, loss=curve, table=table, choices=choices, optimum=optimum)


# --------------------------------------------------------------------------- budget for a target


@dataclass(frozen=True)
class BudgetForTarget:
    """Smallest budget reaching a target loss with a given probability.

    Attributes
    ----------
    flops : float
        Smallest C (FLOPs) with P(loss at the compute-optimal split <= target) >= prob.
    target_loss, prob : float
        The request.
    required_flops : xr.DataArray
        Per draw, the C at which that draw's optimal loss reaches the target (inf where the
        target is below that draw's irreducible loss); ``flops`` is its ``prob``-quantile.
        NaN with a custom ``flops_fn`` (solved by bisection on the probability instead).
    p_reachable : float
        Fraction of draws for which the target is reachable at any budget.
    allocation : Allocation
        Compute-optimal allocation at ``flops``.
    table : pd.DataFrame
        Summary: flops and the median/intervals of N*, D*, D*/N*, loss at ``flops``, and
        ``p_below_target`` at ``flops``.
    """

    flops: float
    target_loss: float
    prob: float
    required_flops: xr.DataArray
    p_reachable: float
    allocation: Allocation
    table: pd.DataFrame


def budget_for_target(draws, target_loss, prob=0.9, flops_fn: FlopsFn | None = None, *, num_params_bounds=None):
    """Smallest FLOP budget C with P(loss <= target_loss) >= prob at the compute-optimal split.

    The split is the per-draw optimum (each draw's N*, D* for C). Per draw the optimal loss
    decreases in C, so the draw's required budget ``C_s`` solves ``L*_s(C_s) = target`` by
    bisection on log C; P(L*(C) <= target) = P(C_s <= C), and the answer is the
    ``prob``-quantile of ``C_s``.

    Raises
    ------
    DataError
        target_loss <= 0 or prob outside (0, 1).
    FitError
        The target is below the irreducible loss in too many draws (impossible target).
    """
    _check_draws(draws)
    target = float(_positive_array("target_loss", target_loss)[0])
    pr = _probability("prob", prob)
    p = _param_arrays(draws)
    floor = np.exp(p["log_e"] + p["run_offset"])
    reachable = floor < target
    p_reach = float(reachable.mean())
    if p_reach < pr:
        raise FitError(
            f"target loss {target:g} is impossible at probability {pr:g}: it is below the irreducible loss in "
            f"{1 - p_reach:.1%} of draws (median irreducible loss {np.median(floor):.4g}); "
            f"at most P={p_reach:.3f} is reachable at any budget"
        )
    lo = np.full(floor.shape, _LOG_FLOPS_SEARCH[0])
    hi = np.full(floor.shape, _LOG_FLOPS_SEARCH[1])
    if flops_fn is None:
        def opt_log_loss(log_c):
            # a draw with alpha or beta <= 0 has no optimal split: NaN here, never below the
            # target, so it counts as not reaching it (compute_optimal warns about such draws)
            with np.errstate(invalid="ignore", divide="ignore"):
                x_n = (np.log(p["alpha"]) + p["log_a"] - np.log(p["beta"]) - p["log_b"]
                       + p["beta"] * (log_c - _log_flops_ref(p))) / (p["alpha"] + p["beta"])
                log_n = x_n + p["log_ref_n"]
                return _log_loss(p, log_n, log_c - np.log(6.0) - log_n)

        for _ in range(100):
            mid = 0.5 * (lo + hi)
            ok = opt_log_loss(mid) <= np.log(target)
            hi = np.where(ok, mid, hi)
            lo = np.where(ok, lo, mid)
        ok_hi = opt_log_loss(hi) <= np.log(target)
        required = np.where(reachable & ok_hi, np.exp(hi), np.inf)
        flops_needed = float(np.quantile(required, pr, method="inverted_cdf"))
    else:
        # general FLOPs function: bisection on log C for the probability itself
        def prob_at(log_c):
            alloc = compute_optimal(draws, np.exp(log_c), flops_fn, num_params_bounds=num_params_bounds)
            return alloc.draws["loss"].values.reshape(-1)

        a, b = np.log(1e10), np.log(1e40)
        if (prob_at(b) <= target).mean() < pr:
            raise FitError(f"target loss {target:g} is not reached with probability {pr:g} below {np.exp(b):.3g} FLOPs")
        for _ in range(32):  # relative precision ~1e-8 on C
            m = 0.5 * (a + b)
            if (prob_at(m) <= target).mean() >= pr:
                b = m
            else:
                a = m
        flops_needed = float(np.exp(b))
        required = np.full(floor.shape, np.nan)
    if not np.isfinite(flops_needed):
        raise FitError(f"target loss {target:g} is not reached with probability {pr:g} at any budget below 1e45 FLOPs")
    allocation = compute_optimal(draws, flops_needed, flops_fn, num_params_bounds=num_params_bounds)
    final_loss = allocation.draws["loss"].isel(budget=0)
    table = allocation.table.copy()
    table["p_below_target"] = np.where(table["quantity"] == "loss", float((final_loss <= target).mean()), np.nan)
    return BudgetForTarget(
        flops=flops_needed,
        target_loss=target,
        prob=pr,
        required_flops=_to_dataarray(required, draws, name="required_flops"),
        p_reachable=p_reach,
        allocation=allocation,
        table=table,
    )


# --------------------------------------------------------------------------- A vs B


@dataclass(frozen=True)
class Comparison:
    """A vs B at one or more scales.

    Attributes
    ----------
    draws : xr.Dataset
        ``loss_a``, ``loss_b`` (nats) and ``rel_diff`` = L_A / L_B - 1 per draw, dims
        ``(chain, draw, point)``; coords ``flops`` (and num_params/tokens at fixed (N, D), or
        num_params_a/num_params_b when compared at a budget, each at its own optimum).
    table : pd.DataFrame
        One row per point: scale coords, ``p_a_better`` = P(L_A < L_B), ``p_b_better``
        (= 1 - p_a_better; ties count half), loss medians and the rel_diff median/intervals.
    flip : pd.DataFrame
        One row (empty when a single point): ``p_flip`` (share of draws whose ranking changes
        within the scanned scales), ``flip_flops_median``/``q05``/``q95`` (FLOPs where it
        flips, over the draws that flip), and ``crossing_flops`` where P(A better) crosses 1/2
        (NaN if it does not).
    joint : bool
        True when draws were paired index-by-index (same fit: joint posterior draws).
    """

    draws: xr.Dataset
    table: pd.DataFrame
    flip: pd.DataFrame
    joint: bool


def _pair(draws_a, draws_b, seed):
    """Align two draw sets on (chain, draw); resample the larger when sizes differ."""
    if _shape(draws_a) == _shape(draws_b):
        return draws_a, draws_b, True
    rng = np.random.default_rng(seed)
    n = min(draws_a.sizes["chain"] * draws_a.sizes["draw"], draws_b.sizes["chain"] * draws_b.sizes["draw"])

    def take(ds):
        flat = ds.stack(sample=SAMPLE_DIMS).reset_index("sample", drop=True)
        idx = rng.choice(flat.sizes["sample"], size=n, replace=False)
        out = flat.isel(sample=np.sort(idx)).rename(sample="draw").expand_dims(chain=[0])
        return out.assign_coords(draw=np.arange(n)).transpose("chain", "draw", ...)

    return take(draws_a), take(draws_b), False


def compare(draws_a, draws_b, num_params=None, tokens=None, flops=None, flops_fn: FlopsFn | None = None, *, seed=0):
    """P(L_A < L_B), the relative difference, and where the ranking flips across scales.

    Give either ``num_params`` and ``tokens`` (same run for both: compared at equal (N, D)),
    or ``flops`` (each family at its own compute-optimal split of the same budget). Several
    values scan scales; they should be ordered by scale (increasing FLOPs) for the flip.

    When both draw sets come from one fit (``predict.family_draws`` of two families of the
    same fit), draws are paired by (chain, draw), which keeps the joint posterior (shared
    hierarchy and correlations). Draws from two fits (independent) are paired the same way
    when shapes match, else both are subsampled to a common size with ``seed``.

    With ``kind="new_run"`` draws, draw A and B with different seeds so that the two runs'
    offsets are independent (the same seed gives both runs the same seed luck).

    Parameters
    ----------
    draws_a, draws_b : xr.Dataset
        Per-draw family parameters of A and B. Their losses must be on the same scale
        (same metric and eval set); absolute loss is not comparable otherwise.
    num_params, tokens : float or sequence of float, optional
        Points (N, D) compared, broadcast together.
    flops : float or sequence of float, optional
        Budgets C (FLOPs) compared at each family's compute-optimal split.
    seed : int
        Seed for subsampling when the draw sets differ in size.
    """
    _check_draws(draws_a, "draws_a")
    _check_draws(draws_b, "draws_b")
    by_budget = flops is not None
    if by_budget == (num_params is not None or tokens is not None):
        raise DataError("give either flops, or num_params and tokens (not both, not neither)")
    if not by_budget and (num_params is None or tokens is None):
        raise DataError("comparing at a point needs both num_params and tokens")
    a, b, same_shape = _pair(draws_a, draws_b, seed)
    coords = {}
    if by_budget:
        alloc_a = compute_optimal(a, flops, flops_fn)
        alloc_b = compute_optimal(b, flops, flops_fn)
        loss_a = alloc_a.draws["loss"].rename(budget="point")
        loss_b = alloc_b.draws["loss"].rename(budget="point")
        scale = alloc_a.draws["flops"].values
        coords = {
            "flops": ("point", scale),
            "num_params_a": ("point", alloc_a.draws["num_params"].median(SAMPLE_DIMS).values),
            "num_params_b": ("point", alloc_b.draws["num_params"].median(SAMPLE_DIMS).values),
        }
    else:
        loss_a = loss(a, num_params, tokens)
        loss_b = loss(b, num_params, tokens)
        n, d = loss_a["num_params"].values, loss_a["tokens"].values
        scale = (flops_fn or six_nd)(n, d)
        coords = {"num_params": ("point", n), "tokens": ("point", d), "flops": ("point", np.asarray(scale, float))}
    loss_a = loss_a.drop_vars([v for v in loss_a.coords if v not in ("chain", "draw")]).assign_coords(point=np.arange(len(scale)))
    loss_b = loss_b.drop_vars([v for v in loss_b.coords if v not in ("chain", "draw")]).assign_coords(point=np.arange(len(scale)))
    loss_b = loss_b.assign_coords(chain=loss_a["chain"], draw=loss_a["draw"])
    ds = xr.Dataset({"loss_a": loss_a, "loss_b": loss_b, "rel_diff": loss_a / loss_b - 1.0}).assign_coords(coords)

    p_a = (_prob(ds["loss_a"] < ds["loss_b"]) + 0.5 * _prob(ds["loss_a"] == ds["loss_b"])).values
    table = pd.DataFrame({k: v[1] for k, v in coords.items()})
    table["p_a_better"] = p_a
    table["p_b_better"] = 1.0 - p_a
    table["loss_a_median"] = ds["loss_a"].median(SAMPLE_DIMS).values
    table["loss_b_median"] = ds["loss_b"].median(SAMPLE_DIMS).values
    rel = summarize(ds["rel_diff"]).reset_index(drop=True).add_prefix("rel_diff_")
    table = pd.concat([table, rel], axis=1)
    return Comparison(draws=ds, table=table, flip=_flip(ds, np.asarray(scale, float), p_a), joint=same_shape)


def _flip(ds, scale, p_a):
    """Where the ranking of A and B flips across the scanned scales."""
    if scale.size < 2:
        return pd.DataFrame(columns=["p_flip", "flip_flops_median", "flip_flops_q05", "flip_flops_q95", "crossing_flops"])
    log_s = np.log(scale)
    diff = np.log(ds["loss_a"].values / ds["loss_b"].values).reshape(-1, scale.size)  # < 0: A better
    sign = np.sign(diff)
    changed = sign != sign[:, :1]
    flips = changed.any(axis=1)
    k = np.argmax(changed, axis=1)
    rows = np.nonzero(flips)[0]
    k = k[rows]
    d0, d1 = diff[rows, k - 1], diff[rows, k]
    frac = np.where(d1 != d0, d0 / (d0 - d1), 0.5)
    flip_at = np.exp(log_s[k - 1] + frac * (log_s[k] - log_s[k - 1]))
    cross = np.nan
    side = np.sign(p_a - 0.5)
    idx = np.nonzero(side[1:] != side[:-1])[0]
    if idx.size:
        i = idx[0]
        t = (0.5 - p_a[i]) / (p_a[i + 1] - p_a[i]) if p_a[i + 1] != p_a[i] else 0.5
        cross = float(np.exp(log_s[i] + t * (log_s[i + 1] - log_s[i])))
    q = np.quantile(flip_at, [0.5, 0.05, 0.95]) if rows.size else [np.nan] * 3
    return pd.DataFrame(
        {
            "p_flip": [float(flips.mean())],
            "flip_flops_median": [q[0]],
            "flip_flops_q05": [q[1]],
            "flip_flops_q95": [q[2]],
            "crossing_flops": [cross],
        }
    )


__all__ = [
    "QUANTILES",
    "Allocation",
    "BudgetForTarget",
    "Comparison",
    "IsoFlop",
    "PlannedRun",
    "budget_for_target",
    "compare",
    "compute_optimal",
    "isoflop",
    "loss",
    "planned_run",
    "six_nd",
    "summarize",
]
