"""Stacking of chains (bayes_scaling.stacking): the weights, the re-allotted draws and the run densities."""

import arviz as az
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from bayes_scaling.cellfit import CellPosterior
from bayes_scaling.laws import chinchilla_log_loss
from bayes_scaling.stacking import cell_run_log_lik, loo_log_densities, stack_chains, stacking_weights


def objective(weights, lpd):
    return float(np.sum(np.log(weights @ np.exp(lpd))))


def test_stacking_weights_maximise_the_mixture_score():
    # three chains, 40 units: the EM weights must beat 2,000 random points of the simplex
    # and the equal weights (seed 0); a chain that predicts every unit worse gets ~0
    rng = np.random.default_rng(0)
    lpd = rng.normal(-1.0, 0.5, size=(3, 40))
    lpd[2] -= 3.0
    weights = stacking_weights(lpd)
    assert weights.sum() == pytest.approx(1.0) and np.all(weights >= 0)
    assert weights[2] < 1e-3
    best = objective(weights, lpd)
    others = rng.dirichlet(np.ones(3), size=2000)
    assert best >= max(objective(w, lpd) for w in others) - 1e-9
    assert best > objective(np.full(3, 1 / 3), lpd)
    # identical chains keep equal weights
    np.testing.assert_allclose(stacking_weights(np.repeat(lpd[:1], 2, axis=0)), [0.5, 0.5], atol=1e-9)


def test_loo_log_densities_match_arviz_loo():
    # one chain of a Normal mean posterior: the summed PSIS-LOO densities are arviz's elpd_loo
    rng = np.random.default_rng(1)
    y = rng.normal(0.3, 1.0, size=25)
    mu = rng.normal(y.mean(), 1 / np.sqrt(len(y)), size=(2, 1000))
    log_lik = -0.5 * np.log(2 * np.pi) - 0.5 * (y[None, None, :] - mu[..., None]) ** 2
    lpd, pareto_k = loo_log_densities(log_lik)
    assert lpd.shape == (2, 25) and pareto_k.shape == (2, 25) and np.all(pareto_k < 0.7)
    idata = az.from_dict(posterior={"mu": mu[:1]}, log_likelihood={"y": log_lik[:1]}, observed_data={"y": y})
    assert lpd[0].sum() == pytest.approx(float(az.loo(idata).elpd_loo), abs=1e-6)


def posterior(chains=2, draws=50, seed=0, sigma_size=None):
    rng = np.random.default_rng(seed)
    n = chains * draws
    theta = np.column_stack([rng.normal(0.5, 0.01, n), rng.normal(-1, 0.01, n), rng.normal(-1.7, 0.01, n), np.full(n, 0.3), np.full(n, 0.3)])
    return CellPosterior(theta=theta, sigma_run=rng.uniform(0.01, 0.03, n), sigma_obs=rng.uniform(0.005, 0.01, n), nu=float("inf"),
                         divergences=0, max_rhat=1.3, chains=chains, sigma_size=sigma_size, diverging=np.zeros(n, bool))


def test_stack_chains_allots_draws_by_weight():
    post = posterior(chains=4, draws=50)
    chain_of = np.repeat(np.arange(4), 50)
    post = CellPosterior(**{**post.__dict__, "sigma_run": chain_of.astype(float)})  # tag each draw with its chain
    stacked = stack_chains(post, np.array([0.7, 0.0, 0.3, 0.0]))
    assert stacked.chains == 1 and len(stacked.theta) == 200 and stacked.max_rhat == 1.3
    np.testing.assert_array_equal(np.bincount(stacked.sigma_run.astype(int), minlength=4), [140, 0, 60, 0])
    # more than a chain has: its draws repeat, all of them used
    all_first = stack_chains(post, np.array([1.0, 0.0, 0.0, 0.0]))
    assert set(all_first.sigma_run) == {0.0} and len(np.unique(all_first.theta[:, 0])) == 50
    with pytest.raises(ValueError, match="4 non-negative weights"):
        stack_chains(post, np.array([0.5, 0.5]))


def test_cell_run_log_lik_is_the_marginal_normal_density():
    # per run: Normal(mean, s^2 I + t^2 11^T), t widened by the size term below the largest size
    post = posterior(chains=1, draws=3, sigma_size=np.array([0.02, 0.05, 0.1]))
    x_n = np.array([-1.0, -1.0, -1.0, 0.5, 0.5])
    x_d = np.array([-2.0, -1.5, -1.0, -2.0, -1.0])
    run_idx = np.array([0, 0, 0, 1, 1])
    log_loss = np.log([3.1, 2.9, 2.8, 2.6, 2.4])
    got = cell_run_log_lik(post, x_n, x_d, run_idx, log_loss)
    assert got.shape == (3, 2)
    for s in range(3):
        mean = np.asarray(chinchilla_log_loss(x_n, x_d, *post.theta[s]))
        for r in range(2):
            pts = run_idx == r
            t = np.hypot(post.sigma_run[s], post.sigma_size[s] * (0.5 - x_n[pts][0]))
            cov = post.sigma_obs[s] ** 2 * np.eye(pts.sum()) + t**2
            assert got[s, r] == pytest.approx(multivariate_normal(mean[pts], cov).logpdf(log_loss[pts]), rel=1e-4)


def test_cell_run_log_lik_student_t_matches_numerical_integration():
    # Student-t likelihood (nu 4), weights below 1: the Gauss-Hermite marginal of each run
    # against a 2-million-point grid over the offset, to 2e-3 in log density. Run 0 has a
    # checkpoint 6 noise sds off the others, run 1 a noise 25x below its offset sd (a sharp
    # peak away from 0). (Checkpoints of one run that disagree by tens of noise sds make the
    # integrand multimodal; the rule is not meant for that: see cell_run_log_lik.)
    from scipy.special import logsumexp
    from scipy.stats import norm, t

    base = posterior(chains=1, draws=2)
    post = CellPosterior(**{**base.__dict__, "nu": 4.0, "sigma_obs": np.array([0.01, 0.002]), "sigma_run": np.array([0.03, 0.05])})
    x_n = np.array([-1.0, -1.0, -1.0, 0.5, 0.5, 0.5])
    x_d = np.array([-2.0, -1.5, -1.0, -2.0, -1.5, -1.0])
    run_idx = np.array([0, 0, 0, 1, 1, 1])
    offsets = np.array([0.02, 0.025, 0.08, 0.1, 0.101, 0.099])
    log_loss = np.asarray(chinchilla_log_loss(x_n, x_d, *post.theta[0])) + offsets
    weight = np.array([1.0, 0.8, 0.8, 1.0, 0.5, 0.5])
    got = cell_run_log_lik(post, x_n, x_d, run_idx, log_loss, weight)
    grid = np.linspace(-1, 1, 2_000_001)
    for s in range(2):
        resid = log_loss - np.asarray(chinchilla_log_loss(x_n, x_d, *post.theta[s]))
        for r in range(2):
            pts = run_idx == r
            log_f = sum(w * t.logpdf(e, 4.0, grid, post.sigma_obs[s]) for e, w in zip(resid[pts], weight[pts]))
            log_f = log_f + norm.logpdf(grid, 0, post.sigma_run[s])
            assert got[s, r] == pytest.approx(logsumexp(log_f) + np.log(grid[1] - grid[0]), abs=2e-3)
