"""Scaling-law forms as pure JAX functions, evaluated in log space.

Covariates are centred: ``x_n = log(N / N_ref)`` and ``x_d = log(D / D_ref)``, and the
coefficients ``log_a`` and ``log_b`` are the log of each term *at the reference point*.
In raw units ``log A`` and ``alpha`` are almost perfectly correlated and NUTS crawls; at
the reference point they are close to independent.

Raw-unit Chinchilla coefficients convert with ``log A_raw = log_a + alpha * log(N_ref)``.
"""

import jax
import jax.numpy as jnp
import numpy as np

#: Order of the per-family parameter vector ``theta`` used by models and predictions.
PARAM_NAMES = ("log_e", "log_a", "log_b", "alpha", "beta")

#: Default reference points (parameters, tokens) at which log_a and log_b are defined.
REFERENCE_PARAMS = 1e9
REFERENCE_TOKENS = 1e11


def centre(num_params, tokens, reference_params=REFERENCE_PARAMS, reference_tokens=REFERENCE_TOKENS):
    """Centred log covariates ``(log(N / N_ref), log(D / D_ref))`` as NumPy arrays."""
    x_n = np.log(np.asarray(num_params, dtype=float) / reference_params)
    x_d = np.log(np.asarray(tokens, dtype=float) / reference_tokens)
    return x_n, x_d


def chinchilla_log_loss(x_n, x_d, log_e, log_a, log_b, alpha, beta):
    """Log of the Chinchilla loss ``E + A / N^alpha + B / D^beta`` in centred covariates.

    Parameters
    ----------
    x_n, x_d : array
        ``log(N / N_ref)`` and ``log(D / D_ref)`` (natural log; N in parameters, D in tokens).
    log_e : array
        Log irreducible loss (log nats/token).
    log_a, log_b : array
        Log of the parameter and data terms at the reference point.
    alpha, beta : array
        Exponents of N and D.

    Returns
    -------
    array
        ``log L``, broadcast over all inputs.
    """
    terms = jnp.broadcast_arrays(log_e, log_a - alpha * x_n, log_b - beta * x_d)
    return jax.nn.logsumexp(jnp.stack(terms), axis=0)


#: Order of the level coordinates of :func:`to_level_coordinates`.
LEVEL_NAMES = ("log_level", "e_vs_n", "d_vs_rest", "alpha", "beta")


def _split(log_total, logit):
    """(log p + total, log (1 - p) + total) with p = sigmoid(logit): a sum split in two."""
    return log_total - jax.nn.softplus(-logit), log_total - jax.nn.softplus(logit)


def to_level_coordinates(theta, x_n0, x_d0):
    """theta -> (log_level, e_vs_n, d_vs_rest, alpha, beta) at a family's data centre.

    With ``A0 = exp(log_a - alpha x_n0)`` and ``B0 = exp(log_b - beta x_d0)`` the N and D
    terms at the centre ``(x_n0, x_d0)`` of the family's data: ``log_level = log(E + A0 +
    B0)`` (the loss there), ``e_vs_n = log E - log A0`` and ``d_vs_rest = log B0 - log(E +
    A0)``. Data pin the level but often not how it splits (one model size cannot tell E
    from the N term; a short token range, E from a flat D term): thin curved ridges in
    theta, straight ones here. Each step is ``(a, b) -> (logaddexp(a, b), a - b)``, whose
    Jacobian has determinant -1, so densities carry over unchanged.
    """
    theta = jnp.asarray(theta)
    log_e, alpha, beta = theta[..., 0], theta[..., 3], theta[..., 4]
    log_a0 = theta[..., 1] - alpha * x_n0
    log_b0 = theta[..., 2] - beta * x_d0
    log_en = jnp.logaddexp(log_e, log_a0)
    return jnp.stack([jnp.logaddexp(log_en, log_b0), log_e - log_a0, log_b0 - log_en, alpha, beta], axis=-1)


def from_level_coordinates(level, x_n0, x_d0):
    """Inverse of :func:`to_level_coordinates`."""
    level = jnp.asarray(level)
    alpha, beta = level[..., 3], level[..., 4]
    log_b0, log_en = _split(level[..., 0], level[..., 2])
    log_e, log_a0 = _split(log_en, level[..., 1])
    return jnp.stack([log_e, log_a0 + alpha * x_n0, log_b0 + beta * x_d0, alpha, beta], axis=-1)


def to_raw(log_a, log_b, alpha, beta, reference_params=REFERENCE_PARAMS, reference_tokens=REFERENCE_TOKENS):
    """Convert centred ``(log_a, log_b)`` to raw-unit ``(log A, log B)`` of ``A / N^alpha``."""
    return (log_a + alpha * np.log(reference_params), log_b + beta * np.log(reference_tokens))


def from_raw(log_a_raw, log_b_raw, alpha, beta, reference_params=REFERENCE_PARAMS, reference_tokens=REFERENCE_TOKENS):
    """Inverse of :func:`to_raw`: raw ``(log A, log B)`` to centred ``(log_a, log_b)``."""
    return (log_a_raw - alpha * np.log(reference_params), log_b_raw - beta * np.log(reference_tokens))
