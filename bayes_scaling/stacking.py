"""Stacking of chains that settle in different modes (Yao, Vehtari and Gelman 2022,
"Stacking for non-mixing Bayesian computations: the curse and blessing of multimodal
posteriors").

When the chains of one fit disagree (max r-hat well above 1: two or more modes), pooling
their draws with equal weights weighs each mode by how many chains happened to fall in it.
Stacking weighs each chain by how well it predicts left-out data instead: per chain, the
PSIS-LOO predictive density of every unit, then the chain weights that maximise the sum,
over units, of the log of the weighted mixture of those densities.

For a cell fit the units are its training runs, each with its offset integrated out
(:func:`cell_run_log_lik`): a run's checkpoints share that offset, so leaving out one
checkpoint of a densely logged run would leave its neighbours to predict it.
"""

from __future__ import annotations

import dataclasses

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp

from .cellfit import CellPosterior, run_offset_sd
from .laws import chinchilla_log_loss
from .model import run_marginal_log_lik

__all__ = ["cell_run_log_lik", "loo_log_densities", "stacking_weights", "stack_chains"]


#: Nodes of the Gauss-Hermite rule that integrates a run's offset out of a Student-t likelihood.
HERMITE_NODES = 24


def cell_run_log_lik(post: CellPosterior, x_n, x_d, run_idx, log_loss, weight=None) -> np.ndarray:
    """Log density of each training run under each draw of a cell posterior, (S, runs),
    with the run's offset ``u ~ Normal(0, run sd)`` integrated out.

    The run sd is the cell model's (:func:`bayes_scaling.cellfit.run_offset_sd`: widened with
    the run's distance below the largest size when the fit has a size term); ``weight`` (per
    checkpoint) as in the fit. Normal likelihood (``nu`` inf): exact
    (:func:`bayes_scaling.model.run_marginal_log_lik`). Student-t: adaptive Gauss-Hermite
    quadrature over u, centred at the mode of the run's offset and 1.5 times as wide as
    its curvature there says (the t's heavier tails). Checkpoints of one run that disagree
    by tens of noise sds make that integrand multimodal; the rule then sees the main mode.
    """
    x_n, x_d, log_loss = (jnp.asarray(v, float) for v in (x_n, x_d, log_loss))
    run_idx = jnp.asarray(run_idx, int)
    n_runs = int(run_idx.max()) + 1
    weight = jnp.ones_like(log_loss) if weight is None else jnp.asarray(weight, float)
    mask = jnp.ones(len(log_loss), bool)
    size_term, nu = post.sigma_size is not None, float(post.nu)
    nodes, node_weights = np.polynomial.hermite.hermgauss(HERMITE_NODES)

    def one_draw(theta, sigma_run, sigma_obs, sigma_size):
        resid = log_loss - chinchilla_log_loss(x_n, x_d, *theta)
        run_sd = run_offset_sd(sigma_run, sigma_size if size_term else None, x_n, run_idx, mask, n_runs)
        sigma = jnp.full(n_runs, sigma_obs)
        if not np.isfinite(nu):
            return run_marginal_log_lik(resid, run_idx, sigma, run_sd, weight)
        centre, precision = _offset_mode(resid, run_idx, weight, sigma_obs, run_sd, nu)
        width = 1.5 / jnp.sqrt(precision)
        u = centre[:, None] + jnp.sqrt(2.0) * width[:, None] * nodes[None, :]  # (runs, nodes)
        t = jax.scipy.stats.t.logpdf(resid[:, None], nu, u[run_idx], sigma_obs)  # (points, nodes)
        lik = jax.ops.segment_sum(weight[:, None] * t, run_idx, n_runs)
        prior = jax.scipy.stats.norm.logpdf(u, 0.0, run_sd[:, None])
        log_terms = lik + prior + nodes[None, :] ** 2 + jnp.log(node_weights)[None, :]
        return jax.scipy.special.logsumexp(log_terms, axis=1) + jnp.log(jnp.sqrt(2.0) * width)

    sigma_size = post.sigma_size if size_term else np.zeros(len(post.theta))
    draws = (jnp.asarray(v) for v in (post.theta, post.sigma_run, post.sigma_obs, sigma_size))
    return np.asarray(jax.vmap(one_draw)(*draws))


def _offset_mode(resid, run_idx, weight, sigma_obs, run_sd, nu: float, iterations: int = 50):
    """Mode of each run's offset under a Student-t likelihood and its Normal prior, with the
    precision there: iteratively re-weighted least squares (the EM of a t; each checkpoint's
    weight ``(nu + 1) / (nu + (e - u)^2 / s^2)``), from the Normal likelihood's mode."""
    n_runs = run_sd.shape[0]

    def step(u, _):
        z2 = (resid - u[run_idx]) ** 2 / sigma_obs**2
        robust = weight * (nu + 1.0) / (nu + z2)
        precision = jax.ops.segment_sum(robust, run_idx, n_runs) / sigma_obs**2 + 1.0 / run_sd**2
        return jax.ops.segment_sum(robust * resid, run_idx, n_runs) / sigma_obs**2 / precision, precision

    start = jax.ops.segment_sum(weight * resid, run_idx, n_runs) / (jax.ops.segment_sum(weight, run_idx, n_runs) + sigma_obs**2 / run_sd**2)
    mode, precisions = jax.lax.scan(step, start, None, length=iterations)
    return mode, precisions[-1]


def loo_log_densities(log_lik: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PSIS-LOO log predictive density of every unit under every chain.

    ``log_lik`` (chains, draws, units) -> (chains, units) densities and the Pareto k of
    each (above 0.7 the importance weights of that unit are unreliable).
    """
    per_unit = np.moveaxis(np.asarray(log_lik, float), 1, -1)  # (chains, units, draws)
    log_weights, pareto_k = az.psislw(-per_unit)
    return logsumexp(per_unit + log_weights, axis=-1), np.asarray(pareto_k)


def stacking_weights(lpd: np.ndarray, max_iter: int = 10_000, tol: float = 1e-12) -> np.ndarray:
    """Chain weights on the simplex maximising ``sum_i log sum_c w_c exp(lpd[c, i])``.

    EM for the weights of a mixture whose components are fixed: every step raises the
    objective, and it converges to the maximum (the objective is concave in ``w``).
    """
    lpd = np.asarray(lpd, float)
    density = np.exp(lpd - lpd.max(axis=0))  # per-unit rescaling leaves the maximiser unchanged
    weights = np.full(len(lpd), 1.0 / len(lpd))
    for _ in range(max_iter):
        updated = weights * (density / (weights @ density)).mean(axis=1)
        if np.max(np.abs(updated - weights)) < tol:
            return updated
        weights = updated
    return weights


def stack_chains(post: CellPosterior, weights: np.ndarray) -> CellPosterior:
    """The posterior's draws re-allotted to its chains by ``weights``: chain c supplies
    ``round(w_c S)`` of the S draws (its own, evenly spaced; repeated if it must supply
    more than it has). The result has one chain (the modes are mixed) and keeps ``max_rhat``.
    """
    weights = np.asarray(weights, float)
    if len(weights) != post.chains or np.any(weights < 0) or not np.isclose(weights.sum(), 1.0):
        raise ValueError(f"need {post.chains} non-negative weights summing to 1, got {weights}")
    total = len(post.theta)
    per_chain = total // post.chains
    counts = np.floor(weights * total).astype(int)
    counts[np.argsort(weights * total - counts)[::-1][: total - counts.sum()]] += 1  # largest remainders
    index = np.concatenate([c * per_chain + np.arange(n) * per_chain // n for c, n in enumerate(counts) if n])

    def take(values):
        return None if values is None else np.asarray(values)[index]

    return dataclasses.replace(
        post, theta=post.theta[index], sigma_run=post.sigma_run[index], sigma_obs=post.sigma_obs[index],
        sigma_size=take(post.sigma_size), run_offset=take(post.run_offset), diverging=take(post.diverging), chains=1,
    )
