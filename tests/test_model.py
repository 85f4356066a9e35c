"""Tier 2: model structure via numpyro handlers (no sampler)."""

import jax
import numpy as np
import pytest
from numpyro import handlers
from numpyro.infer import Predictive

from bayes_scaling.data import Filters, prepare
from bayes_scaling.model import ModelInputs, build_model
from bayes_scaling.spec import load_spec


@pytest.fixture(scope="module")
def inputs(synthetic_runs):
    runs, _ = synthetic_runs
    return ModelInputs.from_data(prepare(runs, Filters(min_tokens=1e9)))


def trace(spec_name, inputs, **overrides):
    spec = load_spec(spec_name)
    model = handlers.seed(build_model(spec), jax.random.PRNGKey(0))
    return handlers.trace(model).get_trace(**(inputs.as_kwargs() | overrides))


def test_hierarchical_sites_and_shapes(inputs):
    tr = trace("chinchilla_hierarchical", inputs)
    n_fam, n_run, n_obs = len(inputs.family_sizes), len(inputs.run_family), len(inputs.x_n)
    assert tr["mu"]["value"].shape == (5,)
    assert tr["tau"]["value"].shape == (5,)
    assert tr["corr_cholesky"]["value"].shape == (5, 5)
    assert tr["theta"]["value"].shape == (n_fam, 5)
    assert tr["run_offset"]["value"].shape == (n_run,)
    assert tr["sigma_obs"]["value"].shape == (n_fam,)
    assert tr["log_loss"]["is_observed"] and tr["log_loss"]["value"].shape == (n_obs,)
    assert tr["log_loss"]["fn"].__class__.__name__ == "StudentT"
    # named deterministic views of theta
    np.testing.assert_allclose(tr["alpha"]["value"], tr["theta"]["value"][:, 3])


def test_independent_has_no_population(inputs):
    tr = trace("chinchilla_independent", inputs)
    assert "mu" not in tr and "tau" not in tr
    assert tr["sigma_run"]["value"].shape == (len(inputs.family_sizes),)


def test_prior_predictive_is_finite_and_plausible(inputs):
    model = build_model(load_spec("chinchilla_hierarchical"))
    kwargs = inputs.as_kwargs() | {"log_loss": None}
    draws = Predictive(model, num_samples=200)(jax.random.PRNGKey(1), **kwargs)["log_loss"]
    assert draws.shape == (200, len(inputs.x_n))
    loss = np.exp(np.asarray(draws))
    assert np.isfinite(loss).all()
    # the prior puts most mass on losses between 0.5 and 50 nats
    assert 0.5 < np.median(loss) < 50
