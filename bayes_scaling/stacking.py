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

Not part of ``fit`` or the back-test: on the back-test's unmixed cells
(``benchmarks/mixing_treatments.py``) the weights fell on a single chain in most cells and
the target's intervals lost coverage.
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
from .plan import run_log_likelihood

__all__ = ["cell_run_log_lik", "loo_log_densities", "stacking_weights", "stack_chains"]


def cell_run_log_lik(post: CellPosterior, x_n, x_d, run_idx, log_loss, weight=None) -> np.ndarray:
    """Log density of each training run under each draw of a cell posterior, (S, runs),
    with the run's offset integrated out (:func:`bayes_scaling.plan.run_log_likelihood`:
    closed form under Normal noise, quadrature under Student-t).

    The offset's sd is the cell model's (:func:`bayes_scaling.cellfit.run_offset_sd`: widened
    with the run's distance below the largest size when the fit has a size term); ``weight``
    (per checkpoint) as in the fit.
    """
    x_n, x_d, log_loss = (np.asarray(v, float) for v in (x_n, x_d, log_loss))
    run_idx = np.asarray(run_idx, int)
    n_runs = int(run_idx.max()) + 1
    law = np.asarray(chinchilla_log_loss(x_n[None, :], x_d[None, :], *[post.theta[:, i : i + 1] for i in range(post.theta.shape[1])]))
    resid = log_loss[None, :] - law  # (S, points)
    mask = jnp.ones(len(log_loss), bool)
    size_term = post.sigma_size is not None

    def offset_sd(sigma_run, sigma_size):
        return run_offset_sd(sigma_run, sigma_size if size_term else None, jnp.asarray(x_n), jnp.asarray(run_idx), mask, n_runs)

    sigma_size = post.sigma_size if size_term else np.zeros(len(post.theta))
    run_sd = np.asarray(jax.vmap(offset_sd)(jnp.asarray(post.sigma_run), jnp.asarray(sigma_size)))  # (S, runs)
    out = np.empty((len(post.theta), n_runs))
    for r in range(n_runs):
        points = run_idx == r
        out[:, r] = run_log_likelihood(resid[:, points], run_sd[:, r], post.sigma_obs, post.nu, None if weight is None else np.asarray(weight)[points])
    return out


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
