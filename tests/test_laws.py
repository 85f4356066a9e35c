"""Tier 1: the scaling-law maths, checked against hand-computed numbers."""

import numpy as np
import pytest

from bayes_scaling import laws


def test_chinchilla_matches_raw_formula():
    # Besiroglu et al. 2024 values at N = 7e9, D = 1.4e12, computed directly in raw units
    E, A, B, alpha, beta = 1.82, 482.0, 2085.0, 0.35, 0.37
    N, D = 7e9, 1.4e12
    expected = E + A / N**alpha + B / D**beta
    log_a, log_b = laws.from_raw(np.log(A), np.log(B), alpha, beta)
    x_n, x_d = laws.centre(N, D)
    got = float(np.exp(laws.chinchilla_log_loss(x_n, x_d, np.log(E), log_a, log_b, alpha, beta)))
    assert got == pytest.approx(expected, rel=1e-5)


def test_reference_point_terms_are_exp_log_a_and_log_b():
    # at the reference point each term equals exp(log_a) and exp(log_b)
    got = float(np.exp(laws.chinchilla_log_loss(0.0, 0.0, np.log(1.5), np.log(0.3), np.log(0.2), 0.3, 0.3)))
    assert got == pytest.approx(1.5 + 0.3 + 0.2, rel=1e-6)


def test_no_overflow_at_extreme_scales():
    # tiny N and D would overflow exp in raw units; log space stays finite
    x_n, x_d = laws.centre(1e2, 1e3)
    value = laws.chinchilla_log_loss(x_n, x_d, 0.5, 30.0, 30.0, 0.35, 0.37)
    assert np.isfinite(float(value))


def test_raw_round_trip():
    log_a, log_b = laws.from_raw(6.2, 7.6, 0.34, 0.28)
    back = laws.to_raw(log_a, log_b, 0.34, 0.28)
    np.testing.assert_allclose(back, (6.2, 7.6), rtol=1e-12)


def test_broadcasting_over_draws_and_points():
    x_n, x_d = laws.centre(np.array([1e8, 1e9, 1e10]), np.array([1e10, 1e11, 1e12]))
    log_e = np.full((4, 1), 0.5)
    out = laws.chinchilla_log_loss(x_n, x_d, log_e, -1.0, -1.7, 0.35, 0.37)
    assert out.shape == (4, 3)
    # loss falls with scale along the diagonal
    assert np.all(np.diff(np.asarray(out[0])) < 0)


def test_level_coordinates_round_trip_and_meaning():
    # theta -> level coordinates -> theta is the identity; the level is the log loss at the
    # centre; e_vs_n and d_vs_rest are the log ratios of the terms there (hand-computed)
    import jax

    theta = np.array([[np.log(1.5), np.log(0.3), np.log(0.2), 0.3, 0.4], [-3.0, 1.0, -2.0, 0.8, 0.1]])
    x_n0, x_d0 = np.array([-2.0, 1.5]), np.array([0.5, -1.0])
    level = np.asarray(laws.to_level_coordinates(theta, x_n0, x_d0))
    np.testing.assert_allclose(np.asarray(laws.from_level_coordinates(level, x_n0, x_d0)), theta, atol=1e-6)
    np.testing.assert_allclose(level[:, 0], np.asarray(laws.chinchilla_log_loss(x_n0, x_d0, *theta.T)), rtol=1e-6)
    e, a0, b0 = np.exp(theta[0, 0]), np.exp(theta[0, 1] + 0.3 * 2.0), np.exp(theta[0, 2] - 0.4 * 0.5)
    assert level[0, 1] == pytest.approx(np.log(e / a0), rel=1e-6)
    assert level[0, 2] == pytest.approx(np.log(b0 / (e + a0)), rel=1e-6)
    # unit Jacobian: the prior density carries over without a correction term
    jac = jax.jacfwd(laws.from_level_coordinates)(level[1], x_n0[1], x_d0[1])
    assert abs(float(np.linalg.det(np.asarray(jac)))) == pytest.approx(1.0, rel=1e-5)
