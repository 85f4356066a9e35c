"""Can I trust this fit? Convergence, posterior predictive checks and PSIS-LOO, as data.

Every function here returns numbers (dataclasses, DataFrames, xarray); nothing prints or
plots. :mod:`bayes_scaling.plots.diagnostics` draws them and ``bayes-scaling diagnose``
writes them as a Markdown report. All arviz calls of the report live in this module (and
in :mod:`bayes_scaling.convergence`, whose thresholds are reused here), so a move to
arviz 1.x touches these two files.

Thresholds (Vehtari et al. 2021, Betancourt 2017): r_hat <= 1.01; bulk and tail ESS >=
100 per chain (400 for 4 chains); no divergent transitions; E-BFMI >= 0.3. Draws at the
maximum tree depth are counted; they cost ESS, which is checked, so they are named as a
cause when r_hat or ESS fail rather than flagged on their own. PSIS-LOO Pareto k > 0.7
marks an observation whose leave-one-out estimate is unreliable.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr

from . import data as _data
from .convergence import FAMILY_VARS, MAX_R_HAT, MIN_ESS_PER_CHAIN, MIXED_RHAT, POPULATION_VARS, Convergence, check_convergence, format_r_hat
from .errors import FitError
from .laws import PARAM_NAMES

#: Variables of the convergence table, in display order (those absent are skipped).
TABLE_VARS = (*POPULATION_VARS, "corr", *FAMILY_VARS, "run_offset")
#: E-BFMI below this means momentum resampling explores the energy poorly.
MIN_BFMI = 0.3
#: Fraction of draws at the maximum tree depth above which a fit that failed r_hat or ESS is told why.
MAX_TREE_DEPTH_FRACTION = 0.01
#: PSIS Pareto k above which a LOO estimate is unreliable (arviz's default).
PARETO_K_BAD = 0.7
#: Central predictive intervals scored by :func:`ppc_coverage`.
PPC_LEVELS = (0.5, 0.9)

__all__ = [
    "ConvergenceReport",
    "LooReport",
    "checkpoint_predictive",
    "checkpoint_table",
    "compare",
    "convergence_report",
    "family_parameter_correlations",
    "family_parameters",
    "format_convergence_summary",
    "loo",
    "loo_pit",
    "ppc_bands",
    "ppc_coverage",
    "population_ellipse",
    "prior_predictive",
    "rising_runs",
    "with_posterior_predictive",
]


def _idata(fit_or_idata) -> az.InferenceData:
    idata = getattr(fit_or_idata, "idata", fit_or_idata)
    if not isinstance(idata, az.InferenceData):
        raise FitError(f"expected a Fit or arviz InferenceData, got {type(fit_or_idata).__name__}")
    if "posterior" not in idata.groups():
        raise FitError("this InferenceData has no posterior group")
    return idata


# --------------------------------------------------------------------------- convergence


@dataclass(frozen=True)
class ConvergenceReport:
    """Convergence of one fit: per-quantity table, sampler statistics and a verdict.

    Attributes
    ----------
    table : DataFrame
        One row per scalar quantity (``mu[alpha]``, ``theta[pythia, beta]`` ...), columns
        ``variable, mean, sd, mcse_mean, mcse_sd, ess_bulk, ess_tail, r_hat, ok``. Constant
        quantities (the unit diagonal of ``corr``) are left out.
    worst : Convergence
        Worst-case r_hat / ESS / divergences over the sampled variables, from
        :func:`bayes_scaling.convergence.check_convergence` (what ``fit`` warns about); the
        table and the verdict also cover ``corr`` and ``run_offset``.
    chains, draws : int
        Chains and kept draws per chain.
    divergences : int
        Divergent transitions after warmup.
    tree_depth_hits : int or None
        Draws that reached ``max_tree_depth`` (None when the fit did not record tree depth).
    tree_depth_draws : int or None
        Draws whose tree depth was recorded (under a population, every family's).
    max_tree_depth : int
        The sampler's maximum tree depth.
    bfmi : tuple of float
        E-BFMI per chain (under a population, each chain's lowest over the families); empty
        when the fit did not record the energy or its chains were carried on and thinned.
    failures, warnings : tuple of str
        Failed checks (do not trust the numbers) and softer warnings (efficiency, missing
        statistics, a single chain).
    """

    table: pd.DataFrame
    worst: Convergence
    chains: int
    draws: int
    divergences: int
    tree_depth_hits: int | None
    tree_depth_draws: int | None
    max_tree_depth: int
    bfmi: tuple[float, ...]
    failures: tuple[str, ...]
    warnings: tuple[str, ...]
    min_ess: float = field(default=0.0)

    @property
    def verdict(self) -> str:
        """``"pass"``, ``"warn"`` (usable, read the warnings) or ``"fail"`` (do not trust)."""
        if self.failures:
            return "fail"
        return "warn" if self.warnings else "pass"

    @property
    def ok(self) -> bool:
        """True unless a check failed."""
        return not self.failures

    def flagged(self) -> pd.DataFrame:
        """Rows of :attr:`table` that fail r_hat or ESS, worst r_hat first."""
        return self.table[~self.table["ok"]].sort_values(["r_hat", "ess_bulk"], ascending=[False, True])


def _summary_table(idata: az.InferenceData, var_names, min_ess: float) -> pd.DataFrame:
    post = idata.posterior[list(var_names)]
    if "corr" in post and {"param", "param_"} <= set(post["corr"].dims):
        # keep the upper triangle: the diagonal is constant and the matrix symmetric
        corr = post["corr"].stack(pair=("param", "param_"))
        params = list(post["param"].values)
        upper = [params.index(a) < params.index(b) for a, b in corr["pair"].values]
        corr = corr.isel(pair=np.flatnonzero(upper))
        labels = [f"{a}, {b}" for a, b in corr["pair"].values]
        corr = corr.drop_vars(["pair", "param", "param_"]).assign_coords(pair=labels)
        post = post.drop_vars("corr").assign(corr=corr)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        summary = az.summary(post, kind="all", round_to="none", hdi_prob=0.9)
    summary = summary.drop(columns=[c for c in summary.columns if c.startswith("hdi_")])
    summary.insert(0, "variable", [label.split("[", 1)[0] for label in summary.index])
    summary = summary[summary["sd"] > 1e-9]  # constant entries
    r_hat_ok = summary["r_hat"].isna() | (summary["r_hat"] <= MAX_R_HAT)
    summary["ok"] = r_hat_ok & (summary["ess_bulk"] >= min_ess) & (summary["ess_tail"] >= min_ess)
    summary.index.name = "quantity"
    return summary


def _max_tree_depth(idata: az.InferenceData) -> int:
    raw = idata.posterior.attrs.get("bayes_scaling_settings")
    if raw:
        try:
            return int(json.loads(raw).get("max_tree_depth", 10))
        except (ValueError, TypeError):
            pass
    return 10


def _bfmi(energy: xr.DataArray) -> tuple[tuple[float, ...], list[str]]:
    """E-BFMI per chain, and the chains below :data:`MIN_BFMI` by name. With a family axis (a
    fit under a population, each family sampled alone) a chain's value is its lowest over the
    families whose energy was recorded (not NaN, as for thinned draws), and a low chain is
    named with its family."""
    groups = {"": energy} if "family" not in energy.dims else {f"{f} ": energy.sel(family=f) for f in energy["family"].values}
    per_group = {name: az.bfmi(e.transpose("chain", "draw").values) for name, e in groups.items() if np.isfinite(e).all()}
    if not per_group:
        return (), []
    low = [f"{name}chain {i}: {b:.2f}" for name, values in per_group.items() for i, b in enumerate(values) if b < MIN_BFMI]
    return tuple(float(b) for b in np.min(list(per_group.values()), axis=0)), low


def convergence_report(fit, var_names=None) -> ConvergenceReport:
    """Convergence report of a fit: r_hat, bulk/tail ESS, MCSE, divergences, tree depth, E-BFMI.

    Parameters
    ----------
    fit : Fit or InferenceData
        A fit from :func:`bayes_scaling.inference.fit` (or any InferenceData with a
        posterior; sample statistics are used when present).
    var_names : sequence of str, optional
        Variables of the table; default :data:`TABLE_VARS` (population parameters, the
        family correlation, theta, noise scales and run offsets).

    Returns
    -------
    ConvergenceReport
        With a verdict: ``fail`` when r_hat > 1.01, bulk or tail ESS < 100 per chain, or
        any divergence; ``warn`` for a single chain, E-BFMI < 0.3 or statistics the fit did
        not record. Draws at the maximum tree depth are counted, and named as a likely cause
        when r_hat or ESS fail (more than 1% of draws).
    """
    idata = _idata(fit)
    post = idata.posterior
    chains, draws = int(post.sizes["chain"]), int(post.sizes["draw"])
    min_ess = MIN_ESS_PER_CHAIN * chains
    names = [v for v in (var_names or TABLE_VARS) if v in post.data_vars]
    if not names:  # a foreign InferenceData: check whatever it has
        names = list(post.data_vars)
    table = _summary_table(idata, names, min_ess)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # r_hat of stuck chains divides by zero
        worst = check_convergence(idata) if var_names is None and "theta" in post else check_convergence(idata, var_names=names)

    failures = []
    if not table.empty:
        r_hat = table["r_hat"].dropna()
        if chains > 1 and len(r_hat) and r_hat.max() > MAX_R_HAT:
            apart = (
                f"; above {MIXED_RHAT} they likely are, which a replica exchange can join (a population fit's "
                "`tempering=True`, `fit --tempering`)" if r_hat.max() > MIXED_RHAT else ""
            )
            failures.append(
                f"r_hat > {MAX_R_HAT} for {int((r_hat > MAX_R_HAT).sum())} quantities (max {format_r_hat(r_hat.max())} at {r_hat.idxmax()}); "
                "longer chains (more draws) settle an r_hat that is Monte Carlo noise, not chains in separate modes" + apart
            )
        for column, name in (("ess_bulk", "bulk"), ("ess_tail", "tail")):
            low = table[column] < min_ess
            if low.any():
                failures.append(
                    f"{name} ESS < {min_ess:.0f} for {int(low.sum())} quantities (min {table[column].min():.0f} at {table[column].idxmin()})"
                )
    notes = []
    if chains < 2:
        notes.append("a single chain: r_hat cannot detect chains stuck in different modes; run >= 2 chains")
    stats = idata.sample_stats if "sample_stats" in idata.groups() else xr.Dataset()
    divergences = int(stats["diverging"].sum()) if "diverging" in stats else 0
    if divergences:
        failures.append(f"{divergences} divergent transitions after warmup ({divergences / (chains * draws):.1%} of draws)")
    if "diverging" not in stats:
        notes.append("divergences were not recorded")
    bfmi, low = _bfmi(stats["energy"]) if "energy" in stats else ((), [])
    if low:
        notes.append(f"E-BFMI < {MIN_BFMI} ({', '.join(low)}): heavy tails or a poorly adapted mass matrix")
    mixed = table.empty or table["ok"].all()
    if not mixed:
        bad = table[~table["ok"]]
        by_var = ", ".join(f"{v} {n}" for v, n in bad["variable"].value_counts().items())
        failures.append(f"{len(bad)} of {len(table)} quantities fail r_hat or ESS (by variable: {by_var})")
    max_depth = _max_tree_depth(idata)
    hits = total = None
    if "tree_depth" in stats:
        # a fit under a population has a family axis: every family's draws count
        hits, total = int((stats["tree_depth"] >= max_depth).sum()), int(stats["tree_depth"].size)
        # capped trajectories cost ESS, which is checked above; they are named when it fell short
        if not mixed and hits > MAX_TREE_DEPTH_FRACTION * total:
            notes.append(
                f"{hits} of {total} draws ({hits / total:.1%}) hit the maximum tree depth {max_depth}: the chains move "
                "slowly along the posterior, a likely cause of the r_hat or ESS failures"
            )
    return ConvergenceReport(
        table=table,
        worst=worst,
        chains=chains,
        draws=draws,
        divergences=divergences,
        tree_depth_hits=hits,
        tree_depth_draws=total,
        max_tree_depth=max_depth,
        bfmi=bfmi,
        failures=tuple(failures),
        warnings=tuple(notes),
        min_ess=float(min_ess),
    )


# --------------------------------------------------------------- posterior predictive checks


def checkpoint_table(fit) -> pd.DataFrame:
    """The fitted checkpoints as a table: family, run, num_params, tokens, loss (nats).

    Indexed by the ``checkpoint`` coordinate, in the order of the fit's data.
    """
    idata = _idata(fit)
    const = idata.constant_data
    families = np.asarray(idata.posterior["family"].values).astype(str)
    runs = np.asarray(const["run"].values).astype(str) if "run" in const.coords else None
    fam_idx = np.asarray(const["family_idx"].values)
    table = pd.DataFrame(
        {
            "family": families[fam_idx],
            "run": runs[np.asarray(const["run_idx"].values)] if runs is not None else "",
            "num_params": np.asarray(const["num_params"].values, dtype=float),
            "tokens": np.asarray(const["tokens"].values, dtype=float),
            "loss": np.exp(np.asarray(idata.observed_data["log_loss"].values, dtype=float)),
        },
        index=pd.Index(np.asarray(const["checkpoint"].values), name="checkpoint"),
    )
    table["run_idx"] = np.asarray(const["run_idx"].values)
    return table


def rising_runs(fit) -> pd.DataFrame:
    """Runs of the fit whose loss rises over their last 30% of training, the fit's
    :class:`~bayes_scaling.errors.DataWarning` (:func:`bayes_scaling.data.rising_runs`):
    columns ``family``, ``run``, ``rise``, ``n_points``."""
    table = checkpoint_table(fit).rename(columns={"run": "model"})
    return _data.rising_runs(table).rename(columns={"model": "run"})


def _run_offset(idata: az.InferenceData, run_idx) -> xr.DataArray:
    """Posterior run offsets (chain, draw, point) for the given run indices; 0 without offsets."""
    post = idata.posterior
    if "run_offset" not in post:
        return xr.zeros_like(post["chain"] * post["draw"], dtype=float).expand_dims(point=len(run_idx), axis=-1)
    off = post["run_offset"].isel(run=xr.DataArray(np.asarray(run_idx), dims="point"))
    return off.drop_vars([c for c in off.coords if c not in ("chain", "draw")])


def checkpoint_predictive(fit, *, seed: int = 0) -> xr.DataArray:
    """Posterior predictive replicates of every fitted checkpoint, on log loss.

    For each checkpoint: the family's law at its (N, D), plus the posterior offset of its
    run, plus observation noise of the spec's likelihood (drawn by
    :func:`bayes_scaling.predict.predict_loss` with ``observation_noise=True``).

    Parameters
    ----------
    fit : Fit
    seed : int
        Seed of the observation noise.

    Returns
    -------
    DataArray
        ``log_loss`` replicates (natural log of nats/token), dims ``(chain, draw, checkpoint)``
        aligned with ``fit.idata.observed_data.log_loss``.
    """
    from .predict import predict_loss

    idata = _idata(fit)
    table = checkpoint_table(fit)
    pieces = []
    for i, family in enumerate(fit.families):
        rows = table[table["family"] == family]
        if rows.empty:
            continue
        pred = predict_loss(
            fit, family, rows["num_params"].to_numpy(), rows["tokens"].to_numpy(),
            kind="family", observation_noise=True, seed=seed + i,
        )
        log_pred = np.log(pred) + _run_offset(idata, rows["run_idx"].to_numpy()).values
        pieces.append(
            xr.DataArray(
                np.asarray(log_pred),
                dims=("chain", "draw", "checkpoint"),
                coords={"chain": pred["chain"].values, "draw": pred["draw"].values, "checkpoint": rows.index.to_numpy()},
            )
        )
    out = xr.concat(pieces, dim="checkpoint").sortby("checkpoint")
    return out.rename("log_loss")


def prior_predictive(runs, spec="chinchilla_hierarchical", *, filters=None, draws: int = 200, seed: int = 0) -> pd.DataFrame:
    """Prior predictive check: does the spec's prior put the observed losses within reach?

    Samples the model with no data (NumPyro ``Predictive``, no NUTS) at the fitted
    checkpoints and scores each family's observations against the prior predictive.

    Parameters
    ----------
    runs : path, DataFrame or RunsData
        The runs table, as for :func:`bayes_scaling.inference.fit`.
    spec : Spec, name or path
    filters : Filters, optional
        Default: the spec's ``[data]`` defaults.
    draws : int
        Prior draws.
    seed : int

    Returns
    -------
    DataFrame
        One row per checkpoint: ``family, run, num_params, tokens, loss`` and the prior
        predictive loss quantiles ``q05, q25, median, q75, q95`` (nats). ``attrs["coverage_90"]``
        holds, per family, the fraction of observations inside the central 90% (a prior that
        is too tight gives less than about 0.9; one that is far too wide gives 1.0 with
        very wide bands).
    """
    import jax
    from numpyro.infer import Predictive

    from .data import Filters, RunsData, prepare
    from .model import ModelInputs, build_model
    from .spec import load_spec

    spec = load_spec(spec)
    if int(draws) != draws or draws < 1:
        raise FitError(f"draws must be a positive integer, got {draws!r}")
    data = runs if isinstance(runs, RunsData) else prepare(
        runs, filters if filters is not None else Filters(**spec.data), spec.reference_params, spec.reference_tokens
    )
    inputs = ModelInputs.from_data(data).as_kwargs()
    inputs["log_loss"] = None
    sampled = Predictive(build_model(spec), num_samples=int(draws), return_sites=["log_loss"])(jax.random.PRNGKey(seed), **inputs)
    log_loss = np.asarray(sampled["log_loss"], dtype=float)  # draw, checkpoint
    quantiles = {"q05": 0.05, "q25": 0.25, "median": 0.5, "q75": 0.75, "q95": 0.95}
    table = data.table
    out = pd.DataFrame(
        {
            "family": table["family"].to_numpy(),
            "run": np.asarray(data.runs)[data.run_idx],
            "num_params": table["num_params"].to_numpy(dtype=float),
            "tokens": table["tokens"].to_numpy(dtype=float),
            "loss": np.exp(np.asarray(data.log_loss, dtype=float)),
        }
    )
    for name, q in quantiles.items():
        out[name] = np.exp(np.quantile(log_loss, q, axis=0))
    inside = (out["loss"] >= out["q05"]) & (out["loss"] <= out["q95"])
    out.attrs["coverage_90"] = inside.groupby(out["family"], sort=False).mean().to_dict()
    return out


def ppc_bands(fit, family: str, *, n_grid: int = 30, seed: int = 0) -> pd.DataFrame:
    """Posterior predictive bands of every run of a family along its observed token range.

    Each run's band is the family law at the run's N over a log-spaced grid of tokens
    (from its first to its last fitted checkpoint), shifted by the run's posterior
    offset, with observation noise: where that run's checkpoints should fall.

    Returns
    -------
    DataFrame
        Columns ``run, num_params, tokens, mean, median, q05, q25, q75, q95`` (loss, nats).
    """
    from .predict import predict_loss, summarize

    idata = _idata(fit)
    fit.require_family(family)
    table = checkpoint_table(fit)
    rows = table[table["family"] == family]
    runs = rows.groupby("run", sort=False).agg(num_params=("num_params", "first"), lo=("tokens", "min"), hi=("tokens", "max"), run_idx=("run_idx", "first"))
    grid = np.concatenate([np.geomspace(r.lo, r.hi if r.hi > r.lo else r.lo * 1.01, n_grid) for r in runs.itertuples()])
    num_params = np.repeat(runs["num_params"].to_numpy(), n_grid)
    pred = predict_loss(fit, family, num_params, grid, kind="family", observation_noise=True, seed=seed)
    offset = _run_offset(idata, np.repeat(runs["run_idx"].to_numpy(), n_grid))
    pred = pred * np.exp(offset.values)
    out = summarize(pred).drop(columns=["family", "kind"], errors="ignore")
    out.insert(0, "run", np.repeat(runs.index.to_numpy(), n_grid))
    return out


def ppc_coverage(fit, predictive: xr.DataArray | None = None, *, seed: int = 0) -> pd.DataFrame:
    """Per-family posterior predictive check of the fitted checkpoints.

    Parameters
    ----------
    fit : Fit
    predictive : DataArray, optional
        Output of :func:`checkpoint_predictive` (computed when omitted).
    seed : int

    Returns
    -------
    DataFrame
        Indexed by family, every family of the fit: ``checkpoints``, ``runs``, ``coverage_50``
        and ``coverage_90`` (fraction of observed checkpoints inside the central 50% / 90%
        predictive interval; a calibrated fit gives about 0.5 and 0.9),
        ``median_abs_rel_error`` of the predictive median (fraction of loss), and
        ``bayes_p`` (fraction of replicates below the observation, averaged; 0.5 is ideal).
    """
    if predictive is None:
        predictive = checkpoint_predictive(fit, seed=seed)
    table = checkpoint_table(fit)
    obs = np.log(table["loss"].to_numpy())
    draws = predictive.stack(sample=("chain", "draw")).transpose("checkpoint", "sample").values
    rows = {}
    inside = {}
    for level in PPC_LEVELS:
        lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=1)
        inside[level] = (obs >= lo) & (obs <= hi)
    median = np.median(draws, axis=1)
    below = (draws < obs[:, None]).mean(axis=1)
    for family in fit.families:
        mask = (table["family"] == family).to_numpy()
        rows[family] = {
            "checkpoints": int(mask.sum()),
            "runs": int(table.loc[mask, "run"].nunique()),
            **{f"coverage_{int(level * 100)}": float(inside[level][mask].mean()) if mask.any() else np.nan for level in PPC_LEVELS},
            "median_abs_rel_error": float(np.median(np.abs(np.expm1(median[mask] - obs[mask])))) if mask.any() else np.nan,
            "bayes_p": float(below[mask].mean()) if mask.any() else np.nan,
        }
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "family"
    return out


def with_posterior_predictive(fit, predictive: xr.DataArray | None = None, *, seed: int = 0) -> az.InferenceData:
    """A new InferenceData: the fit's groups plus ``posterior_predictive.log_loss``.

    The fit itself is not modified. Needed by arviz's LOO-PIT and PPC plots.
    """
    idata = _idata(fit)
    if predictive is None:
        predictive = checkpoint_predictive(fit, seed=seed)
    out = idata.copy()
    ds = xr.Dataset({"log_loss": predictive.astype(float)})
    if "posterior_predictive" in out.groups():
        out.posterior_predictive = ds
    else:
        out.add_groups({"posterior_predictive": ds})
    return out


def loo_pit(fit, predictive: xr.DataArray | None = None, *, seed: int = 0) -> xr.DataArray:
    """LOO-PIT value of every checkpoint (uniform on [0, 1] for a calibrated model)."""
    idata = with_posterior_predictive(fit, predictive, seed=seed)
    _require_log_likelihood(idata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = az.loo_pit(idata, y="log_loss")
    return xr.DataArray(np.asarray(values), dims="checkpoint", coords={"checkpoint": idata.observed_data["checkpoint"].values}, name="loo_pit")


# ----------------------------------------------------------------------------- parameters


def family_parameters(fit) -> dict[str, xr.DataArray]:
    """Draws of each family's law parameters, ``{name: DataArray (chain, draw, family)}``
    for ``log_e, log_a, log_b, alpha, beta`` (centred units, see ``bayes_scaling.laws``).

    Read from ``theta[family, param]``, which every fit holds; a fit under a population has
    no per-parameter variables (the joint model's deterministic copies of theta)."""
    theta = _idata(fit).posterior["theta"]
    return {name: theta.sel(param=name, drop=True) for name in PARAM_NAMES}


def family_parameter_correlations(fit, pairs=(("log_a", "alpha"), ("log_b", "beta"))) -> pd.DataFrame:
    """How family parameters move together across families, per pair.

    For every posterior draw, the Pearson correlation across families of the two
    parameters; plus the population correlation (the model's ``corr``) when the spec
    pools. The raw-unit version (log A and log B of ``A / N^alpha`` at N = 1) is given too,
    since the paper's finding (alpha near-linear in log A, beta in log B) was stated there.

    Returns
    -------
    DataFrame
        One row per pair: ``across_families`` (posterior median), ``across_families_q05``,
        ``across_families_q95``, ``population`` and its 90% interval (NaN without pooling),
        ``raw_units`` (median across-family correlation with raw log A / log B).
    """
    from .laws import to_raw

    idata = _idata(fit)
    post = idata.posterior
    law = family_parameters(fit)
    spec = getattr(fit, "spec", None)
    ref_n = getattr(spec, "reference_params", None)
    ref_d = getattr(spec, "reference_tokens", None)
    raw = {}
    if ref_n is not None:
        raw["log_a"], raw["log_b"] = to_raw(law["log_a"], law["log_b"], law["alpha"], law["beta"], ref_n, ref_d)
    rows = {}
    n_families = post.sizes.get("family", 0)
    for x, y in pairs:
        row = {}
        if n_families >= 3:
            corr = xr.corr(law[x], law[y], dim="family")
            row["across_families"], row["across_families_q05"], row["across_families_q95"] = (
                float(corr.median()), float(corr.quantile(0.05)), float(corr.quantile(0.95)))
            if x in raw or y in raw:
                row["raw_units"] = float(xr.corr(raw.get(x, law[x]), raw.get(y, law[y]), dim="family").median())
        if "corr" in post:
            pc = post["corr"].sel(param=x, param_=y)
            row["population"], row["population_q05"], row["population_q95"] = (
                float(pc.median()), float(pc.quantile(0.05)), float(pc.quantile(0.95)))
        rows[f"{y} ~ {x}"] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def population_ellipse(fit, x: str, y: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Posterior-mean population mean and 2x2 covariance of parameters ``(x, y)``.

    Returns None for specs without a population distribution (no pooling).
    """
    post = _idata(fit).posterior
    if "mu" not in post or "tau" not in post:
        return None
    mean = np.array([float(post["mu"].sel(param=p).mean()) for p in (x, y)])
    tau = np.stack([post["tau"].sel(param=p).values for p in (x, y)], axis=-1)
    rho = post["corr"].sel(param=x, param_=y).values if "corr" in post else np.zeros(tau.shape[:-1])
    cov = np.empty(tau.shape[:-1] + (2, 2))
    cov[..., 0, 0] = tau[..., 0] ** 2
    cov[..., 1, 1] = tau[..., 1] ** 2
    cov[..., 0, 1] = cov[..., 1, 0] = rho * tau[..., 0] * tau[..., 1]
    return mean, cov.reshape(-1, 2, 2).mean(axis=0)


# -------------------------------------------------------------------------------- PSIS-LOO


def _require_log_likelihood(idata: az.InferenceData) -> None:
    if "log_likelihood" not in idata.groups() or "log_loss" not in idata.log_likelihood:
        raise FitError("this fit has no pointwise log likelihood; refit with log_likelihood=True for LOO")


@dataclass(frozen=True)
class LooReport:
    """PSIS-LOO of one fit.

    Attributes
    ----------
    elpd, se : float
        Expected log pointwise predictive density (log scale, higher is better) and its
        standard error; on log loss, so only comparable between fits of the same data.
    p_loo : float
        Effective number of parameters.
    pareto_k : DataFrame
        One row per checkpoint: family, run, tokens, ``pareto_k``.
    by_family : DataFrame
        Per family: checkpoints, ``elpd`` (sum), ``max_k`` and ``n_bad_k`` (k > 0.7).
    warnings : tuple of str
        Unreliable estimates, naming the families concerned.
    elpd_data : arviz ELPDData
        arviz's object, for :func:`arviz.compare` and plots.
    """

    elpd: float
    se: float
    p_loo: float
    pareto_k: pd.DataFrame
    by_family: pd.DataFrame
    warnings: tuple[str, ...]
    elpd_data: object

    @property
    def n_bad_k(self) -> int:
        return int((self.pareto_k["pareto_k"] > PARETO_K_BAD).sum())


def loo(fit) -> LooReport:
    """PSIS-LOO cross-validation with Pareto-k diagnostics per family.

    Leaves out one checkpoint at a time. Checkpoints of one run are correlated, so read
    elpd as a relative score between specs on the same data, not as out-of-run accuracy
    (that is what the back-test measures).

    Raises
    ------
    FitError
        When the fit has no pointwise log likelihood.
    """
    idata = _idata(fit)
    _require_log_likelihood(idata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pareto-k warnings are returned as data below
        result = az.loo(idata, pointwise=True, var_name="log_loss")
    table = checkpoint_table(fit)
    k = np.asarray(result.pareto_k.values, dtype=float)
    pointwise = np.asarray(result.loo_i.values, dtype=float)
    pk = table[["family", "run", "num_params", "tokens"]].assign(pareto_k=k, elpd_i=pointwise)
    by_family = pk.groupby("family", sort=False).agg(
        checkpoints=("pareto_k", "size"),
        elpd=("elpd_i", "sum"),
        max_k=("pareto_k", "max"),
        n_bad_k=("pareto_k", lambda s: int((s > PARETO_K_BAD).sum())),
    )
    notes = []
    n_bad = int((k > PARETO_K_BAD).sum())
    if n_bad:
        worst = by_family[by_family["n_bad_k"] > 0].sort_values("n_bad_k", ascending=False)
        names = ", ".join(f"{f} ({int(n)})" for f, n in worst["n_bad_k"].head(8).items())
        notes.append(
            f"{n_bad} of {len(k)} checkpoints have Pareto k > {PARETO_K_BAD}; LOO is unreliable there "
            f"(influential points, often a family with few runs): {names}"
        )
    elif (k > 0.5).any():
        notes.append(f"{int((k > 0.5).sum())} checkpoints have 0.5 < Pareto k <= {PARETO_K_BAD} (usable, slower convergence)")
    return LooReport(
        elpd=float(result.elpd_loo),
        se=float(result.se),
        p_loo=float(result.p_loo),
        pareto_k=pk,
        by_family=by_family,
        warnings=tuple(notes),
        elpd_data=result,
    )


def compare(fits: Mapping[str, object]) -> pd.DataFrame:
    """Rank several fits of the same data by PSIS-LOO (``arviz.compare``).

    Parameters
    ----------
    fits : mapping of name -> Fit or InferenceData
        E.g. ``{"hierarchical": fit_h, "independent": fit_i}``. All must be fitted to
        the same checkpoints (same filters, same data).

    Returns
    -------
    DataFrame
        arviz's comparison table, best first: ``rank, elpd_loo, p_loo, elpd_diff, weight,
        se, dse, warning``; ``warning`` is True where Pareto k was high.

    Raises
    ------
    FitError
        When fewer than two fits are given, one lacks the log likelihood, or the fits
        were made on different data (the message names the pair).
    """
    if len(fits) < 2:
        raise FitError(f"compare needs at least two fits, got {len(fits)}")
    idatas = {name: _idata(f) for name, f in fits.items()}
    ref_name, ref = next(iter(idatas.items()))
    ref_obs = np.asarray(ref.observed_data["log_loss"].values)
    for name, idata in idatas.items():
        _require_log_likelihood(idata)
        obs = np.asarray(idata.observed_data["log_loss"].values)
        if obs.shape != ref_obs.shape or not np.allclose(obs, ref_obs):
            raise FitError(
                f"fits {ref_name!r} and {name!r} were made on different data "
                f"({ref_obs.size} vs {obs.size} checkpoints); LOO compares fits of the same data only"
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return az.compare(idatas, ic="loo", var_name="log_loss")


# ------------------------------------------------------------------------------- text


_VERDICT_LINES = {
    "pass": "PASS: converged; the numbers can be trusted as far as the sampler goes",
    "warn": "PASS WITH WARNINGS: converged, but read the warnings below",
    "fail": "FAIL: not converged; do not trust these numbers (more warmup/draws, or check the model)",
}


def format_convergence_summary(report: ConvergenceReport, max_rows: int = 5) -> str:
    """One screen of text summarising a :class:`ConvergenceReport`, verdict first.

    Parameters
    ----------
    report : ConvergenceReport
    max_rows : int
        Worst quantities listed when some fail r_hat / ESS.

    Returns
    -------
    str
        Lines without a trailing newline; ``bayes-scaling fit`` and ``diagnose`` print it.
    """
    t = report.table
    n = report.chains * report.draws
    lines = [f"convergence: {_VERDICT_LINES[report.verdict]}", f"  {report.chains} chains x {report.draws} draws, {len(t)} quantities checked"]

    def extreme(column, worst_is_max):
        col = t[column].dropna()
        if col.empty:
            return "n/a", ""
        label = col.idxmax() if worst_is_max else col.idxmin()
        return col[label], label

    value, where = extreme("r_hat", True)
    r_hat_text = f"{format_r_hat(value)} at {where}" if where else "n/a (one chain)"
    lines.append(f"  max r_hat      {r_hat_text:<44} (needs <= {MAX_R_HAT})")
    for column, name in (("ess_bulk", "bulk ESS"), ("ess_tail", "tail ESS")):
        value, where = extreme(column, False)
        text = f"{value:.0f} at {where}" if where else "n/a"
        lines.append(f"  min {name:<10} {text:<44} (needs >= {report.min_ess:.0f})")
    if not t.empty:
        ratio = (t["mcse_mean"] / t["sd"]).replace([np.inf, -np.inf], np.nan).dropna()
        if not ratio.empty:
            lines.append(f"  max MCSE/sd    {ratio.max():.3f} at {ratio.idxmax()}")
    lines.append(f"  divergences    {report.divergences} ({report.divergences / max(n, 1):.1%} of draws)")
    if report.tree_depth_hits is not None:
        hits, total = report.tree_depth_hits, report.tree_depth_draws
        lines.append(f"  max tree depth {hits} of {total} draws reached depth {report.max_tree_depth} ({hits / max(total, 1):.1%})")
    bfmi = ", ".join(f"{b:.2f}" for b in report.bfmi) if report.bfmi else "not recorded (sample_stats has no energy; thinned chains keep none)"
    lines.append(f"  E-BFMI         {bfmi}")
    for title, items in (("failed", report.failures), ("warnings", report.warnings)):
        if items:
            lines.append(f"  {title}:")
            lines.extend(f"    - {item}" for item in items)
    flagged = report.flagged()
    if len(flagged):
        lines.append(f"  worst quantities ({len(flagged)} flagged):")
        for label, row in flagged.head(max_rows).iterrows():
            lines.append(f"    {label:<32} r_hat {format_r_hat(row['r_hat'])}  bulk ESS {row['ess_bulk']:6.0f}  tail ESS {row['ess_tail']:6.0f}")
    return "\n".join(lines)
