"""A population of scaling-law families: what a new family borrows, as data.

A :class:`Population` holds, for each member family, a summary of its posterior when fitted
alone under weak priors (the single-family model of :mod:`bayes_scaling.cellfit`, with the
size discrepancy): the mean and covariance of its law parameters theta = (log_e, log_a,
log_b, alpha, beta) and the log-moments of its scales (run spread, checkpoint noise, size
discrepancy), plus provenance (source group, loss unit, how it was built). From these
:meth:`Population.prior` makes the prior of a new family; :meth:`Population.without` drops
families first, which is how the back-test keeps a held-out family's whole source group out
of its own prior.

Borrowing, decided once (not tuned per family):

* The population of theta is a random-effects meta-analysis of the members' posteriors
  (:func:`bayes_scaling.cellfit.random_effects`): a member weighs by how well it pins each
  direction. The prior is its predictive for a new family, a multivariate Student-t with
  ``F - 4`` degrees of freedom (F members), so a family unlike the others can follow its data.
* Loss units are not borrowed. A loss in another unit (per word instead of per token,
  another tokenizer or eval set, a normalised curve) is the same curve scaled, and scaling
  the loss adds one constant to log E, log A and log B together. The population is fitted
  in the four directions orthogonal to that one, so members in any unit inform the shape of
  the law (how the loss splits into E, N and D terms, and the exponents); along the unit
  direction the prior is wide (:data:`UNIT_SHIFT_SD`), so a family's own data set its level.
  No metric metadata is needed, which matters for users' families whose units are unknown.
* Scales (run spread, noise, size discrepancy) are on log loss, free of units: log-normals
  matched to the members' pooled posterior draws.
* The size discrepancy is measured out of sample. Fitted to all its sizes, a member's law
  absorbs most of how its runs bend away from the Chinchilla form, so its in-sample
  ``sigma_size`` is several times smaller than the error of an extrapolation (the back-test's
  90% intervals covered about 74% of targets with it). Each member is therefore also fitted
  to its smaller half of sizes (at least two) and predicts its largest, as a user predicts a
  target from pilot runs; the member's ``sigma_size`` row is the posterior
  of the discrepancy given that one extrapolation error (:func:`extrapolated_size_moments`,
  under the build's half-normal prior), with the fit's own parameter, run and noise
  uncertainty taken out first, so a member whose smaller sizes say little adds little.

Files are NetCDF (:meth:`Population.save`, :func:`load`) with a format name and version, a
content checksum, and provenance in attributes; the public population built from the shared
corpus ships with the package (``population="public"``, :func:`public`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import xarray as xr

from .cellfit import N_PARAMS, CellPrior, FamilyArrays, _tril, independent_prior, noise_variance, random_effects, stable_seed
from .convergence import MIXED_RHAT
from .data import Filters, prepare
from .errors import ConvergenceWarning, DataError, PopulationError
from .laws import PARAM_NAMES

__all__ = [
    "BUILD_DEFAULTS",
    "FORMAT_VERSION",
    "Population",
    "UNIT_SHIFT_SD",
    "build",
    "extrapolated_size_moments",
    "extrapolation_check",
    "load",
    "public",
    "resolve",
]

FORMAT = "bayes_scaling.population"
#: 2: the members' ``sigma_size`` rows come from the extrapolation check (1: in-sample).
FORMAT_VERSION = 2
#: Prior sd of a common shift of log E, log A and log B (the log of a change of loss unit):
#: a unit within a factor e^2 ~ 7 either way at 95%. Per-word against per-token losses differ
#: by the tokens per word (~1.3x), normalised curves by their first loss (several-fold).
UNIT_SHIFT_SD = 1.0
#: The direction in theta that a change of loss unit moves (log E, log A, log B together).
UNIT_DIRECTION = np.array([1.0, 1.0, 1.0, 0.0, 0.0]) / math.sqrt(3.0)
#: Scales summarised per member, in this order.
SCALES = ("sigma_run", "sigma_obs", "sigma_size")
#: Families never in a population: values not in nats per token (shared data README).
EXCLUDE = ("llm360-mamba",)
#: How a population is built (each member family fitted alone under the weak priors):
#: ``min_tokens`` token cut, ``max_checkpoints`` per run (log-spaced), ``min_sizes`` distinct
#: model sizes a member needs, ``size_scale`` half-normal scale of the size discrepancy
#: (2% of the loss per e-fold of model size), sampler settings of each member's fit.
BUILD_DEFAULTS = dict(min_tokens=1e10, max_checkpoints=8, min_sizes=3, size_scale=0.02, chains=2, warmup=1000, draws=1000, target_accept=0.9, max_tree_depth=8)
PUBLIC_NAME = "public"


def _unit_basis() -> np.ndarray:
    """Orthonormal basis (5, 4) of the directions in theta orthogonal to :data:`UNIT_DIRECTION`."""
    q, _ = np.linalg.qr(np.column_stack([UNIT_DIRECTION, np.eye(N_PARAMS)]))
    return q[:, 1:N_PARAMS]


@dataclass(frozen=True)
class Population:
    """Member families' posterior summaries and provenance (plain NumPy; picklable).

    Attributes
    ----------
    members : DataFrame
        One row per family: ``family``, ``group`` (source group: families sharing data, code
        and units), ``unit`` (``metric:eval_set`` where known), ``n_points``, ``n_runs``,
        ``n_sizes``, ``divergences``, ``max_rhat``, and the extrapolation check of
        :func:`extrapolation_check`: ``extrap_residual``, ``extrap_sd``, ``extrap_distance``.
    theta_mean : ndarray (F, 5)
        Posterior mean of theta per member (centred units, :mod:`bayes_scaling.laws`).
    theta_cov : ndarray (F, 5, 5)
        Posterior covariance of theta per member.
    log_scales : ndarray (F, 3, 2)
        Mean and sd of the log of each member's posterior of :data:`SCALES` (run spread and
        noise: its draws; size discrepancy: the extrapolation check, see the module docstring).
    nu : float
        Likelihood degrees of freedom of the member fits (math.inf: Normal).
    settings : dict
        How it was built (:data:`BUILD_DEFAULTS` keys, seed).
    provenance : dict
        Package version, creation time, what the runs table was.
    """

    members: pd.DataFrame
    theta_mean: np.ndarray
    theta_cov: np.ndarray
    log_scales: np.ndarray
    nu: float
    settings: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        f = len(self.members)
        shapes = {"theta_mean": (f, N_PARAMS), "theta_cov": (f, N_PARAMS, N_PARAMS), "log_scales": (f, len(SCALES), 2)}
        for name, shape in shapes.items():
            value = np.asarray(getattr(self, name), float)
            if value.shape != shape:
                raise PopulationError(f"population {name} has shape {value.shape}, expected {shape}")
            object.__setattr__(self, name, value)

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(self.members["family"])

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(self.members["group"])

    def group_of(self, family: str) -> str | None:
        """Source group of a member family (None when it is not a member)."""
        hit = self.members.loc[self.members["family"] == family, "group"]
        return str(hit.iloc[0]) if len(hit) else None

    def without(self, groups: Iterable[str] = (), families: Iterable[str] = ()) -> "Population":
        """This population less the members of ``groups`` and the ``families`` named."""
        drop = self.members["group"].isin(list(groups)).to_numpy() | self.members["family"].isin(list(families)).to_numpy()
        keep = np.flatnonzero(~drop)
        settings = {**self.settings, "left_out": sorted(set(self.settings.get("left_out", [])) | set(self.members["family"][drop]))}
        return Population(
            self.members.iloc[keep].reset_index(drop=True),
            self.theta_mean[keep],
            self.theta_cov[keep],
            self.log_scales[keep],
            self.nu,
            settings,
            self.provenance,
        )

    def prior(self) -> CellPrior:
        """Prior of a new family's theta and scales (see the module docstring).

        theta ~ multivariate Student-t, ``F - 4`` degrees of freedom: in the four directions
        orthogonal to a change of unit, location and scale ``Sigma F / (F - 4) + Cov(mu)`` of
        the random-effects population of the members; along the unit direction, the
        members' mean level and sd ``UNIT_SHIFT_SD`` per log level. Scales: log-normals
        matched to the pooled posterior draws of the members.
        """
        n = len(self.members)
        if n < 2:
            raise PopulationError(f"a population prior needs >= 2 member families, this population has {n}")
        basis = _unit_basis()
        means = self.theta_mean @ basis
        covs = np.einsum("pi,fpq,qj->fij", basis, self.theta_cov, basis) + 1e-9 * np.eye(N_PARAMS - 1)
        mu, sigma, mu_cov = random_effects(means, covs)
        df = max(n - (N_PARAMS - 1), 1)
        level = float(np.mean(self.theta_mean @ UNIT_DIRECTION))
        unit_sd = UNIT_SHIFT_SD * math.sqrt(3.0)  # a shift c of each log level moves c sqrt(3) along the unit direction
        cov = basis @ (sigma * n / df + mu_cov) @ basis.T + unit_sd**2 * np.outer(UNIT_DIRECTION, UNIT_DIRECTION)
        pooled = _pooled_log_moments(self.log_scales)
        return CellPrior(
            loc=basis @ mu + level * UNIT_DIRECTION,
            scale_tril=_tril(cov),
            scale_kind="lognormal",
            run_scale=pooled[0],
            noise_scale=pooled[1],
            nu=self.nu,
            size_scale=pooled[2],
            df=float(df),
            source=f"population of {n} families" + (f" (left out: {', '.join(self.settings['left_out'])})" if self.settings.get("left_out") else ""),
        )

    # ------------------------------------------------------------------ files

    def to_dataset(self) -> xr.Dataset:
        members = self.members.reset_index(drop=True)
        ds = xr.Dataset(
            {
                "theta_mean": (("family", "param"), self.theta_mean),
                "theta_cov": (("family", "param", "param_"), self.theta_cov),
                "log_scales": (("family", "scale", "moment"), self.log_scales),
                **{c: ("family", members[c].to_numpy()) for c in members.columns if c != "family"},
            },
            coords={"family": members["family"].astype(str).to_numpy(), "param": list(PARAM_NAMES), "param_": list(PARAM_NAMES), "scale": list(SCALES), "moment": ["mean", "sd"]},
        )
        ds.attrs = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "nu": self.nu,
            "settings": json.dumps(self.settings, sort_keys=True),
            "provenance": json.dumps(self.provenance, sort_keys=True),
            "member_columns": json.dumps(list(members.columns)),
        }
        ds.attrs["checksum"] = _checksum(ds)
        return ds

    @classmethod
    def from_dataset(cls, ds: xr.Dataset, source: str = "<dataset>") -> "Population":
        if ds.attrs.get("format") != FORMAT:
            raise PopulationError(f"{source} is not a bayes_scaling population (format attribute {ds.attrs.get('format')!r})")
        version = int(ds.attrs.get("format_version", -1))
        if version != FORMAT_VERSION:
            raise PopulationError(f"{source} is population format version {version}; this bayes_scaling reads version {FORMAT_VERSION} (rebuild it with 'bayes-scaling population build')")
        if ds.attrs.get("checksum") != _checksum(ds):
            raise PopulationError(f"{source} is corrupted: its contents do not match the checksum written with it")
        columns = json.loads(ds.attrs["member_columns"])
        members = pd.DataFrame({c: (ds["family"] if c == "family" else ds[c]).to_numpy() for c in columns})
        for c in ("family", "group", "unit"):
            members[c] = members[c].astype(str)
        return cls(
            members,
            ds["theta_mean"].to_numpy(),
            ds["theta_cov"].to_numpy(),
            ds["log_scales"].to_numpy(),
            float(ds.attrs["nu"]),
            json.loads(ds.attrs["settings"]),
            json.loads(ds.attrs["provenance"]),
        )

    def save(self, path) -> Path:
        """Write NetCDF atomically (a temporary file renamed into place); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            self.to_dataset().to_netcdf(tmp, engine="h5netcdf")
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a population is meant to be shared
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path


def _checksum(ds: xr.Dataset) -> str:
    """SHA-256 of every variable's values and the attributes other than the checksum."""
    h = hashlib.sha256()
    for name in sorted(ds.variables):
        values = ds[name].to_numpy()
        h.update(name.encode())
        # canonical bytes: strings joined, numbers as float64 (NetCDF may return other dtypes)
        h.update("\0".join(map(str, values.ravel())).encode() if values.dtype.kind in "OUS" else values.astype(float).tobytes())
    attrs = {k: v.item() if hasattr(v, "item") else v for k, v in ds.attrs.items() if k != "checksum"}
    h.update(json.dumps(attrs, sort_keys=True).encode())
    return h.hexdigest()


def _pooled_log_moments(log_scales: np.ndarray) -> list[tuple[float, float]]:
    """Mean and sd of the log of the members' pooled draws (equal draws per member), per scale."""
    mean, sd = log_scales[..., 0], log_scales[..., 1]
    pooled_mean = mean.mean(axis=0)
    pooled_sd = np.sqrt((sd**2 + (mean - pooled_mean) ** 2).mean(axis=0))
    return [(float(m), float(max(s, 1e-3))) for m, s in zip(pooled_mean, pooled_sd)]


def load(path) -> Population:
    """Read a population written by :meth:`Population.save`; PopulationError when it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise PopulationError(f"population file not found: {path}")
    try:
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            ds = ds.load()
    except Exception as exc:  # noqa: BLE001 - h5py/netCDF raise many kinds for a damaged file
        raise PopulationError(f"cannot read population file {path}: {type(exc).__name__}: {exc}") from exc
    return Population.from_dataset(ds, str(path))


def public() -> Population:
    """The population built from the public corpus, shipped with the package (see NOTICE)."""
    return load(resources.files("bayes_scaling") / "populations" / f"{PUBLIC_NAME}.nc")


def resolve(population) -> Population:
    """``"public"``, a path or a :class:`Population` -> Population."""
    if isinstance(population, Population):
        return population
    if isinstance(population, str) and population == PUBLIC_NAME:
        return public()
    if isinstance(population, (str, os.PathLike)):
        return load(population)
    raise PopulationError(f"population must be 'public', a path or a Population, got {type(population).__name__}")


# ---------------------------------------------------------------------- building


@dataclass(frozen=True)
class _MemberJob:
    """One member's fit (picklable for an executor)."""

    family: str
    arrays: FamilyArrays
    prior: CellPrior
    seed: int
    sampler: dict


def _fit_member(job: _MemberJob):
    start = time.perf_counter()
    post = job.arrays.fit(job.prior, seed=job.seed, **job.sampler)
    check = extrapolation_check(job.arrays, job.prior, seed=job.seed, **job.sampler)
    return post, check, time.perf_counter() - start


#: Log-spaced grid of the size discrepancy (sd of log loss per e-fold of N) on which
#: :func:`extrapolated_size_moments` integrates; 1e-5 is far below any measured noise.
SIZE_GRID = np.geomspace(1e-5, 1.0, 4001)


def extrapolation_check(arrays: FamilyArrays, prior: CellPrior, *, seed: int = 0, **sampler) -> tuple[float, float, float]:
    """Fit a family's smaller half of sizes (at least two) and predict its largest size:
    the extrapolation a user makes from pilot runs to a target.

    Returns ``(residual, sd, distance)``: the mean log loss of the largest size's
    checkpoints less the fit's mean prediction of it; the sd that prediction has without
    any size discrepancy (the law's posterior spread of that mean, the run offset shared by
    the size's ``R`` runs, ``sigma_run / sqrt(R)``, and the noise averaged over its points);
    and the distance in log N from the fit's largest size to the held-out one.
    """
    sizes = np.unique(arrays.x_n)  # every checkpoint of a run carries its run's x_n
    if sizes.size < 3:
        raise DataError(f"the extrapolation check needs >= 3 model sizes; this family has {sizes.size}")
    n_train = max(2, sizes.size // 2)
    held = arrays.x_n == sizes[-1]
    fitted = arrays.x_n <= sizes[n_train - 1]
    _, run_idx = np.unique(arrays.run_idx[fitted], return_inverse=True)
    train = FamilyArrays.from_arrays(arrays.x_n[fitted], arrays.x_d[fitted], run_idx, arrays.log_loss[fitted])
    post = train.fit(prior, seed=seed, **sampler)
    mean_log = post.log_law(arrays.x_n[held], arrays.x_d[held]).mean(axis=1)
    n_runs = np.unique(arrays.run_idx[held]).size
    noise_var = np.mean(noise_variance(post.sigma_obs, post.nu))
    variance = np.var(mean_log) + np.mean(post.sigma_run**2) / n_runs + noise_var / int(held.sum())
    residual = float(np.mean(arrays.log_loss[held]) - np.mean(mean_log))
    return residual, float(math.sqrt(variance)), float(arrays.x_n.max() - post.size_anchor)


def extrapolated_size_moments(residual: float, sd: float, distance: float, scale: float) -> tuple[float, float]:
    """Mean and sd of log ``sigma_size`` given one extrapolation error.

    ``residual ~ Normal(0, sqrt(sd^2 + (sigma_size distance)^2))`` with ``sigma_size`` half-normal
    of scale ``scale`` (the prior of the member fits), integrated on :data:`SIZE_GRID`. An
    error within the prediction's own ``sd`` leaves the prior (log-mean ``log scale - 0.64``,
    log-sd 1.1); a larger one moves ``sigma_size`` towards ``|residual| / distance``.
    """
    if not (math.isfinite(residual) and sd > 0 and distance > 0 and scale > 0):
        raise ValueError(f"need a finite residual and positive sd, distance and scale; got {residual}, {sd}, {distance}, {scale}")
    s = SIZE_GRID
    var = sd**2 + (s * distance) ** 2
    # log density on a log-spaced grid: likelihood x half-normal prior x Jacobian s
    log_post = -0.5 * residual**2 / var - 0.5 * np.log(var) - 0.5 * (s / scale) ** 2 + np.log(s)
    w = np.exp(log_post - log_post.max())
    w /= w.sum()
    mean = float(np.sum(w * np.log(s)))
    return mean, float(math.sqrt(np.sum(w * (np.log(s) - mean) ** 2)))


def _first_value(table: pd.DataFrame, column: str) -> str:
    return str(table[column].iloc[0]) if column in table.columns else ""


def source_groups(table: pd.DataFrame) -> dict[str, str]:
    """Family -> source group: the ``source`` column (families sharing data, code and
    units), or the family itself where the table has none or the family's is empty (an
    empty source is no evidence of siblings; pandas 3 keeps it NaN through ``astype(str)``,
    which left the group NaN and a population file holding it unreadable)."""
    if "source" not in table.columns:
        return {f: f for f in table["family"].unique()}
    first = table.groupby("family")["source"].first()  # first non-empty value
    return {str(f): str(s) if pd.notna(s) and str(s).strip() else str(f) for f, s in first.items()}


def build(
    runs,
    *,
    min_tokens: float = BUILD_DEFAULTS["min_tokens"],
    max_checkpoints: int | None = BUILD_DEFAULTS["max_checkpoints"],
    min_sizes: int = BUILD_DEFAULTS["min_sizes"],
    size_scale: float = BUILD_DEFAULTS["size_scale"],
    chains: int = BUILD_DEFAULTS["chains"],
    warmup: int = BUILD_DEFAULTS["warmup"],
    draws: int = BUILD_DEFAULTS["draws"],
    target_accept: float = BUILD_DEFAULTS["target_accept"],
    max_tree_depth: int = BUILD_DEFAULTS["max_tree_depth"],
    seed: int = 0,
    exclude: Iterable[str] = EXCLUDE,
    families: Iterable[str] | None = None,
    progress: Callable[[str, float], None] | None = None,
    executor=None,
    description: str = "",
) -> Population:
    """Fit every eligible family of a runs table alone and summarise it as a population member.

    Parameters
    ----------
    runs : path or DataFrame
        A runs table (:mod:`bayes_scaling.data`); one curve per run (``is_primary`` rows).
        An optional ``source`` column names each family's source group (families sharing
        data, code and units); without it each family is its own group.
    min_tokens, max_checkpoints : float, int
        Token cut and log-spaced checkpoints kept per run.
    min_sizes : int
        Distinct model sizes (at the cut) a family needs to be a member (>= 3): with fewer, its
        exponent of N is not identified and it would only add noise, and the extrapolation
        check needs two sizes besides the largest.
    size_scale : float
        Half-normal scale of each member's size discrepancy (sd of log loss per e-fold).
    chains, warmup, draws, target_accept, max_tree_depth
        NUTS settings of each member's fit.
    seed : int
        Seed; each member's sampler seed is a hash of its name and this.
    exclude : iterable of str
        Families never used (default: those whose values are not losses in nats).
    families : iterable of str, optional
        Only these families.
    progress : callable, optional
        Called ``progress(family, seconds)`` as each member's fit finishes.
    executor : optional
        Object with ``map_unordered(fn, items)`` yielding ``(item, fn(item))`` (e.g. a
        :class:`bayes_scaling.distributed.ProcessExecutor`); default: in this process.
    description : str
        Where the runs came from, for the provenance.

    Returns
    -------
    Population
    """
    if not (isinstance(size_scale, (int, float)) and math.isfinite(size_scale) and size_scale > 0):
        raise DataError(f"size_scale must be a positive number, got {size_scale!r}")
    if min_sizes < 3:
        raise DataError(f"min_sizes must be >= 3 (each member is also fitted to its smaller sizes to predict its largest), got {min_sizes}")
    data = prepare(runs, Filters(min_tokens=min_tokens, max_checkpoints=max_checkpoints, families=None if families is None else tuple(families), drop_emptied=True))
    sizes = data.table.groupby("family")["num_params"].nunique()
    excluded = set(exclude)
    eligible = [f for f in data.families if sizes[f] >= min_sizes and f not in excluded]
    if len(eligible) < 2:
        raise DataError(f"a population needs >= 2 families with >= {min_sizes} model sizes at tokens >= {min_tokens:g}; found {eligible}")
    base = independent_prior()
    base = CellPrior(base.loc, base.scale_tril, base.scale_kind, base.run_scale, base.noise_scale, base.nu, base.source, (float(size_scale), 0.0))
    sampler = dict(chains=chains, warmup=warmup, draws=draws, target_accept=target_accept, max_tree_depth=max_tree_depth)
    jobs = [
        _MemberJob(f, FamilyArrays.of(data, data.families.index(f)), base, stable_seed((float(min_tokens), f, "population"), seed), sampler)
        for f in eligible
    ]
    results = {}
    mapped = executor.map_unordered(_fit_member, jobs) if executor is not None else ((job, _fit_member(job)) for job in jobs)
    for job, (post, check, seconds) in mapped:
        results[job.family] = post, check
        if progress is not None:
            progress(job.family, seconds)
    rows, means, covs, scales = [], [], [], []
    groups = source_groups(data.table)
    for f in eligible:
        (post, check), table = results[f], data.table[data.table["family"] == f]
        unit = ":".join(_first_value(table, c) for c in ("metric", "eval_set") if c in table.columns)
        rows.append(
            {
                "family": f,
                "group": groups[f],
                "unit": unit,
                "n_points": len(table),
                "n_runs": int(table["model"].nunique()),
                "n_sizes": int(sizes[f]),
                "divergences": int(post.divergences),
                "max_rhat": float(post.max_rhat),
                **dict(zip(("extrap_residual", "extrap_sd", "extrap_distance"), check)),
            }
        )
        means.append(post.theta.mean(axis=0))
        covs.append(np.cov(post.theta, rowvar=False))
        logs = [np.log(v) for v in (post.sigma_run, post.sigma_obs)]
        scales.append([[float(np.mean(x)), float(np.std(x))] for x in logs] + [list(extrapolated_size_moments(*check, scale=size_scale))])
    unmixed = [row["family"] for row in rows if row["max_rhat"] > MIXED_RHAT]  # NaN (one chain): not known
    if unmixed:
        warnings.warn(
            f"{len(unmixed)} member fit(s) did not mix (max r_hat > {MIXED_RHAT}): {', '.join(unmixed)}; their summaries "
            "may straddle several modes (rebuild with longer chains, or leave them out with exclude=)",
            ConvergenceWarning,
            stacklevel=2,
        )
    from . import __version__

    return Population(
        pd.DataFrame(rows),
        np.array(means),
        np.array(covs),
        np.array(scales),
        float(base.nu),
        {**BUILD_DEFAULTS, "min_tokens": float(min_tokens), "max_checkpoints": max_checkpoints, "min_sizes": int(min_sizes), "size_scale": float(size_scale), **sampler, "seed": int(seed), "exclude": sorted(excluded)},
        {"package_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": description or (Path(runs).name if isinstance(runs, (str, os.PathLike)) else type(runs).__name__)},
    )
