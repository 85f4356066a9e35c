"""Tier 2: model structure via numpyro handlers (no sampler)."""

import jax
import numpy as np
import pytest
from numpyro import handlers
from numpyro.infer import Predictive

from bayes_scaling.data import Filters, prepare
from bayes_scaling.model import ModelInputs, RunMarginalNormal, build_model, draw_run_offsets, run_marginal_log_lik
from bayes_scaling.spec import load_spec, spec_from_dict


@pytest.fixture(scope="module")
def inputs(synthetic_runs):
    runs, _ = synthetic_runs
    return ModelInputs.from_data(prepare(runs, Filters(min_tokens=1e9)))


def trace(spec_name, inputs, **overrides):
    spec = load_spec(spec_name) if isinstance(spec_name, str) else spec_name
    model = handlers.seed(build_model(spec), jax.random.PRNGKey(0))
    return handlers.trace(model).get_trace(**(inputs.as_kwargs() | overrides))


def test_hierarchical_sites_and_shapes(inputs):
    tr = trace("chinchilla_hierarchical", inputs)
    n_fam, n_obs = len(inputs.family_x_n), len(inputs.x_n)
    assert tr["mu"]["value"].shape == (5,)
    assert tr["tau"]["value"].shape == (5,)
    assert tr["corr_cholesky"]["value"].shape == (5, 5)
    assert tr["theta"]["value"].shape == (n_fam, 5)
    assert tr["sigma_run"]["value"].shape == (n_fam,)
    assert tr["sigma_obs"]["value"].shape == (n_fam,)
    assert tr["log_loss"]["is_observed"] and tr["log_loss"]["value"].shape == (n_obs,)
    # Normal likelihood: run offsets are integrated out, not sampled
    assert isinstance(tr["log_loss"]["fn"], RunMarginalNormal)
    assert not any(name.startswith("run_") for name in tr)
    # named deterministic views of theta
    np.testing.assert_allclose(tr["alpha"]["value"], tr["theta"]["value"][:, 3])


def test_independent_has_no_population(inputs):
    tr = trace("chinchilla_independent", inputs)
    assert "mu" not in tr and "tau" not in tr
    assert tr["sigma_run"]["value"].shape == (len(inputs.family_x_n),)


def test_run_scale_is_zero_where_every_run_has_one_checkpoint(inputs):
    # keep only the last checkpoint of each run of family 0: its runs can no longer tell
    # a run offset from noise, so it gets no run scale; the other families keep theirs
    last = np.r_[inputs.run_idx[1:] != inputs.run_idx[:-1], True]
    keep = (inputs.family_idx != 0) | last
    cut = {k: v[keep] for k, v in inputs.as_kwargs().items() if k in ("x_n", "x_d", "family_idx", "run_idx", "log_loss")}
    assert (np.bincount(cut["run_idx"])[inputs.run_family == 0] == 1).all()
    tr = trace("chinchilla_hierarchical", inputs, **cut)
    sigma_run = np.asarray(tr["sigma_run"]["value"])
    assert sigma_run[0] == 0.0 and (sigma_run[1:] > 0).all()
    assert tr["sigma_run_fitted"]["value"].shape == (len(inputs.family_x_n) - 1,)
    # that family's noise holds the run spread too, so it has the single-checkpoint prior
    spec = load_spec("chinchilla_hierarchical")
    noise = tr["sigma_obs"]["fn"]
    single, plain = spec.single_checkpoint_noise_prior.kwargs(), spec.noise_scale_prior.kwargs()
    assert single != plain
    np.testing.assert_allclose(noise.loc, [single["loc"]] + [plain["loc"]] * (len(noise.loc) - 1))
    np.testing.assert_allclose(noise.scale, [single["scale"]] + [plain["scale"]] * (len(noise.scale) - 1))


def test_prior_predictive_is_finite_and_plausible(inputs):
    model = build_model(load_spec("chinchilla_hierarchical"))
    kwargs = inputs.as_kwargs() | {"log_loss": None}
    draws = Predictive(model, num_samples=200)(jax.random.PRNGKey(1), **kwargs)["log_loss"]
    assert draws.shape == (200, len(inputs.x_n))
    loss = np.exp(np.asarray(draws))
    assert np.isfinite(loss).all()
    # the prior puts most mass on losses between 0.5 and 50 nats
    assert 0.5 < np.median(loss) < 50


def test_student_t_samples_run_offsets(inputs):
    raw = load_spec("chinchilla_hierarchical").to_dict()
    raw["likelihood"] = {"dist": "student_t", "df": 4.0}
    tr = trace(spec_from_dict(raw), inputs)
    assert tr["run_offset"]["value"].shape == (len(inputs.run_family),)
    assert tr["log_loss"]["fn"].__class__.__name__ == "StudentT"


def _runs_example():
    rng = np.random.default_rng(0)
    run_idx = np.array([0, 0, 0, 1, 2, 2, 2, 2, 1])  # unsorted on purpose
    return rng.normal(0, 0.05, run_idx.size), run_idx, np.array([0.02, 0.03, 0.05]), np.array([0.04, 0.01, 0.10])


def test_marginal_log_lik_equals_dense_gaussian():
    """Sherman-Morrison closed form vs the dense covariance s^2 I + t^2 11^T, per run (rtol 1e-5)."""
    from scipy.stats import multivariate_normal

    resid, run_idx, sigma_obs, sigma_run = _runs_example()
    got = np.asarray(run_marginal_log_lik(resid, run_idx, sigma_obs, sigma_run))
    for r in range(3):
        e = resid[run_idx == r]
        cov = sigma_obs[r] ** 2 * np.eye(e.size) + sigma_run[r] ** 2
        np.testing.assert_allclose(got[r], multivariate_normal(np.zeros(e.size), cov).logpdf(e), rtol=1e-5)
    dist = RunMarginalNormal(np.zeros_like(resid), run_idx, sigma_obs, sigma_run)
    np.testing.assert_allclose(dist.log_prob(resid), got.sum(), rtol=1e-5)


def test_marginal_log_lik_ignores_padding():
    """Zero-weight (padded) checkpoints and a run without checkpoints change nothing (rtol 1e-6)."""
    resid, run_idx, sigma_obs, sigma_run = _runs_example()
    expected = np.asarray(run_marginal_log_lik(resid, run_idx, sigma_obs, sigma_run))
    padded_resid = np.concatenate([resid, [0.3, -0.2]])  # padding, assigned to run 0
    padded_idx = np.concatenate([run_idx, [0, 0]])
    weight = np.concatenate([np.ones(resid.size), np.zeros(2)])
    scales = np.append(sigma_obs, 0.02), np.append(sigma_run, 0.04)  # a fourth, empty run
    got = np.asarray(run_marginal_log_lik(padded_resid, padded_idx, *scales, weight=weight))
    np.testing.assert_allclose(got[:3], expected, rtol=1e-6)
    assert got[3] == 0.0


def test_run_offset_draws_match_gaussian_conditioning():
    """Mean and sd of 20,000 offset draws vs dense Gaussian conditioning (3 Monte Carlo se)."""
    resid, run_idx, sigma_obs, sigma_run = _runs_example()
    keys = jax.random.split(jax.random.PRNGKey(0), 20_000)
    draws = np.asarray(jax.vmap(lambda k: draw_run_offsets(k, resid, run_idx, sigma_obs, sigma_run))(keys))
    for r in range(3):
        e = resid[run_idx == r]
        cov = sigma_obs[r] ** 2 * np.eye(e.size) + sigma_run[r] ** 2
        gain = sigma_run[r] ** 2 * np.linalg.solve(cov, np.ones(e.size))
        mean, sd = gain @ e, np.sqrt(sigma_run[r] ** 2 - sigma_run[r] ** 2 * gain.sum())
        assert abs(draws[:, r].mean() - mean) < 3 * sd / np.sqrt(len(keys))
        assert abs(draws[:, r].std() / sd - 1) < 0.03
