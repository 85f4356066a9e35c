"""Each family of a runs table fitted under a population prior, as one :class:`~bayes_scaling.inference.Fit`.

This is the path a user with a few runs of their own takes (``bs.fit(runs,
population="public")``) and the path the back-test scores (``bayes_hierarchical``): every
family is fitted alone with the single-family model of :mod:`bayes_scaling.cellfit` under
the prior of a :class:`~bayes_scaling.population.Population` (its members' shape of the law
and exponents, not their loss units), with the size discrepancy (a planned run's spread grows
with how far its size lies beyond the largest size trained) and with checkpoints weighted
by how much independent evidence they carry (:func:`bayes_scaling.cellfit.effective_weights`).

The result is the same :class:`Fit` as the joint model's: posterior ``theta``, ``sigma_obs``,
``sigma_run``, ``sigma_size`` per family and ``run_offset`` per run; observed and constant
data; the pointwise log likelihood; divergences. ``predict``, ``decide``, ``diagnose`` and
the plots read it unchanged. The prior is stored in the attrs, so ``kind="new_family"``
draws from it after a save and load.
"""

from __future__ import annotations

import json
import math
from typing import Callable

import arviz as az
import numpy as np
import xarray as xr
from scipy import stats

from .cellfit import SAMPLER_DEFAULTS, CellPrior, FamilyArrays, stable_seed
from .data import Filters, RunsData, prepare, warn_rising_runs
from .errors import FitError, PopulationError
from .inference import ATTR_PREFIX, Fit, versions
from .laws import PARAM_NAMES, chinchilla_log_loss
from .spec import load_spec

__all__ = ["POPULATION_SPEC", "fit_with_population", "prior_from_attrs"]

#: The spec whose likelihood, reference points and data filters the population path shares
#: (its weak priors are what a population's members were fitted under).
POPULATION_SPEC = "chinchilla_independent"


def _prior_to_json(prior: CellPrior) -> str:
    return json.dumps(
        {
            "loc": prior.loc.tolist(),
            "scale_tril": prior.scale_tril.tolist(),
            "df": prior.df if math.isfinite(prior.df) else None,
            "run_scale": list(prior.run_scale),
            "noise_scale": list(prior.noise_scale),
            "size_scale": None if prior.size_scale is None else list(prior.size_scale),
            "nu": prior.nu if math.isfinite(prior.nu) else None,
            "scale_kind": prior.scale_kind,
            "source": prior.source,
        }
    )


def prior_from_attrs(fit: Fit) -> CellPrior | None:
    """The population prior a fit was made under (None for a joint-model fit)."""
    raw = fit.idata.posterior.attrs.get(ATTR_PREFIX + "population_prior")
    if raw is None:
        return None
    d = json.loads(raw)
    return CellPrior(
        loc=np.array(d["loc"]),
        scale_tril=np.array(d["scale_tril"]),
        scale_kind=d["scale_kind"],
        run_scale=tuple(d["run_scale"]),
        noise_scale=tuple(d["noise_scale"]),
        nu=math.inf if d["nu"] is None else d["nu"],
        source=d["source"],
        size_scale=None if d["size_scale"] is None else tuple(d["size_scale"]),
        df=math.inf if d["df"] is None else d["df"],
    )


def fit_with_population(
    runs,
    population,
    *,
    filters: Filters | None = None,
    chains: int = SAMPLER_DEFAULTS["chains"],
    warmup: int = SAMPLER_DEFAULTS["warmup"],
    draws: int = SAMPLER_DEFAULTS["draws"],
    seed: int = 0,
    target_accept: float = SAMPLER_DEFAULTS["target_accept"],
    max_tree_depth: int = SAMPLER_DEFAULTS["max_tree_depth"],
    retry_thinning: int = SAMPLER_DEFAULTS["retry_thinning"],
    tempering: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Fit:
    """Fit every family of ``runs`` alone under the population prior.

    Parameters
    ----------
    runs : path, DataFrame or RunsData
        The runs table (:mod:`bayes_scaling.data`).
    population : "public", path or Population
        What the families borrow (:func:`bayes_scaling.population.resolve`). A member that
        shares a family's name is left out of that family's prior (a family never borrows
        from itself), not of the others': each family's fit is the same alone as in a table.
        The fit keeps the whole population's prior for new families (``predict`` kind
        ``new_family``).
    filters : Filters, optional
        Default: the ``chinchilla_independent`` spec's data defaults (tokens >= 1e10, at most
        30 log-spaced checkpoints per run, primary curves).
    chains, warmup, draws, seed, target_accept, max_tree_depth, retry_thinning
        NUTS settings of each family's fit (:data:`bayes_scaling.cellfit.SAMPLER_DEFAULTS`);
        family f's sampler seed is a hash of its name and ``seed``. A family whose fit has
        r_hat above 1.01, or bulk or tail ESS below 100 per chain, has its chains carried on
        to ``retry_thinning`` times the iterations, every ``retry_thinning``-th draw kept (same
        number of draws for every family); its name is in the fit's settings under ``retried``.
    tempering : bool
        Opt-in: a family whose fit has r_hat above 1.05 (chains in different places) is
        fitted again as a replica exchange (parallel tempering over
        :data:`bayes_scaling.cellfit.TEMPERATURES`) instead of being carried on; its name is
        also under ``tempered``. It joins separate modes that longer chains do not, running
        six NUTS chains for each chain; not the default, because on the back-test it lowered
        the coverage (``benchmarks/EXPERIMENTS.md``).
    progress : callable, optional
        Called with each family's name when its fit finishes.

    Returns
    -------
    Fit
    """
    from .population import resolve

    pop = resolve(population)
    spec = load_spec(POPULATION_SPEC)
    data = runs if isinstance(runs, RunsData) else prepare(runs, filters if filters is not None else Filters(**spec.data))
    warn_rising_runs(data)
    for name, value in (("chains", chains), ("warmup", warmup), ("draws", draws), ("retry_thinning", retry_thinning)):
        if int(value) != value or value < (0 if name == "warmup" else 1):
            raise FitError(f"{name} must be a {'non-negative' if name == 'warmup' else 'positive'} integer, got {value!r}")
    prior = pop.prior()  # a new family's: the whole population
    sampler = dict(
        chains=int(chains), warmup=int(warmup), draws=int(draws), target_accept=float(target_accept), max_tree_depth=int(max_tree_depth),
        retry_thinning=int(retry_thinning), tempering=bool(tempering),
    )
    posts, sources = [], {}
    for f, family in enumerate(data.families):
        arrays = FamilyArrays.of(data, f)
        own = _own_prior(pop, family, prior)
        sources[family] = own.source
        posts.append((arrays, arrays.fit(own, seed=stable_seed((family,), seed), **sampler)))
        if progress is not None:
            progress(family)
    idata = _inference_data(data, posts, prior)
    idata.posterior.attrs.update(
        {
            ATTR_PREFIX + "spec": spec.to_json(),
            ATTR_PREFIX + "spec_source": f"{spec.source} likelihood under a population prior",
            ATTR_PREFIX + "filters": json.dumps(data.filters.to_dict()),
            ATTR_PREFIX + "settings": json.dumps({**sampler, "seed": int(seed), "population": prior.source, "priors": sources, "retried": [f for f, (_, p) in zip(data.families, posts) if p.retried], "tempered": [f for f, (_, p) in zip(data.families, posts) if p.tempered]}),
            ATTR_PREFIX + "versions": json.dumps(versions()),
            ATTR_PREFIX + "population_prior": _prior_to_json(prior),
            ATTR_PREFIX + "population_provenance": json.dumps({**pop.provenance, "members": list(pop.families), "settings": pop.settings}),
        }
    )
    return Fit(idata)


def _sample_stats(posts: list) -> dict[str, np.ndarray]:
    """Sampler statistics with axes (chain, draw, family): divergences always; tree depth
    when every family recorded it; energy when any did, NaN for a family whose draws were
    thinned (its E-BFMI is not computed)."""
    stats = {"diverging": np.stack([p.by_chain(p.diverging) for p in posts], axis=2)}
    if all(p.tree_depth is not None for p in posts):
        stats["tree_depth"] = np.stack([p.by_chain(p.tree_depth) for p in posts], axis=2)
    if any(p.energy is not None for p in posts):
        stats["energy"] = np.stack([p.by_chain(np.full(len(p.theta), np.nan) if p.energy is None else p.energy) for p in posts], axis=2)
    return stats


def _own_prior(pop, family: str, whole: CellPrior) -> CellPrior:
    """The prior ``family`` is fitted under: the population less its own member entry, if it
    has one (a family never borrows from itself); the other families of a table keep theirs,
    so a family's fit does not depend on what else is in the table."""
    if family not in pop.families:
        return whole
    rest = pop.without(families=[family])
    if len(rest.families) < 2:
        raise PopulationError(
            f"family {family!r} is a member of this population and is left out of its own prior, which leaves "
            f"{len(rest.families)} member famil{'y' if len(rest.families) == 1 else 'ies'}; a prior needs >= 2"
        )
    return rest.prior()


def _inference_data(data: RunsData, posts: list, prior: CellPrior) -> az.InferenceData:
    """InferenceData of per-family cell posteriors, in the layout of a joint-model fit."""
    chains = posts[0][1].chains
    draws = len(posts[0][1].theta) // chains
    fam_dims, coords = ("chain", "draw", "family"), {"chain": np.arange(chains), "draw": np.arange(draws), "family": list(data.families)}
    theta = np.stack([p.by_chain(p.theta) for _, p in posts], axis=2)
    scales = {name: np.stack([p.by_chain(getattr(p, name)) for _, p in posts], axis=2) for name in ("sigma_run", "sigma_obs", "sigma_size")}
    run_offset = np.concatenate([p.by_chain(p.run_offset) for _, p in posts], axis=2)
    posterior = xr.Dataset(
        {
            "theta": ((*fam_dims, "param"), theta),
            **{name: (fam_dims, value) for name, value in scales.items()},
            "run_offset": (("chain", "draw", "run"), run_offset),
        },
        coords={**coords, "param": list(PARAM_NAMES), "run": list(data.runs)},
    )
    th = theta[:, :, data.family_idx, :]  # (chain, draw, checkpoint, param)
    mean = np.asarray(chinchilla_log_loss(data.x_n, data.x_d, *[th[..., i] for i in range(len(PARAM_NAMES))]))
    mean = mean + run_offset[:, :, data.run_idx]
    sigma = scales["sigma_obs"][:, :, data.family_idx]
    resid = (data.log_loss - mean) / sigma
    loglik = (stats.t.logpdf(resid, prior.nu) if math.isfinite(prior.nu) else stats.norm.logpdf(resid)) - np.log(sigma)
    checkpoint = {"checkpoint": np.arange(data.n_checkpoints)}
    weights = np.empty(data.n_checkpoints)
    for f, (arrays, _) in enumerate(posts):
        weights[data.family_idx == f] = arrays.weight
    constant = xr.Dataset(
        {
            "x_n": ("checkpoint", data.x_n),
            "x_d": ("checkpoint", data.x_d),
            "family_idx": ("checkpoint", data.family_idx),
            "run_idx": ("checkpoint", data.run_idx),
            "num_params": ("checkpoint", data.table["num_params"].to_numpy(dtype=float)),
            "tokens": ("checkpoint", data.table["tokens"].to_numpy(dtype=float)),
            "weight": ("checkpoint", weights),
            "run_family": ("run", data.run_family),
            "size_anchor": ("family", np.array([arrays.x_n.max() for arrays, _ in posts])),
        },
        coords={**checkpoint, "run": list(data.runs), "family": list(data.families)},
    )
    return az.InferenceData(
        posterior=posterior,
        sample_stats=xr.Dataset({name: (fam_dims, value) for name, value in _sample_stats([p for _, p in posts]).items()}, coords=coords),
        observed_data=xr.Dataset({"log_loss": ("checkpoint", data.log_loss)}, coords=checkpoint),
        constant_data=constant,
        log_likelihood=xr.Dataset({"log_loss": (("chain", "draw", "checkpoint"), loglik)}, coords={**checkpoint, "chain": coords["chain"], "draw": coords["draw"]}),
    )
