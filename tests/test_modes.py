"""Chain weights by mode mass (bayes_scaling.modes): known masses, and the cell model's density."""

import math

import numpy as np
import pytest
from scipy import stats

from bayes_scaling.cellfit import CellPosterior, CellPrior
from bayes_scaling.laws import chinchilla_log_loss
from bayes_scaling.modes import cell_log_density, mode_mass_weights, unconstrained_draws
from bayes_scaling.stacking import cell_run_log_lik


def test_mode_mass_weights_recover_the_masses_of_two_modes():
    # 80% of the mass in a wide mode, 20% in a narrow one 6 sds away; three chains found the
    # first, one the second: equal pooling would give 75 / 25, mode masses 80 / 20
    d = 3
    wide, narrow = stats.multivariate_normal(np.zeros(d), np.eye(d)), stats.multivariate_normal(np.full(d, 6.0), 0.25 * np.eye(d))

    def log_density(u):
        return np.logaddexp(np.log(0.8) + wide.logpdf(u), np.log(0.2) + narrow.logpdf(u))

    rng = np.random.default_rng(0)
    draws = np.stack([wide.rvs(1000, random_state=rng) for _ in range(3)] + [narrow.rvs(1000, random_state=rng)])
    weights, k = mode_mass_weights(draws, log_density, seed=1)
    assert k < 0.7
    np.testing.assert_allclose(weights, [0.8 / 3] * 3 + [0.2], atol=0.02)
    # the answer does not depend on the normalising constant of the density
    shifted, _ = mode_mass_weights(draws, lambda u: log_density(u) + 50.0, seed=1)
    np.testing.assert_allclose(shifted, weights, atol=1e-9)


@pytest.mark.parametrize("robust", [False, True])
def test_cell_log_density_is_the_cell_models_posterior(robust):
    # Differences of the log density between draws against the same posterior written out,
    # to 1e-4: theta's prior (level coordinates have unit Jacobian), the scales' priors with
    # the log Jacobian, the runs' marginal likelihood. Plain: Normal prior and noise,
    # half-normal scales, no size term (the likelihood a multivariate Normal per run). Robust:
    # Student-t prior (df 5) and noise (nu 4), log-normal scales, a size term (the likelihood
    # cell_run_log_lik's quadrature, checked in test_stacking).
    tril = np.diag([0.5, 0.6, 0.6, 0.1, 0.1])
    prior = CellPrior(
        loc=np.array([0.3, -0.5, -0.2, 0.3, 0.3]), scale_tril=tril, scale_kind="lognormal" if robust else "half_normal",
        run_scale=(np.log(0.05), 0.5) if robust else (0.05, 0.0), noise_scale=(np.log(0.02), 0.5) if robust else (0.02, 0.0),
        nu=4.0 if robust else math.inf, size_scale=(np.log(0.02), 0.7) if robust else None, df=5.0 if robust else math.inf,
    )
    x_n = np.array([-1.0, -1.0, -1.0, 0.5, 0.5, 0.5])
    x_d = np.array([-2.0, -1.5, -1.0, -2.0, -1.5, -1.0])
    run_idx = np.array([0, 0, 0, 1, 1, 1])
    log_loss = np.log([3.1, 2.9, 2.8, 2.6, 2.5, 2.4])
    weight = np.array([1.0, 0.8, 0.8, 1.0, 0.5, 0.5])
    rng = np.random.default_rng(3)
    n = 4
    post = CellPosterior(
        theta=prior.loc + rng.normal(0, 0.05, (n, 5)), sigma_run=rng.uniform(0.01, 0.1, n), sigma_obs=rng.uniform(0.01, 0.05, n),
        nu=prior.nu, divergences=0, max_rhat=1.0, sigma_size=rng.uniform(0.01, 0.05, n) if robust else None, size_anchor=0.5, chains=2,
    )
    got = cell_log_density(x_n, x_d, run_idx, log_loss, prior, weight)(unconstrained_draws(post, x_n, x_d).reshape(n, -1))
    if robust:
        theta_prior = stats.multivariate_t(prior.loc, tril @ tril.T, df=5.0).logpdf(post.theta)
        scales = [(post.sigma_run, stats.lognorm(0.5, scale=0.05)), (post.sigma_obs, stats.lognorm(0.5, scale=0.02)), (post.sigma_size, stats.lognorm(0.7, scale=0.02))]
        likelihood = cell_run_log_lik(post, x_n, x_d, run_idx, log_loss, weight).sum(axis=1)
    else:
        theta_prior = stats.multivariate_normal(prior.loc, tril @ tril.T).logpdf(post.theta)
        scales = [(post.sigma_run, stats.halfnorm(scale=0.05)), (post.sigma_obs, stats.halfnorm(scale=0.02))]
        likelihood = np.zeros(n)
        for s in range(n):  # per run: Normal(law, s^2 W^-1 + t^2 11^T), W the checkpoint weights
            mean = np.asarray(chinchilla_log_loss(x_n, x_d, *post.theta[s]))
            for r in range(2):
                pts = run_idx == r
                cov = np.diag(post.sigma_obs[s] ** 2 / weight[pts]) + post.sigma_run[s] ** 2
                # a weighted Normal density is the W-scaled log density: add back what the
                # normalising constants differ by
                full = stats.multivariate_normal(mean[pts], cov).logpdf(log_loss[pts])
                likelihood[s] += full - 0.5 * np.sum(np.log(weight[pts])) + 0.5 * np.sum(1 - weight[pts]) * np.log(2 * np.pi * post.sigma_obs[s] ** 2)
    expected = theta_prior + sum(d.logpdf(v) + np.log(v) for v, d in scales) + likelihood
    np.testing.assert_allclose(got - got[0], expected - expected[0], atol=1e-4)
