"""Simulation-based calibration (SBC) of the single-family cell model.

Talts, Betancourt, Simpson, Vehtari, Gelman (2018): draw parameters from the prior,
simulate data on a design, fit them, and rank each true value among the posterior's
draws. If the simulator and the fit agree (model, sampler, weights), every rank is
uniform on ``0 .. L``. A sampler that misses a mode, an adaptation that is too short or a
prior that the fit does not use shows as ranks piled at the edges (too narrow), in the
middle (too wide) or on one side (biased).

Ranks are checked with the simultaneous ECDF band of Säilynoja, Bürkner and Vehtari (2022,
"Graphical test for discrete uniformity and its applications in goodness-of-fit
evaluation and multiple sample comparison"): the pointwise binomial band whose level is
chosen by simulation so that a uniform ECDF stays inside it *everywhere* with the stated
probability.

Simulation draws from the same compiled model the fits use
(:func:`bayes_scaling.cellfit._model`, through ``numpyro.infer.Predictive``), with weight
1 on every checkpoint; the fits then go the back-test's way (effective weights from the
data, :func:`bayes_scaling.cellfit.effective_weights`; nearly 1 on simulated independent
noise) through the batched program. The held-out target is a new run at a larger size,
simulated and predicted by :meth:`bayes_scaling.cellfit.CellPosterior.predict_new_run`
(one definition of a new run's offset and noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np
from numpyro.infer import Predictive
from scipy.stats import binom

from .batched import CellProblem, _args, fit_cells_batched
from .cellfit import SAMPLER_DEFAULTS, CellPosterior, CellPrior, FamilyArrays, _model
from .laws import PARAM_NAMES, centre

__all__ = ["QUANTITIES", "Design", "Simulation", "SBCResult", "simulate", "run_sbc", "ecdf_band", "inside_band"]

#: What is ranked: the law's parameters, the three scales, the target's log loss at its last checkpoint.
QUANTITIES = (*PARAM_NAMES, "sigma_run", "sigma_obs", "sigma_size", "target")


@dataclass(frozen=True)
class Design:
    """Where a cell has checkpoints (centred covariates) and where its target run sits."""

    name: str
    x_n: np.ndarray
    x_d: np.ndarray
    run_idx: np.ndarray
    target_x_n: np.ndarray
    target_x_d: np.ndarray

    @classmethod
    def of_cell(cls, cell) -> "Design":
        """The design of a back-test cell (:class:`bayes_scaling.backtest.CellData`): its
        training checkpoints, and its first target run as the held-out new run."""
        x_n, x_d = centre(cell.train_num_params, cell.train_tokens)
        target = cell.targets[0]
        t_n, t_d = centre(np.full(len(target.tokens), target.num_params), target.tokens)
        return cls(f"{cell.family} k={cell.k}", x_n, x_d, np.asarray(cell.train_run, int), t_n, t_d)


@dataclass(frozen=True)
class Simulation:
    """``n`` prior draws and the data each one generates on a design."""

    truth: dict  # quantity -> (n,) true values (target: log loss at the last target checkpoint)
    log_loss: np.ndarray  # (n, points) simulated training log losses


@dataclass(frozen=True)
class SBCResult:
    """Ranks of the true values among ``n_ranks`` posterior draws (0 .. n_ranks), per quantity."""

    design: str
    ranks: dict  # quantity -> (n,) int
    n_ranks: int
    max_rhat: np.ndarray  # (n,)
    divergences: np.ndarray  # (n,)


def _prior_posterior(prior: CellPrior, draw: dict, i: int, design: Design) -> CellPosterior:
    """Draw ``i`` of the prior as a one-draw posterior, to simulate its new run."""
    return CellPosterior(
        theta=np.asarray(draw["theta"][i : i + 1]),
        sigma_run=np.asarray(draw["sigma_run"][i : i + 1]),
        sigma_obs=np.asarray(draw["sigma_obs"][i : i + 1]),
        nu=float(prior.nu),
        divergences=0,
        max_rhat=float("nan"),
        sigma_size=np.asarray(draw["sigma_size"][i : i + 1]) if prior.size_term else None,
        size_anchor=float(np.max(design.x_n)),
    )


def simulate(prior: CellPrior, design: Design, n: int, seed: int = 0) -> Simulation:
    """``n`` draws of (theta, scales, training log losses, target log loss) from the prior."""
    points = len(design.x_n)
    problem = CellProblem(design.x_n, design.x_d, design.run_idx, np.zeros(points), prior)
    _, n_pad, r_pad = problem.bucket()
    args = _args(problem, n_pad, r_pad)[:-1]  # no observed loss
    draws = Predictive(_model(*prior.kind), num_samples=n)(jax.random.PRNGKey(seed), *args)
    draws = {k: np.asarray(v) for k, v in draws.items()}
    rng = np.random.default_rng(seed)
    target = [
        _prior_posterior(prior, draws, i, design).predict_new_run(design.target_x_n, design.target_x_d, seed=int(rng.integers(2**31)))[0, -1]
        for i in range(n)
    ]
    sigma_size = draws["sigma_size"] if prior.size_term else None
    truth = _quantities(draws["theta"], draws["sigma_run"], draws["sigma_obs"], sigma_size, np.log(np.asarray(target)))
    return Simulation(truth, draws["log_loss"][:, :points])


def _quantities(theta, sigma_run, sigma_obs, sigma_size, target) -> dict:
    """:data:`QUANTITIES` -> values (one per draw); no size term: sigma_size 0."""
    values = {name: theta[:, j] for j, name in enumerate(PARAM_NAMES)}
    values.update(sigma_run=sigma_run, sigma_obs=sigma_obs, target=target)
    values["sigma_size"] = sigma_size if sigma_size is not None else np.zeros(len(theta))
    return values


def _posterior_values(post: CellPosterior, design: Design, seed: int) -> dict:
    target = np.log(post.predict_new_run(design.target_x_n, design.target_x_d, seed=seed)[:, -1])
    return _quantities(post.theta, post.sigma_run, post.sigma_obs, post.sigma_size, target)


def run_sbc(prior: CellPrior, designs, n: int, *, seed: int = 0, n_ranks: int = 99, **sampler) -> list[SBCResult]:
    """For each design, simulate ``n`` data sets, fit each and rank the truth among
    ``n_ranks`` evenly thinned posterior draws.

    Fits take the back-test's way: effective weights from the data, the batched program, the
    sampler defaults (:data:`bayes_scaling.cellfit.SAMPLER_DEFAULTS`) unless ``sampler``
    overrides them. All designs' fits go to one :func:`~bayes_scaling.batched.fit_cells_batched`
    call, so designs in the same shape bucket share a compilation.
    """
    settings = {**SAMPLER_DEFAULTS, **sampler}
    sims, problems = [], []
    for d, design in enumerate(designs):
        sim = simulate(prior, design, n, seed=seed * 1_000 + d)
        sims.append(sim)
        for i in range(n):
            arrays = FamilyArrays.from_arrays(design.x_n, design.x_d, design.run_idx, sim.log_loss[i])
            fit_seed = (seed * 1_000 + d) * 100_003 + i
            problems.append(CellProblem(arrays.x_n, arrays.x_d, arrays.run_idx, arrays.log_loss, prior, seed=fit_seed, weight=arrays.weight))
    # one chunk per design: lanes of a chunk run in lockstep (each iteration costs its deepest
    # tree), and equal chunks in one shape bucket share a compilation
    posts = fit_cells_batched(problems, max_batch=n, **settings)
    results = []
    for d, (design, sim) in enumerate(zip(designs, sims)):
        mine = posts[d * n : (d + 1) * n]
        ranks = {q: np.zeros(n, int) for q in QUANTITIES}
        for i, post in enumerate(mine):
            values = _posterior_values(post, design, seed=problems[d * n + i].seed)
            keep = np.linspace(0, len(post.theta) - 1, n_ranks).round().astype(int)
            for q in QUANTITIES:
                ranks[q][i] = int(np.sum(values[q][keep] < sim.truth[q][i]))
        results.append(SBCResult(design.name, ranks, n_ranks, np.array([p.max_rhat for p in mine]), np.array([p.divergences for p in mine])))
    return results


def ecdf_band(n: int, n_ranks: int, prob: float = 0.95, *, n_sim: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simultaneous ``prob`` band for the ECDF of ``n`` ranks uniform on ``0 .. n_ranks``.

    Evaluated at ``z_i = i / (n_ranks + 1)``, ``i = 1 .. n_ranks``, where ``n F(z_i)`` (ranks
    below ``i``) is exactly Binomial(n, z_i). The pointwise level ``gamma`` is the
    ``1 - prob`` quantile, over ``n_sim`` simulated uniform samples, of the smallest
    two-sided binomial tail probability along the ECDF (Säilynoja et al. 2022).

    Returns
    -------
    z, lower, upper : ndarray (n_ranks,)
        ECDF bounds (fractions of ``n``).
    """
    z = np.arange(1, n_ranks + 1) / (n_ranks + 1)
    rng = np.random.default_rng(seed)
    sims = rng.integers(0, n_ranks + 1, size=(n_sim, n))
    counts = (sims[:, :, None] < np.arange(1, n_ranks + 1)).sum(axis=1)  # (n_sim, n_ranks)
    tails = 2 * np.minimum(binom.cdf(counts, n, z), binom.sf(counts - 1, n, z))
    gamma = float(np.quantile(tails.min(axis=1), 1 - prob))
    return z, binom.ppf(gamma / 2, n, z) / n, binom.ppf(1 - gamma / 2, n, z) / n


def inside_band(ranks: np.ndarray, band: tuple[np.ndarray, np.ndarray, np.ndarray]) -> bool:
    """Whether the ECDF of ``ranks`` stays within ``band`` (from :func:`ecdf_band`) everywhere."""
    z, lower, upper = band
    n_ranks = len(z)
    ecdf = (np.asarray(ranks)[:, None] < np.arange(1, n_ranks + 1)).mean(axis=0)
    return bool(np.all((ecdf >= lower - 1e-12) & (ecdf <= upper + 1e-12)))
