"""NUTS fits of a spec to a runs table, returning a :class:`Fit` that holds InferenceData.

The only state is the returned object: ``fit`` never stores anything elsewhere, and the
same seed gives the same draws. Saving is NetCDF with the resolved spec, filters, seed,
sampler settings and package versions in the posterior's attrs (no pickle).
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
import xarray as xr
from numpyro.infer import MCMC, NUTS, init_to_median, init_to_value

from .convergence import check_convergence
from .data import Filters, RunsData, prepare, warn_rising_runs
from .errors import ConvergenceWarning, FitError
from .laws import LEVEL_NAMES, PARAM_NAMES, chinchilla_log_loss, to_level_coordinates
from .model import (
    EFFECTS,
    ModelInputs,
    build_model,
    centred_runs,
    draw_run_offsets,
    family_effects,
    prior_distribution,
    repeated_families,
    site_dims,
)
from .outputs import atomic_path, require_writable_file
from .spec import Spec, load_spec, spec_from_json

ATTR_PREFIX = "bayes_scaling_"
#: Sites kept at their starting values when :func:`laplace_start` looks for the mode.
HELD_AT_START = ("tau", "corr_cholesky")
#: Initialisations of :func:`fit`.
INITS = ("laplace", "point", "median")
#: Sites that share the dense block of the mass matrix when the model has them. Run offsets
#: are in it: with one run per model size they trade off against the N term of the law.
DENSE_SITES = ("mu", "tau", "corr_cholesky", "theta", "theta_centred", "theta_z", "theta_level", "exponent_z", "terms_level", "sigma_obs", "sigma_run_fitted", "run_u", "run_z")


@dataclass(frozen=True)
class Fit:
    """A fitted model: arviz InferenceData plus convenient views of its attrs.

    Attributes
    ----------
    idata : arviz.InferenceData
        Groups posterior, sample_stats, log_likelihood, observed_data, constant_data.
        Coords ``family``, ``run``, ``param`` and ``checkpoint``.
    """

    idata: az.InferenceData

    def _attr(self, key: str):
        try:
            return self.idata.posterior.attrs[ATTR_PREFIX + key]
        except KeyError as exc:
            raise FitError(f"this InferenceData was not written by bayes_scaling (no attr {ATTR_PREFIX + key})") from exc

    @property
    def spec(self) -> Spec:
        return spec_from_json(self._attr("spec"))

    @property
    def filters(self) -> dict:
        return json.loads(self._attr("filters"))

    @property
    def settings(self) -> dict:
        """Sampler settings (chains, warmup, draws, seed, ...)."""
        return json.loads(self._attr("settings"))

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(str(f) for f in self.idata.posterior["family"].values)

    @property
    def runs(self) -> tuple[str, ...]:
        return tuple(str(r) for r in self.idata.posterior["run"].values) if "run" in self.idata.posterior.coords else ()

    def require_family(self, family: str) -> int:
        """Index of ``family``; FitError naming the known families when absent."""
        if family not in self.families:
            known = ", ".join(self.families[:12]) + (" ..." if len(self.families) > 12 else "")
            raise FitError(f"family {family!r} is not in this fit (families: {known})")
        return self.families.index(family)

    def save(self, path) -> Path:
        """Write the fit as NetCDF, atomically (a temporary file renamed); returns the path.

        Raises
        ------
        OutputError
            ``path`` is a directory, lies under a file, or its directory is not writable.
        """
        path = require_writable_file(_as_path(path, "save"), "fit file")
        with atomic_path(path) as tmp:
            self.idata.to_netcdf(str(tmp))
        return path

    @classmethod
    def load(cls, path) -> "Fit":
        """Read a fit written by :meth:`save` (FitError when it is missing or damaged)."""
        path = _as_path(path, "load")
        if not path.is_file():
            raise FitError(f"fit file not found: {path}")
        try:
            idata = az.from_netcdf(str(path))
            for group in idata.groups():  # read every value now: a bad checksum shows on first read
                getattr(idata, group).load()
        except Exception as exc:  # netCDF4 / h5py raise RuntimeError, OSError, KeyError ... on damaged files
            raise FitError(f"cannot read fit file {path} (damaged, truncated or not NetCDF?): {type(exc).__name__}: {exc}") from exc
        if "posterior" not in idata.groups():
            raise FitError(f"{path} has no posterior group; not a bayes_scaling fit")
        fit = cls(idata)
        try:
            fit.spec  # fail early, naming the file, if attrs are missing  # noqa: B018
        except FitError as exc:
            raise FitError(f"{path}: {exc}") from None
        return fit


def _as_path(path, verb: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise FitError(f"Fit.{verb} needs a file path (str or Path), got {type(path).__name__}")
    return Path(path)


def versions() -> dict[str, str]:
    """Versions of this package and of the libraries that produce the numbers."""
    out = {}
    for dist_name in ("bayes-scaling", "numpyro", "jax", "jaxlib", "arviz", "numpy", "pandas", "xarray"):
        try:
            out[dist_name] = metadata.version(dist_name)
        except metadata.PackageNotFoundError:
            out[dist_name] = "not installed"
    return out


def point_estimate(data: RunsData, spec: Spec) -> dict[str, np.ndarray]:
    """Fast penalised least-squares fit of each family, used to initialise NUTS.

    Fits theta per family on log loss with a soft-L1 loss, plus a weak pull towards the
    spec's prior means, so that parameters the data cannot identify (``log_a`` and
    ``alpha`` of a one-size family) stay at the prior instead of wandering off.

    Returns
    -------
    dict
        ``theta`` (family, param) and ``sigma_obs`` (family), in model units.
    """
    loc = np.array([p.kwargs()["loc"] for p in spec.mean_priors])
    scale = np.array([p.kwargs()["scale"] for p in spec.mean_priors])
    thetas, sigmas = [], []
    for f in range(len(data.families)):
        mask = data.family_idx == f
        x_n, x_d, y = data.x_n[mask], data.x_d[mask], data.log_loss[mask]
        start = loc.copy()
        start[0] = np.log(max(np.exp(y).min() * 0.8, 1e-3))

        def residuals(theta, x_n=x_n, x_d=x_d, y=y):
            pred = np.logaddexp.reduce([np.full_like(x_n, theta[0]), theta[1] - theta[3] * x_n, theta[2] - theta[4] * x_d])
            # weight the prior like ~1 checkpoint at the prior scale
            return np.concatenate([(pred - y) / 0.02, (theta - loc) / scale])

        result = scipy.optimize.least_squares(residuals, start, loss="soft_l1", max_nfev=2000)
        theta = result.x
        resid = np.asarray(chinchilla_log_loss(x_n, x_d, *theta)) - y
        thetas.append(theta)
        sigmas.append(float(np.clip(1.4826 * np.median(np.abs(resid - np.median(resid))), 1e-3, 0.5)))
    return {"theta": np.array(thetas), "sigma_obs": np.array(sigmas)}


def initial_values(data: RunsData, spec: Spec) -> dict[str, np.ndarray]:
    """Starting point for NUTS in the spec's sample sites, from :func:`point_estimate`."""
    est = point_estimate(data, spec)
    theta = est["theta"]
    values = {"sigma_obs": est["sigma_obs"]}
    if spec.run_offsets and not spec.marginal_run_offsets:
        centred = centred_runs(data.run_idx, len(data.runs))
        values["run_u"] = np.zeros(int(centred.sum()))
        values["run_z"] = np.zeros(int((~centred).sum()))
    if spec.pooling == "none":
        values["theta"] = theta
        return values
    mu = theta.mean(axis=0) if len(theta) > 1 else theta[0]
    values["mu"] = mu
    if spec.pooling == "partial":
        prior_mean = np.asarray(prior_distribution(spec.family_scale_priors).mean)
        tau = np.clip(theta.std(axis=0) if len(theta) > 2 else prior_mean / 2, 0.02, None)
        values["tau"] = tau
        values["corr_cholesky"] = np.eye(len(PARAM_NAMES))
        effects = family_effects(spec)
        if effects == "centred":
            values["theta_centred"] = theta
        elif effects == "noncentred":
            values["theta_z"] = (theta - mu) / tau
        else:
            inputs = ModelInputs.from_data(data)
            level = np.asarray(to_level_coordinates(theta, inputs.family_x_n, inputs.family_x_d))
            if effects == "level":
                values["theta_level"] = level
            else:  # hybrid; the start's correlation is the identity, so z is exact
                values["exponent_z"] = (theta[:, 3:] - mu[3:]) / tau[3:]
                values["terms_level"] = level[:, :3]
    return values


@dataclass(frozen=True)
class LaplaceStart:
    """Where NUTS starts: the posterior mode and the inverse Hessian there.

    ``init_params`` holds one dispersed start per chain in unconstrained space;
    ``inverse_mass`` is the dense block of the mass matrix keyed by site names, in
    NumPyro's structured form. Warmup then refines a metric that already fits the
    posterior's scales and correlations (see :func:`_staged_warmup`) instead of learning
    them from an identity matrix (from the identity, early warmup of the corpus model ran
    at the maximum tree depth).
    """

    init_params: dict
    inverse_mass: dict
    converged: bool

    @property
    def n_params(self) -> int:
        """Size of the dense block of the metric (unconstrained parameters)."""
        (metric,) = self.inverse_mass.values()
        return int(np.shape(metric)[0])


def laplace_start(model, inputs: ModelInputs, values: dict, chains: int, seed: int, max_iter: int = 3000) -> LaplaceStart:
    """Find the posterior mode with L-BFGS from ``values`` and take the Laplace covariance.

    The population spreads (``tau``) and correlations stay at their starting values (the
    spread of the per-family point fits): the joint mode of a hierarchical model sits at
    tau -> 0, the neck of the funnel, where a chain started there stalls at the maximum
    tree depth. The other parameters move to their mode given those. Chains start at that
    point + 0.5 x a draw from the Laplace approximation, so r_hat can still detect chains
    that disagree.
    """
    from jax.flatten_util import ravel_pytree
    from numpyro.infer.util import initialize_model

    init = initialize_model(
        jax.random.PRNGKey(seed),
        model,
        model_kwargs=inputs.as_kwargs(),
        init_strategy=init_to_value(values={k: jnp.asarray(v) for k, v in values.items()}),
    )
    z0 = init.param_info.z
    flat0, unravel = ravel_pytree(z0)
    potential = jax.jit(lambda x: init.potential_fn(unravel(x)))
    value_and_grad = jax.jit(jax.value_and_grad(lambda x: init.potential_fn(unravel(x))))

    def objective(x):
        v, g = value_and_grad(jnp.asarray(x, dtype=flat0.dtype))
        return float(v), np.asarray(g, dtype=float)

    offsets, start = {}, 0  # position of each site in the flat vector (sorted site names)
    for name in sorted(z0):
        size = int(np.size(z0[name]))
        offsets[name] = np.arange(start, start + size)
        start += size
    x0 = np.asarray(flat0, dtype=float)
    held = np.zeros(x0.size, dtype=bool)
    for name in HELD_AT_START:
        held[offsets.get(name, [])] = True
    bounds = [(v, v) if h else (None, None) for v, h in zip(x0, held)]
    result = scipy.optimize.minimize(objective, x0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": max_iter})
    mode = jnp.asarray(result.x, dtype=flat0.dtype)
    hessian = np.asarray(jax.hessian(lambda x: potential(x))(mode), dtype=float)
    hessian = 0.5 * (hessian + hessian.T)
    eigval, eigvec = np.linalg.eigh(hessian)
    # flat or concave directions (weakly identified parameters): fall back to unit scale
    eigval = np.where(eigval > 1e-3, eigval, 1.0)
    cov = (eigvec / eigval) @ eigvec.T
    # reorder the flat vector (sorted site names) into the order of the dense block
    block = tuple(s for s in DENSE_SITES if s in z0)
    order = np.concatenate([offsets[s] for s in block])
    rng = np.random.default_rng(seed)
    chol = np.linalg.cholesky(cov + 1e-10 * np.eye(len(cov)))
    starts = np.asarray(result.x)[None, :] + 0.5 * rng.standard_normal((chains, len(cov))) @ chol.T
    per_chain = [unravel(jnp.asarray(x, dtype=flat0.dtype)) for x in starts]
    init_params = {k: jnp.stack([p[k] for p in per_chain]) for k in z0} if chains > 1 else per_chain[0]
    return LaplaceStart(init_params, {block: jnp.asarray(cov[np.ix_(order, order)])}, bool(result.success))


def _sample_sites(model, inputs: ModelInputs) -> set[str]:
    """Names of the latent sample sites of ``model`` (one cheap trace, no sampling)."""
    from numpyro import handlers

    names = set()

    def collect():
        tr = handlers.trace(handlers.seed(model, 0)).get_trace(**inputs.as_kwargs())
        names.update(name for name, site in tr.items() if site["type"] == "sample" and not site["is_observed"])
        return 0

    jax.eval_shape(collect)  # abstract trace: run eagerly, every op would be compiled on its own
    return names


#: Warmup of a Laplace start, as fractions of ``warmup``: two rounds of (step-size warmup,
#: draws that estimate the metric), then the step-size warmup of the final run. On the
#: demo a final step-size warmup of 0.4 gave 25 divergences where 0.2 gave 44 (one seed).
METRIC_ROUNDS = ((0.1, 0.2), (0.1, 0.2))
FINAL_WARMUP = 0.4

#: Choices of ``fit(metric_adaptation=...)``.
METRIC_ADAPTATIONS = ("auto", "pooled", "per_chain")


def _pooled_metric(mcmc: MCMC, block: tuple[str, ...], previous: np.ndarray) -> np.ndarray:
    """Covariance of the draws of every chain (unconstrained), shrunk towards ``previous``.

    NumPyro's own dense adaptation estimates each chain's metric from that chain's warmup
    window alone: with ~200 parameters and windows of 25-100 draws the estimate is rank
    deficient, its missing directions fall back to a tiny multiple of the identity, and
    on the corpus every trajectory then ran to the maximum tree depth. Pooling the chains
    and shrinking towards the previous metric (weight: as many draws as parameters) keeps
    it full rank.
    """
    fields = mcmc.get_extra_fields(group_by_chain=True)
    chains = mcmc.num_chains
    flat = np.concatenate([np.asarray(fields[f"z.{s}"], dtype=float).reshape(chains, mcmc.num_samples, -1) for s in block], axis=-1)
    flat = flat.reshape(-1, flat.shape[-1])
    n, k = len(flat), flat.shape[1]
    return (n * np.cov(flat, rowvar=False).reshape(k, k) + k * np.asarray(previous)) / (n + k)


def needs_pooled_metric(n_params: int, warmup: int) -> bool:
    """Whether NumPyro's per-chain dense adaptation would estimate a rank-deficient metric.

    It estimates the metric from each adaptation window's draws alone and keeps the last
    full window's estimate; with no more draws there than parameters that estimate is
    singular. Small models keep NumPyro's adaptation, which mixed better there (notebook 01's
    fit: max r_hat 1.021 and min bulk ESS 176, against 1.053 and 38 with the pooled rounds).
    """
    from numpyro.infer.hmc_util import build_adaptation_schedule

    windows = build_adaptation_schedule(int(warmup))[1:-1]  # the first and last only tune the step size
    return n_params > max((w.end - w.start + 1 for w in windows), default=0)


def _staged_warmup(make_mcmc, start: LaplaceStart, warmup: int, seed: int, inputs: ModelInputs):
    """Learn the metric in rounds with the mass matrix held fixed; returns (metric, init).

    Each round adapts only the step size for a while, then draws with the metric fixed;
    the pooled covariance of those draws is the next round's metric.
    """
    (block, metric), = start.inverse_mass.items()
    init = start.init_params
    for i, (warm, draws) in enumerate(METRIC_ROUNDS):
        n_warm, n_draws = max(1, round(warm * warmup)), max(2, round(draws * warmup))
        mcmc = make_mcmc({block: jnp.asarray(metric)}, n_warm, n_draws)
        mcmc.run(
            jax.random.PRNGKey(seed + 1000 * (i + 1)),
            **inputs.as_kwargs(),
            init_params=init,
            extra_fields=tuple(f"z.{s}" for s in block),
        )
        metric = _pooled_metric(mcmc, block, metric)
        init = mcmc.last_state.z
    return {block: jnp.asarray(metric)}, init


@contextmanager
def _float64(enabled: bool):
    """``jax_enable_x64`` for the duration of a fit, the previous value restored afterwards.

    Set globally, not with the thread-local ``jax.enable_x64`` context: NumPyro's progress
    bar calls back into Python on another thread, which must see the same setting (with
    the thread-local one, parallel chains failed with an int32/int64 callback mismatch).
    """
    previous = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", bool(enabled))
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


def _chain_method(chains: int, chain_method: str) -> str:
    if chain_method != "auto":
        return chain_method
    return "parallel" if chains > 1 and jax.local_device_count() >= chains else "sequential"


#: Sampler defaults of the joint model (the population path's are ``cellfit.SAMPLER_DEFAULTS``).
JOINT_SAMPLER_DEFAULTS = dict(chains=4, warmup=500, draws=500, target_accept=0.95, max_tree_depth=10)


def fit(
    runs,
    spec: Spec | str | Path | None = None,
    *,
    population="public",
    filters: Filters | None = None,
    chains: int | None = None,
    warmup: int | None = None,
    draws: int | None = None,
    seed: int = 0,
    target_accept: float | None = None,
    max_tree_depth: int | None = None,
    retry_thinning: int | None = None,
    tempering: bool = False,
    chain_method: str = "auto",
    init: str = "laplace",
    metric_adaptation: str = "auto",
    progress_bar: bool = False,
    log_likelihood: bool = True,
    x64: bool = True,
) -> Fit:
    """Fit the scaling law to a runs table with NUTS.

    Two paths, one result type:

    * ``population`` given (default ``"public"``, the population shipped with the package):
      each family of the table is fitted alone under the population's prior
      (:func:`bayes_scaling.popfit.fit_with_population`). This is the path the back-test
      scores out of sample (``bayes_hierarchical``), for a table of one family as for forty;
      families of one table do not borrow from each other, only from the population (build
      one from your own families with :func:`bayes_scaling.population.build` to borrow
      among them). Sampler defaults: :data:`bayes_scaling.cellfit.SAMPLER_DEFAULTS`.
    * ``population=None``: the joint hierarchical model of ``spec`` (default
      ``chinchilla_hierarchical``): the table's families share a population fitted with them.
      It has no size discrepancy and was not back-tested out of sample; use it to study a
      corpus of families, not to extrapolate one. Defaults: :data:`JOINT_SAMPLER_DEFAULTS`.

    Parameters
    ----------
    runs : path, DataFrame or RunsData
        The runs table (see :mod:`bayes_scaling.data`), or data already prepared.
    spec : Spec, name or path, optional
        Model spec of the joint model (``population=None`` only); shipped names are
        ``chinchilla_hierarchical`` and ``chinchilla_independent``.
    population : "public", path, Population or None
        What each family borrows; None: the joint model.
    filters : Filters, optional
        Data filters; default: the spec's ``[data]`` defaults. Ignored for RunsData input.
    chains, warmup, draws : int
        NUTS chains, warmup (adaptation) iterations and kept draws per chain.
    seed : int
        Seed of the sampler; same seed, same draws.
    target_accept : float
        Target acceptance probability of step-size adaptation, in (0, 1). 0.95 rather
        than 0.9 for the joint model: far fewer divergences for some more time, measured
        side by side in ``benchmarks/results/fit_corpus.md``.
    max_tree_depth : int
        NUTS maximum tree depth.
    retry_thinning : int
        Population path only: a family whose fit has r_hat above 1.01, or bulk or tail ESS
        below 100 per chain, has its chains carried on, once, to this many times the
        iterations, keeping every ``retry_thinning``-th draw (1: never; default
        :data:`bayes_scaling.cellfit.SAMPLER_DEFAULTS`).
    tempering : bool
        Population path only, opt-in: a family whose fit has r_hat above 1.05 is fitted
        again as a replica exchange (parallel tempering) instead of being carried on
        (:func:`bayes_scaling.popfit.fit_with_population`).
    chain_method : {"auto", "parallel", "sequential", "vectorized"}
        ``auto`` runs chains in parallel when JAX has a device per chain (the CLI sets
        the host device count), else sequentially.
    init : {"laplace", "point", "median"}
        ``laplace`` (default): start at the posterior mode (L-BFGS from the per-family
        least-squares fit) with the inverse Hessian there as the initial mass matrix, which
        warmup then refines (see ``metric_adaptation``);
        ``point``: start at the per-family least-squares fit with a unit mass matrix
        (NumPyro's per-chain adaptation); ``median``: start at prior medians (likewise).
    metric_adaptation : {"auto", "pooled", "per_chain"}
        How warmup refines a Laplace start's dense metric: ``pooled`` in rounds from the
        draws of all chains (:data:`METRIC_ROUNDS`), ``per_chain`` with NumPyro's adaptation
        windows of each chain, ``auto`` pooled only when the model has more parameters than
        NumPyro's largest window (:func:`needs_pooled_metric`). Neither wins everywhere: on
        the demo (90 parameters) pooled gave 25 divergences against 289, on notebook 01's fit
        per-chain mixed better (min bulk ESS 176 against 38).
    progress_bar : bool
        Show NumPyro's progress bar (the CLI turns it on).
    log_likelihood : bool
        Store the pointwise log likelihood (needed for LOO; costs memory).
    x64 : bool
        Sample in 64-bit floats (default; JAX's global setting is restored when the call
        returns). float32 gave more divergences (28 vs 11 over three synthetic fits).

    Returns
    -------
    Fit

    Warns
    -----
    ConvergenceWarning
        When r_hat > 1.01, ESS is low or there are divergences; the message has the numbers.
    DataWarning
        When a run's loss rises over its last 30% of training
        (:func:`bayes_scaling.data.rising_runs`); the message names the runs.
    """
    if population is not None:
        if spec is not None:
            raise FitError("a spec describes the joint model; pass population=None to fit it (a population fit uses the population's model)")
        from .cellfit import SAMPLER_DEFAULTS
        from .popfit import fit_with_population

        given = dict(chains=chains, warmup=warmup, draws=draws, target_accept=target_accept, max_tree_depth=max_tree_depth, retry_thinning=retry_thinning)
        settings = {k: SAMPLER_DEFAULTS[k] if v is None else v for k, v in given.items()}
        return fit_with_population(runs, population, filters=filters, seed=seed, tempering=tempering, **settings)
    if retry_thinning is not None or tempering:
        raise FitError("retry_thinning and tempering are settings of the population path; the joint model samples once (population=None)")
    chains, warmup, draws, target_accept, max_tree_depth = (
        JOINT_SAMPLER_DEFAULTS[k] if v is None else v
        for k, v in dict(chains=chains, warmup=warmup, draws=draws, target_accept=target_accept, max_tree_depth=max_tree_depth).items()
    )
    spec = load_spec("chinchilla_hierarchical" if spec is None else spec)
    if isinstance(runs, RunsData):
        data = runs
    else:
        data = prepare(runs, filters if filters is not None else Filters(**spec.data), spec.reference_params, spec.reference_tokens)
    warn_rising_runs(data)
    for name, value in (("chains", chains), ("warmup", warmup), ("draws", draws)):
        if int(value) != value or value < (0 if name == "warmup" else 1):
            raise FitError(f"{name} must be a {'non-negative' if name == 'warmup' else 'positive'} integer, got {value!r}")
    if not 0 < target_accept < 1:
        raise FitError(f"target_accept must be between 0 and 1, got {target_accept!r}")
    if metric_adaptation not in METRIC_ADAPTATIONS:
        raise FitError(f"metric_adaptation must be one of {METRIC_ADAPTATIONS}, got {metric_adaptation!r}")
    if init not in INITS:
        raise FitError(f"init must be one of {INITS}, got {init!r}")
    inputs = ModelInputs.from_data(data)
    # float64 by default: with noise ~1e-3 on log loss and thousands of checkpoints, float32
    # rounding of the log density ends some trajectories as divergences (three synthetic
    # fits: 28 divergences in float32, 11 in float64, at the same speed on CPU)
    with _float64(x64):
        model = build_model(spec)
        sites = _sample_sites(model, inputs)
        dense = [tuple(s for s in DENSE_SITES if s in sites)]
        if init == "median":
            start, init_strategy = None, init_to_median(num_samples=15)
        else:  # with a Laplace start, its init_params take precedence over the strategy
            values = {k: jnp.asarray(v) for k, v in initial_values(data, spec).items()}
            start = laplace_start(model, inputs, values, int(chains), seed) if init == "laplace" else None
            init_strategy = init_to_value(values=values)

        def make_mcmc(inverse_mass, n_warmup, n_samples, adapt=False):
            kernel = NUTS(
                model,
                dense_mass=dense,
                inverse_mass_matrix=inverse_mass,
                adapt_mass_matrix=adapt or inverse_mass is None,
                init_strategy=init_strategy,
                target_accept_prob=target_accept,
                max_tree_depth=max_tree_depth,
            )
            return MCMC(
                kernel,
                num_warmup=int(n_warmup),
                num_samples=int(n_samples),
                num_chains=int(chains),
                chain_method=_chain_method(chains, chain_method),
                progress_bar=progress_bar,
            )

        if start is None:
            init_params, mcmc = None, make_mcmc(None, warmup, draws)
        elif warmup and (metric_adaptation == "pooled" or (metric_adaptation == "auto" and needs_pooled_metric(start.n_params, warmup))):
            metric, init_params = _staged_warmup(make_mcmc, start, int(warmup), seed, inputs)
            mcmc = make_mcmc(metric, max(1, round(FINAL_WARMUP * warmup)), draws)
        else:  # NumPyro adapts the metric per chain, starting from the Laplace one
            init_params, mcmc = start.init_params, make_mcmc(start.inverse_mass, warmup, draws, adapt=bool(warmup))
        mcmc.run(
            jax.random.PRNGKey(seed),
            **inputs.as_kwargs(),
            init_params=init_params,
            extra_fields=("diverging", "num_steps", "accept_prob", "energy"),
        )
        jax.block_until_ready(mcmc.get_samples())
        idata = _to_inference_data(mcmc, data, spec, log_likelihood, seed)
        idata.posterior.attrs.update(
            {
                ATTR_PREFIX + "spec": spec.to_json(),
                ATTR_PREFIX + "spec_source": spec.source,
                ATTR_PREFIX + "filters": json.dumps(data.filters.to_dict()),
                ATTR_PREFIX + "settings": json.dumps(
                    {
                        "chains": int(chains),
                        "warmup": int(warmup),
                        "draws": int(draws),
                        "seed": int(seed),
                        "target_accept": target_accept,
                        "max_tree_depth": max_tree_depth,
                        "init": init,
                        "metric_adaptation": metric_adaptation,
                        "x64": bool(x64),
                    }
                ),
                ATTR_PREFIX + "versions": json.dumps(versions()),
            }
        )
        result = Fit(idata)
        report = check_convergence(idata)
        if report.problems():
            warnings.warn(
                f"NUTS did not converge cleanly ({'; '.join(report.problems())}); "
                "run more warmup/draws"
                + (f", raise target_accept (now {target_accept:g})" if report.divergences else "")
                + " or check the model before trusting these numbers",
                ConvergenceWarning,
                stacklevel=2,
            )
        return result


def _to_inference_data(mcmc: MCMC, data: RunsData, spec: Spec, log_likelihood: bool, seed: int) -> az.InferenceData:
    families, runs = np.array(data.families), np.array(data.runs)
    effects = family_effects(spec)
    runs_centred = centred_runs(data.run_idx, len(data.runs))
    coords = {
        "run_centred": list(runs[runs_centred]),
        "run_noncentred": list(runs[~runs_centred]),
        "family": list(families),
        **{f"family_{kind}": list(families) if kind == effects else [] for kind in EFFECTS},
        "family_repeated": list(families[repeated_families(data.run_idx, data.run_family, len(families))]),
        "level_param": list(LEVEL_NAMES),
        "exponent": list(PARAM_NAMES[3:]),
        "level_term": list(LEVEL_NAMES[:3]),
        "run": list(data.runs),
        "param": list(PARAM_NAMES),
        "param_": list(PARAM_NAMES),
        "checkpoint": np.arange(data.n_checkpoints),
    }
    dims = site_dims(spec)
    constant = {
        "x_n": data.x_n,
        "x_d": data.x_d,
        "family_idx": data.family_idx,
        "run_idx": data.run_idx,
        "run_family": data.run_family,
        "num_params": data.table["num_params"].to_numpy(),
        "tokens": data.table["tokens"].to_numpy(),
    }
    constant_dims = {k: ["checkpoint"] for k in constant} | {"run_family": ["run"]}
    idata = az.from_numpyro(
        mcmc,
        coords=coords,
        dims=dims | constant_dims,
        constant_data=constant,
        log_likelihood=log_likelihood and not spec.marginal_run_offsets,
    )
    if spec.marginal_run_offsets:
        _add_run_offsets(idata, data, seed, log_likelihood)
    return idata


def _add_run_offsets(idata: az.InferenceData, data: RunsData, seed: int, log_likelihood: bool) -> None:
    """Draw the integrated-out run offsets into the posterior, and the pointwise log likelihood.

    Each posterior draw gets offsets from their exact conditional posterior, so
    (theta, offsets) are joint posterior draws; the log likelihood of a checkpoint is then
    its Normal density given the law and its run's offset, as in the sampled model.
    """
    post = idata.posterior
    theta = jnp.asarray(post["theta"].transpose("chain", "draw", "family", "param").values)
    sigma_obs = jnp.asarray(post["sigma_obs"].transpose("chain", "draw", "family").values)
    run_family, family_idx, run_idx = data.run_family, data.family_idx, data.run_idx
    sigma_run = jnp.asarray(post["sigma_run"].transpose("chain", "draw", "family").values)[..., run_family]

    def per_draw(key, theta, sigma_obs, sigma_run):
        th = theta[family_idx]
        mean = chinchilla_log_loss(data.x_n, data.x_d, th[:, 0], th[:, 1], th[:, 2], th[:, 3], th[:, 4])
        offset = draw_run_offsets(key, data.log_loss - mean, run_idx, sigma_obs[run_family], sigma_run)
        loglik = jax.scipy.stats.norm.logpdf(data.log_loss, mean + offset[run_idx], sigma_obs[family_idx])
        return offset, loglik

    n_chains, n_draws = theta.shape[:2]
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), n_chains * n_draws).reshape(n_chains, n_draws, -1)
    offset, loglik = jax.jit(jax.vmap(jax.vmap(per_draw)))(keys, theta, sigma_obs, sigma_run)
    post["run_offset"] = xr.DataArray(np.asarray(offset), dims=("chain", "draw", "run"), coords={"run": list(data.runs)})
    if log_likelihood:
        ds = xr.Dataset({"log_loss": (("chain", "draw", "checkpoint"), np.asarray(loglik))}, coords={"chain": post["chain"], "draw": post["draw"], "checkpoint": np.arange(data.n_checkpoints)})
        idata.add_groups({"log_likelihood": ds})
