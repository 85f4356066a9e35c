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


def to_raw(log_a, log_b, alpha, beta, reference_params=REFERENCE_PARAMS, reference_tokens=REFERENCE_TOKENS):
    """Convert centred ``(log_a, log_b)`` to raw-unit ``(log A, log B)`` of ``A / N^alpha``."""
    return (log_a + alpha * np.log(reference_params), log_b + beta * np.log(reference_tokens))


def from_raw(log_a_raw, log_b_raw, alpha, beta, reference_params=REFERENCE_PARAMS, reference_tokens=REFERENCE_TOKENS):
    """Inverse of :func:`to_raw`: raw ``(log A, log B)`` to centred ``(log_a, log_b)``."""
    return (log_a_raw - alpha * np.log(reference_params), log_b_raw - beta * np.log(reference_tokens))
