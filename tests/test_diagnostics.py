"""Diagnostics: verdicts, PPC, LOO and the diagnose report.

One NUTS fit of its own (test_good_fit_passes); everything else reuses the session
fixture ``small_fit`` or InferenceData built by hand.
"""

import warnings

import arviz as az
import matplotlib
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from bayes_scaling import datasets, diagnostics
from bayes_scaling.cli import main
from bayes_scaling.cli.diagnose import write_report
from bayes_scaling.convergence import Convergence, format_r_hat
from bayes_scaling.data import Filters
from bayes_scaling.errors import ConvergenceWarning, FitError
from bayes_scaling.inference import Fit, fit
from bayes_scaling.laws import PARAM_NAMES
from bayes_scaling.plots import diagnostics as dplots
from bayes_scaling.spec import load_spec, spec_from_dict

matplotlib.use("Agg")


def iid_idata(chains=4, draws=500, families=("a", "b", "c"), seed=0, diverging=0):
    """InferenceData of independent draws (a sampler that mixes perfectly), contract names."""
    rng = np.random.default_rng(seed)
    shape = (chains, draws)
    posterior = {
        "mu": rng.normal(size=shape + (5,)),
        "tau": np.abs(rng.normal(size=shape + (5,))),
        "sigma_run": np.abs(rng.normal(size=shape)),
        "theta": rng.normal(size=shape + (len(families), 5)),
        "sigma_obs": np.abs(rng.normal(size=shape + (len(families),))),
    }
    stats = {"diverging": np.zeros(shape, bool), "tree_depth": np.full(shape, 3), "energy": rng.normal(size=shape)}
    stats["diverging"].flat[:diverging] = True
    return az.from_dict(
        posterior=posterior,
        sample_stats=stats,
        coords={"param": list(PARAM_NAMES), "family": list(families)},
        dims={"mu": ["param"], "tau": ["param"], "theta": ["family", "param"], "sigma_obs": ["family"]},
    )


def test_well_mixed_draws_pass():
    report = diagnostics.convergence_report(iid_idata())
    assert report.verdict == "pass", report.failures + report.warnings
    assert report.ok and report.divergences == 0 and report.tree_depth_hits == 0
    assert len(report.bfmi) == 4 and min(report.bfmi) > diagnostics.MIN_BFMI
    assert {"mcse_mean", "mcse_sd", "ess_bulk", "ess_tail", "r_hat"} <= set(report.table.columns)
    assert "theta[b, alpha]" in report.table.index
    text = diagnostics.format_convergence_summary(report)
    assert text.splitlines()[0].startswith("convergence: PASS")


def test_statistics_per_family_are_read_per_family():
    # a fit under a population samples each family alone, so its sampler statistics have a
    # family axis: E-BFMI is per family (a chain's lowest is reported, the family named), a
    # family with thinned draws (energy NaN) is skipped, and tree-depth hits count every draw,
    # named as a cause only when r_hat or ESS fail
    idata = iid_idata(families=("a", "b"))
    chains, draws = 4, 500
    rng = np.random.default_rng(1)
    energy = rng.normal(size=(chains, draws, 2))  # family a: independent energies, E-BFMI near 2
    energy[1, :, 1] = np.cumsum(rng.normal(size=draws))  # family b, chain 1: a random walk
    depth = np.full((chains, draws, 2), 3)
    depth[:, :30, 0] = 10  # 120 of the 4,000 draws of both families: 3%, above the 1% guide
    stats = xr.Dataset(
        {
            "diverging": (("chain", "draw", "family"), np.zeros((chains, draws, 2), bool)),
            "tree_depth": (("chain", "draw", "family"), depth),
            "energy": (("chain", "draw", "family"), energy),
        },
        coords={"chain": np.arange(chains), "draw": np.arange(draws), "family": ["a", "b"]},
    )
    idata.sample_stats = stats
    report = diagnostics.convergence_report(idata)
    assert len(report.bfmi) == chains and report.bfmi[1] < 0.1 < diagnostics.MIN_BFMI < min(np.delete(report.bfmi, 1))
    assert any("E-BFMI" in w and "b chain 1" in w and "a chain" not in w for w in report.warnings)
    assert (report.tree_depth_hits, report.tree_depth_draws) == (120, 4000) and not any("tree depth" in w for w in report.warnings)
    assert "max tree depth 120 of 4000 draws reached depth 10 (3.0%)" in diagnostics.format_convergence_summary(report)
    idata.posterior["theta"].values[0, :, 0, :] += 3.0  # chains apart: now the cap is named
    apart = diagnostics.convergence_report(idata)
    assert apart.verdict == "fail" and any("120 of 4000 draws (3.0%) hit the maximum tree depth 10" in w for w in apart.warnings)
    idata.sample_stats["energy"].values[:, :, 1] = np.nan  # family b thinned: only a is read
    assert min(diagnostics.convergence_report(idata).bfmi) > diagnostics.MIN_BFMI
    idata.sample_stats["energy"].values[:] = np.nan
    assert diagnostics.convergence_report(idata).bfmi == ()


def test_divergences_and_few_draws_fail():
    report = diagnostics.convergence_report(iid_idata(draws=60, diverging=2))
    assert report.verdict == "fail"
    assert any("divergent" in f for f in report.failures)
    assert any("bulk ESS" in f for f in report.failures)
    assert "FAIL" in diagnostics.format_convergence_summary(report).splitlines()[0]


def test_chains_apart_fail_r_hat_with_advice():
    # chain 0 of family a shifted by 3 sds: r_hat far above 1.01, the failure names it and says
    # what longer chains can and cannot settle
    idata = iid_idata()
    idata.posterior["theta"].values[0, :, 0, :] += 3.0
    report = diagnostics.convergence_report(idata)
    assert report.verdict == "fail"
    (failure,) = [f for f in report.failures if f.startswith("r_hat >")]
    assert "theta[a" in failure and "longer chains" in failure and "separate modes" in failure
    assert "--tempering" in failure  # r_hat far above 1.05: the remedy for chains apart


def test_r_hat_text_shows_which_side_of_the_threshold():
    # 1.0104 fails r_hat <= 1.01; three decimals would print it as "1.010", the threshold itself
    assert format_r_hat(1.0104) == "1.0104"
    assert format_r_hat(1.01004) == "1.01004"
    assert format_r_hat(1.003) == "1.003" and format_r_hat(1.01) == "1.010"
    assert format_r_hat(250.0) == "2.5e+02"
    failing = Convergence(1.0104, 500.0, 500.0, 0, 2, 1000, ("theta",))
    assert failing.problems() == ["max r_hat 1.0104 > 1.01"]


def test_single_chain_warns():
    report = diagnostics.convergence_report(iid_idata(chains=1, draws=500))
    assert any("single chain" in w for w in report.warnings)
    assert report.verdict == "warn"


def test_good_fit_passes():
    """A real NUTS fit of a well-posed problem passes every check, and fit() does not warn:
    two synthetic families with 12 sizes each, no pooling, Normal likelihood (min ESS ~1,100
    of 2,000 draws, r_hat 1.004, no divergences at seeds 1 and 2 on the development machine)."""
    raw = load_spec("chinchilla_independent").to_dict()
    raw["likelihood"] = {"dist": "normal"}
    runs, _ = datasets.synthetic(n_families=2, seed=5, n_checkpoints=10, sizes_per_family=(12, 12))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        good = fit(runs, spec=spec_from_dict(raw), population=None, filters=Filters(min_tokens=1e9), chains=2, warmup=300, draws=1000, seed=1)
    report = diagnostics.convergence_report(good)
    assert report.verdict == "pass", report.failures + report.warnings
    assert report.divergences == 0 and report.worst.max_r_hat <= 1.01
    assert diagnostics.format_convergence_summary(report).startswith("convergence: PASS")


@pytest.fixture(scope="module")
def bad_fit(small_fit):
    """``small_fit`` with its second chain moved 3 posterior sds away in every variable: a
    full-size fit whose chains sit apart (a real sampler's failure to mix is test_inference's
    test_same_seed_same_draws_and_bad_fit_warns; fitting one here cost ~25-50 s)."""
    idata = small_fit.idata.copy()
    for name, values in idata.posterior.data_vars.items():
        if np.issubdtype(values.dtype, np.floating):
            idata.posterior[name].values[1] += 3.0 * values.std(dim=("chain", "draw")).values
    return Fit(idata)


def _refitted_to_other_data(fit_):
    """A copy of ``fit_`` whose observed losses differ (what ``compare`` must refuse)."""
    idata = fit_.idata.copy()
    idata.observed_data["log_loss"].values[0] += 0.01
    return Fit(idata)


def test_bad_fit_is_flagged(bad_fit):
    report = diagnostics.convergence_report(bad_fit)
    assert report.verdict == "fail"
    assert not report.ok
    # every quantity is flagged, and the advice is the remedy for chains apart (small_fit
    # alone fails too, at 200 draws, but with r_hat below 1.05: longer chains)
    assert len(report.flagged()) == len(report.table)
    assert report.worst.max_r_hat > 1.5 and any("--tempering" in f for f in report.failures)
    text = diagnostics.format_convergence_summary(report)
    assert "do not trust" in text
    assert len(text.splitlines()) <= 30  # one screen


def test_small_fit_report_covers_every_quantity(small_fit):
    report = diagnostics.convergence_report(small_fit)
    assert report.verdict in ("pass", "warn", "fail")
    assert report.chains == 2 and report.draws == 200
    assert report.tree_depth_hits is not None
    for family in small_fit.families:
        assert f"theta[{family}, alpha]" in report.table.index
    # the unit diagonal of corr is constant and left out; each off-diagonal pair appears once
    corr = report.table[report.table["variable"] == "corr"]
    assert len(corr) == 10


@pytest.fixture(scope="module")
def predictive(small_fit):
    return diagnostics.checkpoint_predictive(small_fit, seed=0)


def test_checkpoint_predictive_aligned(small_fit, predictive):
    obs = small_fit.idata.observed_data["log_loss"]
    assert predictive.dims == ("chain", "draw", "checkpoint")
    assert predictive.sizes["checkpoint"] == obs.sizes["checkpoint"]
    # replicates sit around the observations: median absolute log error of a few percent at most
    err = np.abs(predictive.median(("chain", "draw")).values - obs.values)
    assert np.median(err) < 0.05


def test_ppc_coverage_names_every_family(small_fit, predictive):
    cov = diagnostics.ppc_coverage(small_fit, predictive)
    assert list(cov.index) == list(small_fit.families)
    assert cov["checkpoints"].sum() == small_fit.idata.observed_data.sizes["checkpoint"]
    # synthetic data come from the model: the 90% band holds most checkpoints
    assert cov["coverage_90"].mean() > 0.75
    assert ((cov["coverage_50"] <= cov["coverage_90"]) | cov["coverage_50"].isna()).all()


def test_ppc_bands_one_band_per_run(small_fit):
    family = small_fit.families[0]
    bands = diagnostics.ppc_bands(small_fit, family, n_grid=5)
    table = diagnostics.checkpoint_table(small_fit)
    runs = table.loc[table["family"] == family, "run"].unique()
    assert set(bands["run"]) == set(runs)
    assert len(bands) == 5 * len(runs)
    assert (bands["q05"] <= bands["median"]).all() and (bands["median"] <= bands["q95"]).all()
    with pytest.raises(FitError, match="not in this fit"):
        diagnostics.ppc_bands(small_fit, "no-such-family")


def test_loo_and_compare(small_fit):
    report = diagnostics.loo(small_fit)
    assert np.isfinite(report.elpd) and report.se > 0
    assert list(report.by_family.index) == list(small_fit.families)
    assert len(report.pareto_k) == small_fit.idata.observed_data.sizes["checkpoint"]
    table = diagnostics.compare({"a": small_fit, "b": small_fit})
    assert isinstance(table, pd.DataFrame) and set(table.index) == {"a", "b"}
    with pytest.raises(FitError, match="at least two"):
        diagnostics.compare({"a": small_fit})


def test_compare_refuses_different_data(small_fit):
    with pytest.raises(FitError, match="different data"):
        diagnostics.compare({"small": small_fit, "other": _refitted_to_other_data(small_fit)})


def test_family_parameter_correlations(small_fit):
    corr = diagnostics.family_parameter_correlations(small_fit)
    assert list(corr.index) == ["alpha ~ log_a", "beta ~ log_b"]
    values = corr[["across_families", "population", "raw_units"]].to_numpy()
    assert np.all(np.abs(values) <= 1)


def test_prior_predictive_covers_data(synthetic_runs):
    runs, _ = synthetic_runs
    pp = diagnostics.prior_predictive(runs, draws=50, seed=0)
    assert set(pp.attrs["coverage_90"]) == set(runs["family"])
    assert (pp["q05"] <= pp["q95"]).all()
    assert min(pp.attrs["coverage_90"].values()) > 0.5  # weakly informative, not contradicted


def test_plots_return_axes_and_write_files(small_fit, predictive, tmp_path):
    import matplotlib.pyplot as plt

    family = small_fit.families[0]
    made = {
        "rank": dplots.plot_rank(small_fit),
        "ppc_one": dplots.plot_family_ppc(small_fit, family),
        "ppc_grid": dplots.plot_ppc_grid(small_fit, small_fit.families[:2]),
        "params": dplots.plot_family_parameters(small_fit, "log_b", "beta"),
        "loo_pit": dplots.plot_loo_pit(small_fit, predictive),
        "pareto_k": dplots.plot_pareto_k(diagnostics.loo(small_fit)),
    }
    for name, result in made.items():
        axes = np.atleast_1d(result).ravel()
        assert all(isinstance(ax, plt.Axes) for ax in axes), name
        path = tmp_path / f"{name}.png"
        axes[0].figure.savefig(path)
        assert path.stat().st_size > 1000
        plt.close(axes[0].figure)
    _, ax = plt.subplots()
    assert dplots.plot_family_ppc(small_fit, family, ax=ax) is ax
    plt.close("all")


def test_diagnose_report_names_every_family(small_fit, tmp_path):
    path, report = write_report(small_fit, tmp_path / "report", source="small.nc", dpi=40)
    text = path.read_text()
    for family in small_fit.families:
        assert family in text
    assert f"## Verdict: {report.verdict.upper()}" in text
    assert "## Data" in text and diagnostics.rising_runs(small_fit).empty and "\nNone.\n" in text  # synthetic curves fall
    for png in ("rank.png", "ppc.png", "parameters.png", "loo.png"):
        assert (path.parent / png).stat().st_size > 1000
        assert f"]({png})" in text


def test_diagnose_cli(small_fit, tmp_path, capsys):
    saved = small_fit.save(tmp_path / "fit.nc")
    out = tmp_path / "out"
    assert main(["diagnose", str(saved), "--out", str(out), "--families", small_fit.families[0], "--dpi", "30"]) == 0
    assert capsys.readouterr().out.startswith("convergence: ")
    assert (out / "report.md").is_file()
    assert main(["diagnose", str(tmp_path / "missing.nc"), "--out", str(out)]) == 2
    assert main(["diagnose", str(saved), "--out", str(out), "--families", "nope"]) == 2


def test_cell_r_hat_is_the_convergence_check_of_the_same_draws():
    """One r_hat: a cell fit's (family_r_hat, flat draws) equals check_convergence on an
    InferenceData of the same draws; a chain whose sigma_size alone runs at 3x the scale of
    the other is caught (folded r_hat), and with sigma_size left out it is not."""
    from bayes_scaling.cellfit import family_r_hat
    from bayes_scaling.convergence import MIXED_RHAT, check_convergence

    rng = np.random.default_rng(0)
    chains, draws = 2, 1000
    theta = rng.normal(size=(chains * draws, 5))
    sigma_run, sigma_obs = np.abs(rng.normal(size=(2, chains * draws)))
    sigma_size = np.abs(rng.normal(size=chains * draws)) * np.repeat([1.0, 3.0], draws)
    idata = az.from_dict(
        posterior={"theta": theta.reshape(chains, draws, 5), "sigma_run": sigma_run.reshape(chains, draws),
                   "sigma_obs": sigma_obs.reshape(chains, draws), "sigma_size": sigma_size.reshape(chains, draws)}
    )
    r_hat = family_r_hat(chains, theta, sigma_run, sigma_obs, sigma_size)
    assert r_hat == pytest.approx(check_convergence(idata).max_r_hat, rel=1e-12)
    assert r_hat > MIXED_RHAT
    assert family_r_hat(chains, theta, sigma_run, sigma_obs) < 1.01
    assert np.isnan(family_r_hat(1, theta, sigma_run, sigma_obs))


def test_a_fitted_run_that_turns_up_late_is_named(small_fit):
    # the fit's observed losses of one run bent up over its last 30% of tokens, by up to 6%
    from bayes_scaling.inference import Fit

    idata = small_fit.idata.copy()
    table = diagnostics.checkpoint_table(small_fit)
    run = table["run"].iloc[0]
    own = table["run"] == run
    top = table.loc[own, "tokens"].max()
    ramp = np.where(own & (table["tokens"] >= 0.7 * top), 0.06 * (table["tokens"] - 0.7 * top) / (0.3 * top), 0.0)
    idata.observed_data["log_loss"] = idata.observed_data["log_loss"] + np.log1p(ramp)
    rising = diagnostics.rising_runs(Fit(idata))
    assert rising["run"].tolist() == [run] and rising["family"].iloc[0] == table.loc[own, "family"].iloc[0]
    assert 0.02 < rising["rise"].iloc[0] < 0.06
