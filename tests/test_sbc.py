"""Simulation-based calibration of the cell model on real cell designs (issue 18).

Designs: k = 1 and k = 3 of two corpus families of different kinds, a dense ladder
(pythia: few sizes, many checkpoints per run) and an isoFLOP sweep (marin-isoflop-dclm:
one checkpoint per run, N and D moving together), cut as the back-test cuts them.
Parameters from the shipped public population's prior; each data set fitted the
back-test's way (effective weights, the batched program). Every rank ECDF (5 law
parameters, 3 scales, the held-out target's log loss) must stay inside its simultaneous
band, each at 1 - 0.05 / (number of ECDFs checked) (Bonferroni), so a calibrated fit
passes all with probability >= 95%.

NUTS budget: both SBC tests are slow. The ladder test (the two pythia designs, 50
replications each at 2 chains x (300 + 300)) passed in 432 s under load; in the default
suite it made the run 1117 s (705 s before this session), so the default suite keeps only
the band test. With one chain
per fit (to halve that) the ladder test failed on sigma_size of pythia k = 3, so the chains
stay at the back-test's two. The full test runs all four designs, 200 replications each,
at the back-test's 1000 + 1000. Known failure, measured 2026-12-01 (23 min): the ranks of
sigma_obs on both isoFLOP designs (a run with one checkpoint cannot tell its offset from its
noise) and of sigma_run on pythia k = 1 leave their Bonferroni bands; every law parameter
and the target stay inside theirs. It is expected to fail there until issue 18's sampler
work lands.
"""

import warnings

import numpy as np
import pytest

from bayes_scaling import sbc

FAMILIES = ("pythia", "marin-isoflop-dclm")
FAMILY_WISE = 0.95


def _designs(shared_runs_path, families):
    from bayes_scaling import backtest as bt

    protocol = bt.protocol_cells(shared_runs_path, ks=[1, 3], fractions=[1.0], min_tokens=[1e10], families=list(families))
    designs = [sbc.Design.of_cell(c) for c in protocol.cells]
    assert len(designs) == 2 * len(families)
    return designs


def _check(results):
    n_checks = len(results) * len(sbc.QUANTITIES)
    outside = []
    for r in results:
        band = sbc.ecdf_band(len(r.ranks["target"]), r.n_ranks, 1 - (1 - FAMILY_WISE) / n_checks, seed=7)
        outside += [f"{r.design}: {q}" for q in sbc.QUANTITIES if not sbc.inside_band(r.ranks[q], band)]
    assert not outside, outside


def test_ecdf_band_holds_uniform_ranks_and_rejects_narrow_posteriors():
    rng = np.random.default_rng(3)
    band = sbc.ecdf_band(50, 99, 0.95, seed=1)
    inside = np.mean([sbc.inside_band(rng.integers(0, 100, 50), band) for _ in range(400)])
    assert 0.92 <= inside <= 0.98  # simultaneous 95%: 400 uniform samples, binomial sd 1.1 points
    # an overconfident posterior piles ranks at the edges
    edges = np.concatenate([rng.integers(0, 10, 25), rng.integers(90, 100, 25)])
    assert not sbc.inside_band(edges, band)


def _run(shared_runs_path, families, n, **sampler):
    from bayes_scaling.population import resolve

    prior = resolve("public").prior()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sbc.run_sbc(prior, _designs(shared_runs_path, families), n, seed=0, **sampler)


@pytest.mark.slow
def test_sbc_ranks_are_uniform_on_a_ladder(shared_runs_path):
    _check(_run(shared_runs_path, ["pythia"], 50, warmup=300, draws=300))


@pytest.mark.slow
def test_sbc_ranks_are_uniform_at_backtest_settings(shared_runs_path):
    _check(_run(shared_runs_path, FAMILIES, 200))
