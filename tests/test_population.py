"""Populations as data, and families fitted under them (issue 17).

NUTS budget: one tiny population build and one tiny fit under it share two compiled cell
samplers (member prior, population prior); the CLI test reuses them in the same process.
"""

import dataclasses
import math
import warnings

import numpy as np
import pandas as pd
import pytest

import bayes_scaling as bs
from bayes_scaling import population as P
from bayes_scaling.errors import FitError, PopulationError
from bayes_scaling.laws import PARAM_NAMES

TINY_BUILD = dict(min_tokens=1e9, chains=2, warmup=60, draws=60, max_checkpoints=6)
TINY_FIT = dict(chains=2, warmup=60, draws=60)


def _hand_population(n=24, unit_shift_sd=1.5, seed=0):
    """Members with theta_f = mu + shape noise + c_f (1, 1, 1, 0, 0): a loss unit per family."""
    rng = np.random.default_rng(seed)
    mu = np.array([0.3, -0.8, -1.6, 0.35, 0.3])
    sd = np.array([0.1, 0.1, 0.1, 0.03, 0.03])
    shifts = unit_shift_sd * rng.standard_normal(n)
    means = mu + sd * rng.standard_normal((n, 5)) + shifts[:, None] * np.array([1, 1, 1, 0, 0])
    covs = np.repeat(np.diag(np.full(5, 0.01**2))[None], n, axis=0)
    members = pd.DataFrame(
        {
            "family": [f"f{i:02d}" for i in range(n)],
            "group": [f"g{i // 2}" for i in range(n)],  # siblings in pairs
            "unit": "val_loss:x",
            "n_points": 30,
            "n_runs": 4,
            "n_sizes": 4,
            "divergences": 0,
            "max_rhat": 1.0,
        }
    )
    log_scales = np.tile(np.array([[np.log(0.01), 0.2], [np.log(0.005), 0.1], [np.log(0.01), 0.3]]), (n, 1, 1))
    return P.Population(members, means, covs, log_scales, 4.0, {"seed": 0}, {"runs": "hand-made"}), mu, sd


def test_prior_borrows_the_shape_of_the_law_not_the_loss_unit():
    pop, mu, sd = _hand_population()
    prior = pop.prior()
    v = P.UNIT_DIRECTION
    basis = P._unit_basis()
    # orthogonal to a change of unit the members agree: the prior is centred and tight there
    # (tolerance: 4 sd of a mean of 24 families, plus the shape spread)
    assert np.all(np.abs((prior.loc - mu) @ basis) < 4 * 0.1 / np.sqrt(24) + 1e-3)
    assert abs(prior.loc[3] - mu[3]) < 4 * sd[3] / np.sqrt(24) and abs(prior.loc[4] - mu[4]) < 4 * sd[4] / np.sqrt(24)
    assert np.sqrt(prior.cov[3, 3]) < 3 * sd[3]  # exponents borrowed
    # along the unit direction the prior is wide: UNIT_SHIFT_SD per log level, and nothing more
    assert np.sqrt(v @ prior.cov @ v) == pytest.approx(P.UNIT_SHIFT_SD * math.sqrt(3), rel=0.05)
    assert prior.df == 24 - 4 and prior.size_scale is not None
    # pooled log-normal of the scales: mean of the members' log-means, sd of the pooled draws
    assert prior.run_scale == pytest.approx((np.log(0.01), 0.2))
    # a family whose loss is 3x the population's (every log level + log 3) is about as likely
    # a priori as one at the population's level (density ratio < 2.5); tripling E alone
    # changes the shape of the law, which the members agree on (ratio > 1000)
    from scipy import stats

    density = stats.multivariate_t(prior.loc, prior.cov, df=prior.df)
    unit = density.logpdf(prior.loc) - density.logpdf(prior.loc + np.log(3) * np.array([1, 1, 1, 0, 0]))
    shape = density.logpdf(prior.loc) - density.logpdf(prior.loc + np.log(3) * np.array([1, 0, 0, 0, 0]))
    assert unit < np.log(2.5) and shape > np.log(1000)


def test_without_drops_whole_source_groups():
    pop, _, _ = _hand_population()
    rest = pop.without(groups=["g0"], families=["f05"])
    assert rest.families == tuple(f for f in pop.families if f not in ("f00", "f01", "f05"))
    assert rest.settings["left_out"] == ["f00", "f01", "f05"]
    assert "left out: f00, f01, f05" in rest.prior().source
    assert pop.group_of("f03") == "g1" and pop.group_of("nope") is None
    with pytest.raises(PopulationError, match=">= 2"):
        pop.without(families=pop.families[1:]).prior()


def test_a_family_without_a_source_is_its_own_group(tmp_path):
    # an empty source once left the group NaN under pandas 3 (astype(str) keeps NaN): the
    # family's population prior then kept nothing out by group, and a population file that
    # held the NaN failed its own checksum when read back ("corrupted")
    table = pd.DataFrame({"family": ["a", "a", "b", "c", "d"], "source": ["s", "s", np.nan, " ", None]})
    assert P.source_groups(table) == {"a": "s", "b": "b", "c": "c", "d": "d"}
    assert P.source_groups(table.drop(columns="source")) == {"a": "a", "b": "b", "c": "c", "d": "d"}
    pop, _, _ = _hand_population()
    members = pop.members.assign(group=[P.source_groups(table)["b"], *pop.members["group"][1:]])
    path = P.Population(members, pop.theta_mean, pop.theta_cov, pop.log_scales, pop.nu, pop.settings, pop.provenance).save(tmp_path / "p.nc")
    assert P.load(path).group_of("f00") == "b"


def test_file_round_trip_is_exact_and_damage_is_refused(tmp_path):
    pop, _, _ = _hand_population()
    path = pop.save(tmp_path / "pop.nc")
    back = P.load(path)
    for name in ("theta_mean", "theta_cov", "log_scales"):
        np.testing.assert_array_equal(getattr(back, name), getattr(pop, name))
    pd.testing.assert_frame_equal(back.members, pop.members, check_dtype=False)
    assert (back.nu, back.settings, back.provenance) == (pop.nu, pop.settings, pop.provenance)
    assert P.resolve(str(path)).families == pop.families and P.resolve(pop) is pop
    assert not list(tmp_path.glob(".pop.nc.*"))  # the temporary file was renamed away
    # a flipped byte in the data: unreadable or checksum mismatch, both a PopulationError
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad = tmp_path / "bad.nc"
    bad.write_bytes(bytes(raw))
    with pytest.raises(PopulationError, match="bad.nc"):
        P.load(bad)
    # another format version, or not a population at all
    ds = pop.to_dataset()
    ds.attrs["format_version"] = P.FORMAT_VERSION + 1
    ds.attrs["checksum"] = P._checksum(ds)
    with pytest.raises(PopulationError, match="format version"):
        P.Population.from_dataset(ds, "x.nc")
    ds.attrs["format"] = "something else"
    with pytest.raises(PopulationError, match="not a bayes_scaling population"):
        P.Population.from_dataset(ds, "x.nc")
    (tmp_path / "text.nc").write_text("not netcdf")
    with pytest.raises(PopulationError, match="cannot read"):
        P.load(tmp_path / "text.nc")
    with pytest.raises(PopulationError, match="not found"):
        P.load(tmp_path / "missing.nc")
    with pytest.raises(PopulationError, match="'public', a path or a Population"):
        P.resolve(3)


def test_public_population_ships_with_provenance():
    pop = P.public()
    assert len(pop.families) >= 15
    assert pop.settings["min_tokens"] == 1e10 and pop.provenance["package_version"]
    assert set(pop.members["group"]) >= {"pythia-evals", "overtrain-2024"}
    assert "llm360-mamba" not in pop.families  # not a loss in nats
    prior = pop.prior()
    assert np.all(np.isfinite(prior.loc)) and prior.df == len(pop.families) - 4


def test_population_priors_of_the_backtest_leave_out_the_source_group():
    from bayes_scaling import backtest as bt

    pop, _, _ = _hand_population()
    table = pd.DataFrame({"family": ["f00", "x"], "model": "m", "num_params": 1e8, "tokens": 2e10, "loss": 3.0, "source": ["g0", "g5"]})
    priors, info = bt.population_priors(table, ["f00", "x"], 1e10, population=pop)
    assert "f01" not in priors["f00"].families and "f00" not in priors["f00"].families
    assert not {"f10", "f11"} & set(priors["x"].families) and len(priors["x"].families) == 22
    assert len(info) == 24 and (info["min_tokens"] == 1e10).all()


def test_backtest_serves_a_given_population_without_each_source_group(tiny_backtest_table, monkeypatch):
    # bt.backtest(population=P) hands each cell P without its family's source group
    # (it once overwrote the argument and refused its own dict)
    from bayes_scaling import backtest as bt

    pop, _, _ = _hand_population()
    seen = []
    monkeypatch.setattr(bt.runner, "run_cells", lambda cells, **kw: seen.extend(cells) or pd.DataFrame())
    bt.backtest(tiny_backtest_table, estimators=("bayes_hierarchical",), ks=[1], fractions=[1.0], population=pop)
    assert seen and all(c.prior is not None for c in seen)
    (cell,) = seen
    assert cell.data.family == "f00" and not {"f00", "f01"} & set(cell.prior.families) and len(cell.prior.families) == 22


def test_batched_executor_runs_a_population_cell_one_by_one(tiny_backtest_table, monkeypatch):
    # `backtest --batch-size` once crashed on bayes_hierarchical cells (their prior is a
    # Population, scored through bs.fit, not a CellPrior the batched program takes)
    import functools

    from bayes_scaling import backtest as bt
    from bayes_scaling.distributed import BatchedExecutor

    pop, _, _ = _hand_population()
    seen = []
    monkeypatch.setattr(bt.runner, "run_cells", lambda cells, **kw: seen.extend(cells) or pd.DataFrame())
    bt.backtest(tiny_backtest_table, estimators=("bayes_hierarchical",), ks=[1], fractions=[1.0], population=pop)

    class Recorder:  # stands in for the inner executor: records the work, fits nothing
        def map_unordered(self, fn, items):
            for item in items:
                yield item, [(item[1], [])]

    run = BatchedExecutor(Recorder(), batch_size=4).map_unordered(functools.partial(bt.evaluate_cell, seed=0), seen)
    assert [cell for cell, _ in run] == seen


def test_backtest_summary_lists_the_population_members():
    # the CLI's backtest.md once failed (KeyError) on a population's members table
    from bayes_scaling import backtest as bt

    pop, _, _ = _hand_population()
    rows = pd.DataFrame(
        [{"min_tokens": 1e10, "family": "f00", "k": 1, "fraction": 1.0, "estimator": e, "target": "t", "are": 0.05, "status": "ok", "cov_90": 1.0}
         for e in ("classic", "classic_huber", "bayes_hierarchical")]
    )
    text = bt.summary_markdown(rows, population_info=pop.members.assign(min_tokens=1e10))
    assert "Population members" in text and "| f23 | g11 |" in text


@pytest.fixture
def tiny_backtest_table():
    """Family f00 (source g0) with three sizes, each one run of four checkpoints."""
    tokens = np.array([1.2e10, 2e10, 4e10, 8e10])
    rows = [
        pd.DataFrame({"family": "f00", "model": f"m{i}", "num_params": n, "tokens": tokens, "loss": 3.0 - 0.2 * i - 0.1 * np.log(tokens / 1e10), "source": "g0"})
        for i, n in enumerate([1e8, 2e8, 4e8])
    ]
    return pd.concat(rows, ignore_index=True)


@pytest.fixture(scope="module")
def built(synthetic_runs):
    runs, truth = synthetic_runs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pop = P.build(runs, **TINY_BUILD)
    return runs, truth, pop


@pytest.fixture(scope="module")
def one_family_fit(built):
    runs, truth, pop = built
    family = truth.index[0]
    train = runs[(runs["family"] == family) & (runs["num_params"] < runs.loc[runs["family"] == family, "num_params"].max())]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = bs.fit(train.drop(columns="true_loss"), population=pop, filters=bs.Filters(min_tokens=1e9), seed=0, **TINY_FIT)
    return family, train, fit


def test_a_family_fits_the_same_alone_as_beside_another_member(built, one_family_fit):
    # each member family leaves only itself out of its prior: before, a table of two members
    # left both out of both priors, so a family's fit depended on what else was in the table
    runs, truth, pop = built
    family, train, alone = one_family_fit
    other = truth.index[1]
    second = runs[(runs["family"] == other) & (runs["num_params"] < runs.loc[runs["family"] == other, "num_params"].max())]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        both = bs.fit(pd.concat([train, second]).drop(columns="true_loss"), population=pop, filters=bs.Filters(min_tokens=1e9), seed=0, **TINY_FIT)
    assert both.families == tuple(sorted((family, other)))
    np.testing.assert_array_equal(both.idata.posterior["theta"].sel(family=family).values, alone.idata.posterior["theta"].sel(family=family).values)
    assert both.settings["priors"] == {f: pop.without(families=[f]).prior().source for f in both.families}
    assert "left out" not in both.settings["population"]  # a new family's prior: the whole population
    two = pop.without(families=pop.families[2:])
    with pytest.raises(PopulationError, match=rf"family '{pop.families[0]}' is a member .* leaves 1 member family"):
        bs.fit(runs[runs["family"] == pop.families[0]].drop(columns="true_loss"), population=two, filters=bs.Filters(min_tokens=1e9), **TINY_FIT)


def test_build_summarises_every_family(built):
    runs, truth, pop = built
    assert pop.families == tuple(truth.index)  # synthetic families each have >= 3 sizes
    assert pop.members["group"].tolist() == list(truth.index)  # no source column: own group
    assert pop.theta_mean.shape == (len(truth), 5) and np.all(np.isfinite(pop.log_scales))
    # the members' posterior means sit near the planted truth (tiny chains: 0.5 on log levels, 0.1 on exponents)
    err = np.abs(pop.theta_mean - truth[list(PARAM_NAMES)].to_numpy())
    assert np.median(err[:, 3:]) < 0.1
    # each member's size-discrepancy row is the posterior given its own extrapolation check
    check = pop.members[["extrap_residual", "extrap_sd", "extrap_distance"]].to_numpy()
    assert np.all(np.isfinite(check)) and np.all(check[:, 1:] > 0)
    expected = [P.extrapolated_size_moments(*row, scale=P.BUILD_DEFAULTS["size_scale"]) for row in check]
    np.testing.assert_allclose(pop.log_scales[:, 2, :], expected, rtol=1e-12)


def test_extrapolated_size_moments_follow_the_error():
    """An error within the prediction's own sd leaves the half-normal prior (log-mean
    log(scale) - 0.635, log-sd 1.11, to 0.03); a large one moves sigma_size to within a
    factor 2 of |error| / distance and narrows it; the sign does not matter."""
    mean, sd = P.extrapolated_size_moments(0.0, 1.0, 2.0, 0.02)
    assert abs(mean - (math.log(0.02) - 0.635)) < 0.03 and abs(sd - 1.11) < 0.03
    big, big_sd = P.extrapolated_size_moments(0.08, 0.005, 2.0, 0.1)
    assert 0.5 < math.exp(big) / 0.04 < 2.0 and big_sd < 0.8
    assert P.extrapolated_size_moments(-0.08, 0.005, 2.0, 0.1) == (big, big_sd)
    # the same error says less when the prediction was already that uncertain
    assert P.extrapolated_size_moments(0.08, 0.08, 2.0, 0.1)[0] < big - 0.3
    for bad in [(math.nan, 0.1, 1.0), (0.1, 0.0, 1.0), (0.1, 0.1, 0.0)]:
        with pytest.raises(ValueError):
            P.extrapolated_size_moments(*bad, 0.02)


def test_extrapolation_check_measures_a_bend_at_the_largest_size():
    """A family on an exact law (noise 0.002) predicts its largest size from its three
    smallest within 3 sds (chains of 300 draws: 60 give too narrow an sd); with
    that size's losses raised 30% (a bend the law cannot follow) the residual grows by
    log 1.3 and the size discrepancy's posterior moves up."""
    from bayes_scaling.cellfit import CellPrior, FamilyArrays, independent_prior
    from bayes_scaling.laws import chinchilla_log_loss

    rng = np.random.default_rng(0)
    sizes = np.log(np.array([0.05, 0.1, 0.2, 0.4, 0.8, 3.2]))  # centred log N (1e9 units)
    x_n = np.repeat(sizes, 6)
    x_d = np.tile(np.linspace(-1.5, 0.0, 6), sizes.size)
    run_idx = np.repeat(np.arange(sizes.size), 6)
    exact = np.asarray(chinchilla_log_loss(x_n, x_d, 0.5, -0.3, -0.8, 0.35, 0.3)) + 0.002 * rng.standard_normal(x_n.size)
    base = independent_prior()
    prior = CellPrior(base.loc, base.scale_tril, base.scale_kind, base.run_scale, base.noise_scale, base.nu, base.source, (0.02, 0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampler = dict(chains=2, warmup=300, draws=300)
        flat = P.extrapolation_check(FamilyArrays.from_arrays(x_n, x_d, run_idx, exact), prior, seed=0, **sampler)
        bent = P.extrapolation_check(FamilyArrays.from_arrays(x_n, x_d, run_idx, exact + np.log(1.3) * (x_n == sizes[-1])), prior, seed=0, **sampler)
    assert abs(flat[0]) < 3 * flat[1] and flat[2] == pytest.approx(sizes[-1] - sizes[2])
    # the fitted sizes are the same, so the same fit: the residual moves by exactly log 1.3
    assert bent[0] - flat[0] == pytest.approx(math.log(1.3), abs=1e-6) and bent[1:] == flat[1:]
    assert P.extrapolated_size_moments(*bent, scale=0.02)[0] > P.extrapolated_size_moments(*flat, scale=0.02)[0]
    with pytest.raises(bs.DataError, match=">= 3 model sizes"):
        P.extrapolation_check(FamilyArrays.from_arrays(x_n[:12], x_d[:12], run_idx[:12], exact[:12]), prior, **TINY_FIT)


def test_diagnose_reports_a_fit_under_a_population(one_family_fit, tmp_path):
    # `bayes-scaling diagnose` once failed on such a fit (KeyError 'log_a': it read the joint
    # model's per-parameter variables; every fit holds the law as theta)
    from bayes_scaling import diagnostics
    from bayes_scaling.cli.diagnose import write_report

    family, _, fit = one_family_fit
    law = diagnostics.family_parameters(fit)
    assert set(law) == {"log_e", "log_a", "log_b", "alpha", "beta"}
    np.testing.assert_array_equal(law["alpha"].sel(family=family).values, fit.idata.posterior["theta"].sel(family=family, param="alpha").values)
    path, _ = write_report(fit, tmp_path, source="fit.nc")
    text = path.read_text()
    assert "under the prior of a population" in text and "(pooling" not in text
    assert (tmp_path / "parameters.png").is_file()


def test_fit_under_a_population_is_a_fit_like_any_other(one_family_fit, tmp_path):
    from bayes_scaling import decide, diagnostics, plan

    family, train, fit = one_family_fit
    post = fit.idata.posterior
    assert fit.families == (family,) and post["theta"].dims == ("chain", "draw", "family", "param")
    assert {"sigma_size", "run_offset"} <= set(post.data_vars)
    assert fit.idata.log_likelihood["log_loss"].shape[-1] == fit.idata.observed_data["log_loss"].size
    assert f"left out: {family}" in fit.settings["priors"][family]  # the family never borrows from itself
    # a family whose first fit did not mix was carried on, longer and thinned: same draws per chain
    assert fit.settings["retry_thinning"] == 3 and set(fit.settings["retried"]) <= {family}
    assert post.sizes["draw"] == TINY_FIT["draws"]
    report = diagnostics.convergence_report(fit)
    assert report.chains == 2 and report.divergences == int(fit.idata.sample_stats["diverging"].sum())
    # per-family sampler statistics: tree depth, and energy unless the draws were thinned
    stats = fit.idata.sample_stats
    assert stats["tree_depth"].dims == ("chain", "draw", "family")
    assert report.tree_depth_draws == stats["tree_depth"].size and 1 <= int(stats["tree_depth"].min()) <= int(stats["tree_depth"].max()) <= 8
    thinned = family in fit.settings["retried"]
    assert ("energy" in stats) != thinned and (len(report.bfmi) == 0) == thinned
    assert set(diagnostics.ppc_coverage(fit).index) == {family}
    # a planned run widens with the distance it extrapolates beyond the largest size
    largest = train["num_params"].max()
    widths = []
    for n in (largest, 30 * largest):
        pred = bs.summarize(bs.predict_loss(fit, family, n, 2e11, kind="new_run", seed=1))
        widths.append(float((pred["q95"] - pred["q05"]).iloc[0] / pred["median"].iloc[0]))
    family_kind = bs.summarize(bs.predict_loss(fit, family, 30 * largest, 2e11, kind="family", seed=1))
    assert widths[1] > widths[0] and widths[1] > float((family_kind["q95"] - family_kind["q05"]).iloc[0] / family_kind["median"].iloc[0])
    # planning sees the same widening: its target width grows with the distance too
    draws = plan.draws_from_fit(fit, family)
    assert draws.size_anchor == float(fit.idata.constant_data["size_anchor"].values[0])
    without = dataclasses.replace(draws, sigma_size=None)
    assert plan.target_width(draws, largest, 2e11) == pytest.approx(plan.target_width(without, largest, 2e11), rel=1e-9)
    assert plan.target_width(draws, 30 * largest, 2e11) > 1.05 * plan.target_width(without, 30 * largest, 2e11)
    band = decide.planned_run(bs.family_draws(fit, family, kind="new_run"), 30 * largest, 2e11).table
    assert np.isfinite(band.to_numpy(dtype=float, na_value=0)).all()
    # the prior travels with the file: a new family is drawn from it after a load
    back = bs.Fit.load(fit.save(tmp_path / "fit.nc"))
    new = bs.predict_loss(back, None, 1e9, 2e10, kind="new_family", seed=0)
    assert np.all(np.isfinite(new.values)) and np.all(new.values > 0)
    # exp of Student-t draws has no mean: summarize says so instead of printing one extreme draw
    summary = bs.summarize(new)
    assert summary["mean"].isna().all() and np.isfinite(summary[["q05", "median", "q95"]].to_numpy()).all()
    assert np.isfinite(family_kind["mean"]).all()


def test_sampler_statistics_of_families_with_and_without_energy():
    # a table's families are fitted alone: one carried on and thinned keeps no energy, and its
    # column is NaN beside another's, which diagnostics skip; tree depth needs every family's
    from bayes_scaling.cellfit import CellPosterior
    from bayes_scaling.popfit import _sample_stats

    def post(energy, depth):
        return CellPosterior(np.zeros((6, 5)), np.ones(6), np.ones(6), 4.0, 0, 1.0, chains=2, diverging=np.zeros(6, bool), energy=energy, tree_depth=depth)

    stats = _sample_stats([post(np.arange(6.0), np.full(6, 3)), post(None, np.full(6, 4))])
    assert stats["energy"].shape == stats["tree_depth"].shape == stats["diverging"].shape == (2, 3, 2)
    np.testing.assert_array_equal(stats["energy"][..., 0], np.arange(6.0).reshape(2, 3))
    assert np.isnan(stats["energy"][..., 1]).all() and (stats["tree_depth"][..., 1] == 4).all()
    assert set(_sample_stats([post(None, None), post(None, np.full(6, 4))])) == {"diverging"}


@pytest.mark.slow  # 80-95 s; tempering is opt-in, and its retry is checked by default in test_scale.py
def test_tempering_is_the_retry_of_a_family_whose_chains_sit_apart(built):
    """fit(..., tempering=True): a family whose fit is far too short to mix (r_hat above 1.05)
    is fitted again as a replica exchange; the fit's settings say so, and the result is a Fit
    like any other (run offsets drawn, predictions finite)."""
    runs, truth, pop = built
    family = truth.index[1]
    train = runs[runs["family"] == family].drop(columns="true_loss")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = bs.fit(train, population=pop, filters=bs.Filters(min_tokens=1e9), seed=0, chains=2, warmup=15, draws=15, tempering=True)
    assert fit.settings["tempering"] is True and fit.settings["tempered"] == [family] == fit.settings["retried"]
    assert fit.idata.posterior.sizes["draw"] == 15 and np.all(np.isfinite(fit.idata.posterior["run_offset"].values))
    pred = bs.predict_loss(fit, family, 2 * train["num_params"].max(), 2e11, kind="new_run", seed=0)
    assert np.all(np.isfinite(pred.values)) and np.all(pred.values > 0)


def test_fit_refuses_a_spec_with_a_population(synthetic_runs):
    runs, _ = synthetic_runs
    with pytest.raises(FitError, match="population=None"):
        bs.fit(runs, "chinchilla_independent", population="public")
    for setting in (dict(retry_thinning=3), dict(tempering=True)):
        with pytest.raises(FitError, match="tempering are settings of the population path"):
            bs.fit(runs, population=None, **setting)
    with pytest.raises(FitError, match="retry_thinning must be a positive integer"):
        bs.fit(runs, population="public", retry_thinning=0)


@pytest.mark.filterwarnings("default::bayes_scaling.errors.ConvergenceWarning")  # 60 draws: shown, checked below
def test_cli_population_build_show_fit_predict(built, one_family_fit, tmp_path, capsys):
    from bayes_scaling.cli import main

    runs, truth, _ = built
    family, train, _ = one_family_fit
    runs_path, train_path = tmp_path / "runs.csv", tmp_path / "train.csv"
    runs.drop(columns="true_loss").to_csv(runs_path, index=False)
    train.drop(columns="true_loss").to_csv(train_path, index=False)
    pop_path = tmp_path / "pop.nc"
    build = ["population", "build", str(runs_path), "--out", str(pop_path), "--min-tokens", "1e9", "--max-checkpoints", "6"]
    assert main([*build, "--chains", "2", "--warmup", "60", "--draws", "60"]) == 0
    # a member fit that did not mix at these settings is named in one line, not a source line
    err = capsys.readouterr().err
    assert "bayes-scaling population: warning: 6 member fit(s) did not mix" in err and "ConvergenceWarning" not in err
    assert main(["population", "show", str(pop_path)]) == 0
    assert "Student-t" in capsys.readouterr().out
    fit_path = tmp_path / "fit.nc"
    args = ["fit", str(train_path), "--out", str(fit_path), "--population", str(pop_path), "--min-tokens", "1e9", "--no-progress"]
    assert main([*args, "--chains", "2", "--warmup", "60", "--draws", "60"]) == 0
    capsys.readouterr()
    assert main(["predict", str(fit_path), "--family", family, "--params", "7e9", "--tokens", "2e11", "--new-run", "--format", "csv"]) == 0
    table = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))
    assert table["q05"].iloc[0] < table["median"].iloc[0] < table["q95"].iloc[0]
    # a damaged population file: exit 2 before any sampling, one line naming the file
    (tmp_path / "junk.nc").write_bytes(b"\x89HDF\r\n" + bytes(64))
    assert main(["fit", str(train_path), "--out", str(tmp_path / "f2.nc"), "--population", str(tmp_path / "junk.nc")]) == 2
    assert "junk.nc" in capsys.readouterr().err
    assert main(["fit", str(train_path), "--out", str(tmp_path / "f3.nc"), "--spec", "chinchilla_independent"]) == 2
    assert "--population none" in capsys.readouterr().err


def test_build_needs_three_sizes_per_member():
    with pytest.raises(bs.DataError, match="min_sizes must be >= 3"):
        P.build(pd.DataFrame(), min_sizes=2)


def test_build_warns_about_members_whose_chains_did_not_mix(synthetic_runs, monkeypatch):
    """A member fit with r_hat above MIXED_RHAT is named in a ConvergenceWarning (its summary
    may straddle modes); the population is still built. Member fits replaced by draws."""
    from bayes_scaling.cellfit import CellPosterior
    from bayes_scaling.errors import ConvergenceWarning

    runs, truth = synthetic_runs
    rng = np.random.default_rng(0)
    first = truth.index[0]

    def fake_fit(job):
        s = 200
        post = CellPosterior(0.1 * rng.standard_normal((s, 5)), np.full(s, 0.01), np.full(s, 0.005), 4.0, 0,
                             1.3 if job.family == first else 1.0, sigma_size=np.full(s, 0.01))
        return post, (0.01, 0.05, 1.0), 0.0

    monkeypatch.setattr(P, "_fit_member", fake_fit)
    with pytest.warns(ConvergenceWarning, match=rf"1 member fit\(s\) did not mix .*: {first};"):
        pop = P.build(runs.drop(columns="true_loss"), min_tokens=1e9)
    assert pop.families == tuple(truth.index)


def test_backtest_counts_a_cell_by_the_r_hat_its_user_is_told(built, monkeypatch):
    """A bayes_hierarchical cell's max_rhat is check_convergence's r_hat of the very Fit a
    user gets (arviz's, over theta and the scales, sigma_size included), not a second one."""
    from bayes_scaling import backtest as bt
    from bayes_scaling import popfit
    from bayes_scaling.convergence import check_convergence

    runs, truth, pop = built
    family = truth.index[0]
    protocol = bt.protocol_cells(runs[runs["family"] == family].drop(columns="true_loss"), ks=[2], fractions=[1.0], min_tokens=1e9, max_checkpoints=6)
    (cell,) = bt.build_cells(protocol, ["bayes_hierarchical"], population={1e9: {family: pop.without(families=[family])}}, bayes_settings=TINY_FIT)
    fits = []
    real = popfit.fit_with_population
    # the back-test's estimator calls the user's fit under the name it imported
    monkeypatch.setattr(bt.estimators, "fit_with_population", lambda *a, **kw: fits.append(real(*a, **kw)) or fits[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = bt.evaluate_cell(cell, seed=0)
    (fit,) = fits
    report = check_convergence(fit.idata)
    assert "sigma_size" in report.checked
    assert rows[0]["status"] == "ok" and rows[0]["max_rhat"] == report.max_r_hat
