"""Point-estimate baselines of the Chinchilla law, as used by the back-test.

Two estimators, both pure functions of arrays ``(num_params, tokens, loss)``:

``classic``
    The fit of "A Hitchhiker's Guide to Scaling Law Estimation" (Choshen, Zhang, Andreas,
    2025) and its released code: :func:`scipy.optimize.curve_fit` of the *raw* loss

        L = exp(e) + exp(a) / N**alpha + exp(b) / D**beta

    from the start ``(a, b, e, alpha, beta) = (6.255414, 7.3049974, 0.6254804, 0.3526596,
    0.3526596)`` with bounds ``alpha, beta >= 0`` and an evaluation budget of
:data:`CLASSIC_MAX_NFEV` (the paper's ``maxfev=10000``); when the default trust-region solver fails
    it is retried once with ``method='dogbox'`` (``x_scale`` = the start, as in the paper's
    code). Its *naive* interval treats the fitted covariance ``pcov`` as a Gaussian
    posterior of the five parameters: parameter draws from ``N(popt, pcov)`` are pushed
    through the law and their quantiles taken. This ignores observation noise, run-to-run
    spread and model misfit, which is why it is the baseline for coverage.

``classic_huber``
    Chinchilla's approach 3 (Hoffmann et al. 2022): minimise the *sum* over points of the
    Huber loss (delta = 1e-3) between the law's log loss and the observed log loss, with
    L-BFGS-B from a grid of starts, keeping the best. A sum rather than a mean, because the
    mean makes the objective so flat that L-BFGS stops at its tolerance before moving. The
    optimisation runs in the centred parametrisation of :mod:`bayes_scaling.laws` (better
    conditioned, same model); the parameters are returned in the raw ``(a, b, e, alpha,
    beta)`` convention of ``classic``. No interval.

Units: ``num_params`` in parameters, ``tokens`` in tokens, ``loss`` in nats (any positive
loss; the law is fitted per family so its unit never mixes with another family's).
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit, minimize

from bayes_scaling.laws import REFERENCE_PARAMS, REFERENCE_TOKENS

#: Start of the paper's curve_fit, in raw units ``(a, b, e, alpha, beta)``.
CLASSIC_START = (6.255414, 7.3049974, 0.6254804, 0.3526596, 0.3526596)
#: Bounds of the paper's curve_fit: ``alpha, beta >= 0``.
CLASSIC_BOUNDS = ([-np.inf, -np.inf, -np.inf, 0.0, 0.0], [np.inf] * 5)
#: Evaluation budget of ``curve_fit`` (``max_nfev``): scipy's default (100 x the number of
#: parameters for the bounded solvers) stopped the fit on 2-3 families per k of the
#: back-test that succeed with this budget; a baseline must be at its best.
CLASSIC_MAX_NFEV = 10_000
#: Raw parameter names, in the order of :data:`CLASSIC_START`.
RAW_PARAM_NAMES = ("a", "b", "e", "alpha", "beta")

HUBER_DELTA = 1e-3
#: Grid of starts of ``classic_huber`` in centred units: (log_e, log_a, log_b, alpha, beta).
HUBER_GRID = (
    (-1.0, 0.0, 1.0),
    (-3.0, -1.5, 0.0),
    (-3.0, -1.5, 0.0),
    (0.1, 0.4, 1.0),
    (0.1, 0.4, 1.0),
)
#: Number of best-scoring grid starts L-BFGS-B runs from.
HUBER_STARTS = 8


@dataclass(frozen=True)
class PointFit:
    """Result of a point fit of the Chinchilla law.

    Attributes
    ----------
    method : str
        ``"classic"`` or ``"classic_huber"``.
    params : ndarray, shape (5,)
        Raw ``(a, b, e, alpha, beta)`` with ``L = e^e + e^a / N^alpha + e^b / D^beta``;
        NaN when the fit failed.
    cov : ndarray or None, shape (5, 5)
        Covariance of ``params`` reported by ``curve_fit`` (``classic`` only). May hold inf
        when the data do not determine all parameters (e.g. a single model size).
    ok : bool
        False when every attempt raised or returned non-finite parameters.
    message : str
        Which solver succeeded, or why the fit failed.
    n_points : int
        Number of points fitted.
    """

    method: str
    params: np.ndarray
    cov: np.ndarray | None = None
    ok: bool = True
    message: str = ""
    n_points: int = 0
    extra: dict = field(default_factory=dict)

    def predict(self, num_params, tokens) -> np.ndarray:
        """Loss predicted at ``(num_params, tokens)`` (nats); NaN if the fit failed."""
        n, d = _as_arrays(num_params, tokens)
        if not self.ok:
            return np.full(np.broadcast(n, d).shape, np.nan)
        return raw_loss(n, d, *self.params)

    def draws(self, num_params, tokens, n_draws=1000, seed=0) -> np.ndarray | None:
        """Loss draws ``(n_draws, points)`` from the naive Gaussian ``N(params, cov)``.

        Returns None when there is no usable covariance (``classic_huber``, failed fit,
        non-finite or non positive-semidefinite ``cov``).
        """
        if not self.ok or self.cov is None or not np.all(np.isfinite(self.cov)):
            return None
        n, d = _as_arrays(num_params, tokens)
        rng = np.random.default_rng(seed)
        cov = 0.5 * (self.cov + self.cov.T)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                theta = rng.multivariate_normal(self.params, cov, size=n_draws, method="eigh")
        except (np.linalg.LinAlgError, ValueError):
            return None
        with np.errstate(over="ignore", invalid="ignore"):
            out = raw_loss(n[None, :], d[None, :], *(theta[:, i : i + 1] for i in range(5)))
        return out

    def interval(self, num_params, tokens, level=0.9, n_draws=1000, seed=0):
        """Central ``level`` interval ``(lo, hi)`` of the naive parameter-uncertainty band.

        Both are NaN arrays when :meth:`draws` has nothing to offer.
        """
        n, d = _as_arrays(num_params, tokens)
        draws = self.draws(n, d, n_draws=n_draws, seed=seed)
        if draws is None:
            nan = np.full(n.shape, np.nan)
            return nan, nan.copy()
        q = (1 - level) / 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, hi = np.nanquantile(draws, [q, 1 - q], axis=0)
        return lo, hi


def _as_arrays(num_params, tokens):
    n = np.atleast_1d(np.asarray(num_params, dtype=float))
    d = np.atleast_1d(np.asarray(tokens, dtype=float))
    n, d = np.broadcast_arrays(n, d)
    return n.astype(float), d.astype(float)


def raw_loss(num_params, tokens, a, b, e, alpha, beta):
    """Chinchilla loss in the paper's raw parametrisation (nats).

    ``exp(e) + exp(a) / N**alpha + exp(b) / D**beta``, evaluated as
    ``exp(e) + exp(a - alpha log N) + exp(b - beta log D)`` so large exponents do not
    overflow before the subtraction.
    """
    with np.errstate(over="ignore"):
        return np.exp(e) + np.exp(a - alpha * np.log(num_params)) + np.exp(b - beta * np.log(tokens))


def _curve_fit_func(x, a, b, e, alpha, beta):
    return raw_loss(x[0], x[1], a, b, e, alpha, beta)


def _check_inputs(num_params, tokens, loss):
    n, d = _as_arrays(num_params, tokens)
    y = np.atleast_1d(np.asarray(loss, dtype=float))
    if not (n.shape == d.shape == y.shape):
        raise ValueError(f"num_params, tokens and loss differ in length: {n.shape}, {d.shape}, {y.shape}")
    if np.any(~np.isfinite(n) | (n <= 0)) or np.any(~np.isfinite(d) | (d <= 0)):
        raise ValueError("num_params and tokens must be finite and > 0")
    if np.any(~np.isfinite(y) | (y <= 0)):
        raise ValueError("loss must be finite and > 0")
    return n, d, y


def fit_classic(num_params, tokens, loss) -> PointFit:
    """The paper's ``curve_fit`` of the Chinchilla law (raw loss, least squares).

    Parameters
    ----------
    num_params, tokens : array_like
        Model parameters N and training tokens D of each checkpoint (> 0).
    loss : array_like
        Observed loss (nats, > 0).

    Returns
    -------
    PointFit
        ``ok=False`` (and NaN params) when both the default solver and the dogbox retry
        fail, including when there are fewer points than parameters.
    """
    n, d, y = _check_inputs(num_params, tokens, loss)
    x = np.vstack([n, d])
    attempts = (
        ("trf", dict()),
        ("dogbox", dict(method="dogbox", x_scale=np.asarray(CLASSIC_START))),
    )
    last_error = ""
    for name, kwargs in attempts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                popt, pcov = curve_fit(
                    _curve_fit_func, x, y, p0=CLASSIC_START, bounds=CLASSIC_BOUNDS, max_nfev=CLASSIC_MAX_NFEV, **kwargs
                )
        except (RuntimeError, ValueError, TypeError, np.linalg.LinAlgError) as err:
            last_error = f"{name}: {type(err).__name__}: {err}"
            continue
        if np.all(np.isfinite(popt)):
            return PointFit("classic", np.asarray(popt, float), np.asarray(pcov, float), True, name, len(y))
        last_error = f"{name}: non-finite parameters"
    return PointFit("classic", np.full(5, np.nan), None, False, last_error, len(y))


def _huber_objective(theta, x_n, x_d, log_y, delta):
    log_e, log_a, log_b, alpha, beta = theta
    t1 = np.full_like(x_n, log_e)
    t2 = log_a - alpha * x_n
    t3 = log_b - beta * x_d
    m = np.maximum(np.maximum(t1, t2), t3)
    w1, w2, w3 = np.exp(t1 - m), np.exp(t2 - m), np.exp(t3 - m)
    s = w1 + w2 + w3
    pred = m + np.log(s)
    r = pred - log_y
    a = np.abs(r)
    quad = a <= delta
    value = np.sum(np.where(quad, 0.5 * r**2, delta * (a - 0.5 * delta)))
    dr = np.where(quad, r, delta * np.sign(r))  # d huber / d r
    p1, p2, p3 = w1 / s, w2 / s, w3 / s
    grad = np.array(
        [
            np.sum(dr * p1),
            np.sum(dr * p2),
            np.sum(dr * p3),
            np.sum(dr * p2 * -x_n),
            np.sum(dr * p3 * -x_d),
        ]
    )
    return value, grad


def fit_classic_huber(
    num_params, tokens, loss, grid=HUBER_GRID, delta=HUBER_DELTA, n_starts=HUBER_STARTS
) -> PointFit:
    """Chinchilla approach 3: summed Huber loss on log loss, L-BFGS-B from a grid of starts.

    Every combination of ``grid`` is scored by the objective (one vectorised evaluation);
    L-BFGS-B then runs from the ``n_starts`` best-scoring starts and the lowest optimum is
    kept: nearly all starts reach the same optimum, and the screen saves running L-BFGS from
    each of them. Pass ``n_starts=None`` to run from every start.

    Parameters
    ----------
    num_params, tokens, loss : array_like
        As in :func:`fit_classic`.
    grid : sequence of 5 sequences
        Start values in centred units ``(log_e, log_a, log_b, alpha, beta)``
        (see :mod:`bayes_scaling.laws`).
    delta : float
        Huber threshold on the log-loss residual.
    n_starts : int or None
        Number of screened starts L-BFGS-B runs from (None: all).

    Returns
    -------
    PointFit
        Parameters converted to the raw convention of :func:`fit_classic`; ``cov`` is None.
    """
    n, d, y = _check_inputs(num_params, tokens, loss)
    x_n = np.log(n / REFERENCE_PARAMS)
    x_d = np.log(d / REFERENCE_TOKENS)
    log_y = np.log(y)
    bounds = [(None, None)] * 3 + [(0.0, None), (0.0, None)]
    starts = np.array(list(itertools.product(*grid)), dtype=float)
    if n_starts is not None and n_starts < len(starts):
        with np.errstate(over="ignore", invalid="ignore"):
            scores = np.array([_huber_objective(s, x_n, x_d, log_y, delta)[0] for s in starts])
        scores = np.where(np.isfinite(scores), scores, np.inf)
        starts = starts[np.argsort(scores, kind="stable")[:n_starts]]
    best = None
    for start in starts:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = minimize(
                _huber_objective,
                start,
                args=(x_n, x_d, log_y, delta),
                jac=True,
                method="L-BFGS-B",
                bounds=bounds,
            )
        if np.isfinite(res.fun) and np.all(np.isfinite(res.x)) and (best is None or res.fun < best.fun):
            best = res
    if best is None:
        return PointFit("classic_huber", np.full(5, np.nan), None, False, "no finite optimum", len(y))
    log_e, log_a, log_b, alpha, beta = best.x
    a = log_a + alpha * np.log(REFERENCE_PARAMS)
    b = log_b + beta * np.log(REFERENCE_TOKENS)
    params = np.array([a, b, log_e, alpha, beta])
    return PointFit(
        "classic_huber", params, None, True, "L-BFGS-B", len(y), extra={"objective": float(best.fun)}
    )
