"""Tier 1: strict parsing of model specs (every SpecError names file and key)."""

import jax
import numpy as np
import pytest
from scipy.special import digamma, polygamma

from bayes_scaling.errors import SpecError
from bayes_scaling.model import prior_distribution
from bayes_scaling.spec import load_spec, shipped_specs, spec_from_dict

HIER = load_spec("chinchilla_hierarchical")


def test_shipped_specs_load():
    assert {"chinchilla_hierarchical", "chinchilla_independent"} <= set(shipped_specs())
    indep = load_spec("chinchilla_independent")
    assert HIER.pooling == "partial" and indep.pooling == "none"
    assert HIER.likelihood == "normal" and HIER.likelihood_df is None and HIER.marginal_run_offsets
    assert HIER.correlation_prior.dist == "lkj"
    assert HIER.data["min_tokens"] == 1e10


def test_dict_round_trip():
    assert spec_from_dict(HIER.to_dict(), HIER.source) == HIER


def write(tmp_path, text):
    path = tmp_path / "my_model.toml"
    path.write_text(text)
    return path


def mutated(**changes):
    """The hierarchical spec's TOML with one table value replaced, as a dict."""
    raw = HIER.to_dict()
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        table = raw
        for p in parents:
            table = table[p]
        table[key] = value
    return raw


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"model.colour": "blue"}, "model.colour"),
        ({"model.pooling": "some"}, "model.pooling"),
        ({"priors.mean.alpha": {"dist": "cauchy_ish", "loc": 0, "scale": 1}}, "priors.mean.alpha.dist"),
        ({"priors.mean.alpha": {"dist": "normal", "loc": 0}}, "priors.mean.alpha.scale"),
        ({"priors.mean.alpha": {"dist": "normal", "loc": 0, "scale": -1}}, "priors.mean.alpha.scale"),
        ({"priors.mean.alpha": {"dist": "normal", "loc": "zero", "scale": 1}}, "priors.mean.alpha.loc"),
        ({"priors.mean.alpha": {"dist": "normal", "loc": 0, "scale": 1, "shape": 2}}, "priors.mean.alpha.shape"),
        ({"priors.mean.alpha": {"dist": "half_normal", "scale": 1}}, "priors.mean.alpha.dist"),
        ({"priors.mean.alpha": {"dist": "student_t", "df": 3, "loc": 0, "scale": 1}}, "priors.mean"),
        ({"priors.correlation": {"dist": "normal", "loc": 0, "scale": 1}}, "priors.correlation.dist"),
        ({"likelihood.dist": "cauchy"}, "likelihood.dist"),
        ({"likelihood.dist": "student_t", "likelihood.df": -2.0}, "likelihood.df"),
        ({"likelihood.df": 4.0}, "likelihood.df"),  # df only goes with student_t
        ({"data.min_tokens": "10B"}, "data.min_tokens"),
        ({"data.thinning": 3}, "data.thinning"),
        ({"reference.params": 0.0}, "reference.params"),
        ({"priors.single_checkpoint_noise_scale": {"dist": "half_normal", "scale": 0.1}}, "priors.single_checkpoint_noise_scale"),
    ],
)
def test_bad_spec_names_file_and_key(changes, key):
    with pytest.raises(SpecError) as info:
        spec_from_dict(mutated(**changes), "my_model.toml")
    message = str(info.value)
    assert message.startswith("my_model.toml:"), message
    assert f"'{key}" in message, message


def test_missing_required_table(tmp_path):
    path = write(tmp_path, '[model]\nname = "x"\npooling = "partial"\n')
    with pytest.raises(SpecError, match=r"my_model.toml: key 'priors' is required"):
        load_spec(path)


def test_invalid_toml_and_unknown_name(tmp_path):
    with pytest.raises(SpecError, match="invalid TOML"):
        load_spec(write(tmp_path, "[model\nname ="))
    with pytest.raises(SpecError, match="unknown spec 'nope'"):
        load_spec("nope")
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "absent.toml")


def test_user_copy_of_shipped_file_loads(tmp_path):
    from importlib import resources

    text = (resources.files("bayes_scaling.models") / "chinchilla_hierarchical.toml").read_text()
    text = text.replace('dist = "normal"   #', 'dist = "student_t"\ndf = 6.0   #')
    spec = load_spec(write(tmp_path, text))
    assert spec.likelihood_df == 6.0 and not spec.marginal_run_offsets and spec.source.endswith("my_model.toml")


def test_single_checkpoint_noise_prior_is_the_sum_of_noise_and_run_spread():
    # families with one checkpoint per run have no run offsets; their noise prior must be
    # the log-normal of sqrt(noise^2 + run^2) under the spec's own two priors (tolerance
    # 0.05 on the log mean and log sd; 200,000 draws give about 0.002 of Monte Carlo error)
    key_noise, key_run = jax.random.split(jax.random.PRNGKey(0))
    noise = np.asarray(prior_distribution(HIER.noise_scale_prior).sample(key_noise, (200_000,)))
    run = np.asarray(prior_distribution(HIER.run_scale_prior).sample(key_run, (200_000,)))
    log_total = 0.5 * np.log(noise**2 + run**2)
    single = HIER.single_checkpoint_noise_prior
    assert single.dist == "lognormal"
    assert abs(log_total.mean() - single.kwargs()["loc"]) < 0.05
    assert abs(log_total.std() - single.kwargs()["scale"]) < 0.05


def test_family_scale_priors_keep_the_log_moments_of_the_former_gammas():
    # the spreads' log-normals replaced Gamma(2, rate) priors (rate 4 for the levels, 10 for
    # the exponents) with the same mean and sd of log(tau), the coordinate NUTS samples
    # (models/chinchilla_hierarchical.toml); tolerance 0.01, the TOML's rounding
    for prior, rate in zip(HIER.family_scale_priors, (4.0, 4.0, 4.0, 10.0, 10.0)):
        assert prior.dist == "lognormal"
        assert abs(prior.kwargs()["loc"] - (digamma(2.0) - np.log(rate))) < 0.01
        assert abs(prior.kwargs()["scale"] - np.sqrt(polygamma(1, 2.0))) < 0.01


def test_single_checkpoint_noise_defaults_to_noise_scale():
    raw = HIER.to_dict()
    del raw["priors"]["single_checkpoint_noise_scale"]
    spec = spec_from_dict(raw)
    assert spec.single_checkpoint_noise_prior == spec.noise_scale_prior
