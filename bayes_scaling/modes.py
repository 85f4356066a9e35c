"""Chain weights by mode mass: importance sampling across the modes the chains found.

When the chains of one fit settle in different modes (max r-hat well above 1), pooling
their draws with equal weights weighs each mode by how many chains fell in it. Here each
chain is weighed by the posterior mass of the region it explored instead:

1. per chain, a multivariate Student-t fitted to its draws in the sampler's unconstrained
   space (the cell model's level coordinates of theta and the log scales, 7-8 dimensions;
   the run offsets are integrated out of the density, :func:`cell_log_density`);
2. the equal mixture q of those t's as an importance proposal, sampled the same number of
   times from each component (deterministic-mixture importance sampling, Owen and Zhou
   2000), and weights ``p(u) / q(u)`` from the model's unnormalised log posterior;
3. the mass of chain c: the weights summed with each proposal draw's responsibility
   ``q_c(u) / (C q(u))``, so two chains in one mode share its mass and a chain stuck in a
   minor mode gets that mode's small share.

The weights are Pareto-smoothed (PSIS, Vehtari et al. 2024); their Pareto k says whether
the estimate can be trusted (above 0.7 it cannot: a mode wider or more skewed than its t).
Chains weighted this way mix through :func:`bayes_scaling.stacking.stack_chains`.

Not part of ``fit`` or the back-test: on the back-test's unmixed cells
(``benchmarks/mixing_treatments.py``) the modes came out of comparable mass, so the
weights stayed near equal pooling, and the targets' coverage did not improve.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.infer.util import log_density
from scipy import special, stats

from .cellfit import POINTS_BUCKET, RUNS_BUCKET, CellPosterior, CellPrior, _bucket, _model, data_centre, dense_sites, model_args
from .laws import from_level_coordinates, to_level_coordinates
from .stacking import cell_run_log_lik

__all__ = ["cell_log_density", "unconstrained_draws", "mode_mass_weights"]

#: Degrees of freedom of each chain's proposal: heavier tails than the chain's own spread,
#: so that the mixture covers a mode's shoulders (the target's tails under a Student-t prior).
PROPOSAL_DF = 4.0


def cell_log_density(x_n, x_d, run_idx, log_loss, prior: CellPrior, weight=None) -> Callable[[np.ndarray], np.ndarray]:
    """Unnormalised log posterior of the cell model (:func:`bayes_scaling.cellfit._model`)
    with every run's offset integrated out, on the sampler's unconstrained space: ``f(u) ->
    (M,)`` for ``u`` of shape (M, d), the columns as :func:`unconstrained_draws` lays them out.

    The prior terms are the compiled model's own (its likelihood and run offsets blocked),
    plus the log Jacobian of the scales; the likelihood is each run's marginal density
    (:func:`bayes_scaling.stacking.cell_run_log_lik`: closed form under Normal noise,
    quadrature under Student-t), so the space has 7-8 dimensions however many runs a cell has.
    """
    x_n, x_d, log_loss = (np.asarray(v, float) for v in (x_n, x_d, log_loss))
    run_idx = np.asarray(run_idx, int)
    n_pad = _bucket(len(log_loss), *POINTS_BUCKET)
    r_pad = _bucket(int(run_idx.max()) + 1, *RUNS_BUCKET)
    args = tuple(jnp.asarray(a) for a in model_args(x_n, x_d, run_idx, log_loss, np.ones(len(log_loss)) if weight is None else weight, prior, n_pad, r_pad))
    log_prior = _log_prior_program(prior.kind, n_pad, r_pad)
    names = _scale_names(prior.size_term)
    x_n0, x_d0 = _centre(x_n, x_d)

    def evaluate(u):
        u = np.asarray(u, float)
        scales = dict(zip(names, np.exp(u[:, 5:]).T))
        draws = CellPosterior(
            theta=np.asarray(from_level_coordinates(u[:, :5], x_n0, x_d0)), sigma_run=scales["sigma_run"], sigma_obs=scales["sigma_obs"],
            nu=prior.nu, divergences=0, max_rhat=math.nan, sigma_size=scales.get("sigma_size"),
        )
        out = np.asarray(log_prior(jnp.asarray(u), args), float) + cell_run_log_lik(draws, x_n, x_d, run_idx, log_loss, weight).sum(axis=1)
        return np.where(np.isfinite(out), out, -np.inf)

    return evaluate


@lru_cache(maxsize=None)
def _log_prior_program(kind: tuple[str, bool, bool, bool], n_pad: int, r_pad: int):
    """Jitted ``(u (M, d), model args) -> (M,)``: the cell model's prior terms at each row of
    ``u`` plus the log Jacobian of the scales. One per model kind and padding bucket, the
    model's arguments traced, so cells of one bucket share a compilation (as ``_sampler``)."""
    priors_only = handlers.block(handlers.seed(_model(*kind), rng_seed=0), hide=["log_loss", "run_z"])
    names = _scale_names(kind[2])

    @jax.jit
    def log_prior(u, args):
        def one(row):
            params = {"theta_level": row[:5], **{name: jnp.exp(row[5 + i]) for i, name in enumerate(names)}}
            return log_density(priors_only, args, {}, params)[0] + row[5:].sum()  # + log Jacobian of exp

        return jax.vmap(one)(u)

    return log_prior


def _scale_names(size_term: bool) -> tuple[str, ...]:
    """The scales after theta's level coordinates, in the sampler's order (:func:`dense_sites`)."""
    return dense_sites(size_term)[1:]


def _centre(x_n, x_d) -> tuple[float, float]:
    """Where a cell's level coordinates sit (:func:`bayes_scaling.cellfit.data_centre`, no padding)."""
    return tuple(float(v) for v in data_centre(jnp.asarray(x_n, float), jnp.asarray(x_d, float), jnp.ones(len(x_n), bool)))


def unconstrained_draws(post: CellPosterior, x_n, x_d) -> np.ndarray:
    """A cell posterior's draws in the sampler's unconstrained space, (chains, draws, d):
    theta in level coordinates at the data centre (five columns), then the log of
    ``sigma_run``, ``sigma_obs`` and, with a size term, ``sigma_size``."""
    level = np.asarray(to_level_coordinates(post.theta, *_centre(x_n, x_d)))
    scales = [getattr(post, name) for name in _scale_names(post.sigma_size is not None)]
    u = np.column_stack([level, *(np.log(s) for s in scales)])
    return post.by_chain(u)


def mode_mass_weights(u: np.ndarray, log_density: Callable[[np.ndarray], np.ndarray], n_per_chain: int = 1000, seed: int = 0) -> tuple[np.ndarray, float]:
    """Weights of the chains by the posterior mass of the modes they explored, and the
    Pareto k of the importance weights behind them (module docstring).

    ``u``: draws (chains, draws, d) in the space of ``log_density``. Returns (chains,)
    weights summing to 1 and k (above 0.7: unreliable).
    """
    u = np.asarray(u, float)
    chains, _, d = u.shape
    rng = np.random.default_rng(seed)
    components = []
    for c in range(chains):
        mean = u[c].mean(axis=0)
        cov = np.cov(u[c], rowvar=False) + 1e-8 * np.eye(d)  # a stuck chain: a tiny, not singular, component
        components.append(stats.multivariate_t(loc=mean, shape=cov, df=PROPOSAL_DF, allow_singular=False))
    proposal = np.concatenate([comp.rvs(size=n_per_chain, random_state=rng).reshape(n_per_chain, d) for comp in components])
    log_q_each = np.column_stack([comp.logpdf(proposal) for comp in components]) - np.log(chains)  # (M, chains)
    log_q = special.logsumexp(log_q_each, axis=1)
    log_w = log_density(proposal) - log_q
    smoothed, k = az.psislw(log_w)
    responsibility = np.exp(log_q_each - log_q[:, None])
    mass = np.exp(smoothed) @ responsibility
    return mass / mass.sum(), float(k)
