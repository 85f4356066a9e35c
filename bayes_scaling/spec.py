"""Model specs: ``models/*.toml`` files read strictly into frozen dataclasses.

A spec is a complete, self-contained model: form, pooling, priors, likelihood and default
data filters. TOML holds choices, never code: distribution names come from the closed
registry :data:`DISTRIBUTIONS`; any unknown key, unknown distribution or bad argument is a
:class:`~bayes_scaling.errors.SpecError` naming the file and the key.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import SpecError
from .laws import PARAM_NAMES

#: name -> (required argument names, support). "real" priors may go on means,
#: "positive" ones on scales.
DISTRIBUTIONS = {
    "normal": (("loc", "scale"), "real"),
    "student_t": (("df", "loc", "scale"), "real"),
    "half_normal": (("scale",), "positive"),
    "half_cauchy": (("scale",), "positive"),
    "lognormal": (("loc", "scale"), "positive"),
    "exponential": (("rate",), "positive"),
    "gamma": (("concentration", "rate"), "positive"),
    "lkj": (("concentration",), "correlation"),
}
#: Arguments that must be strictly positive; ``loc`` may be any real number.
POSITIVE_ARGS = {"scale", "df", "rate", "concentration"}

POOLINGS = ("partial", "none", "complete")
FAMILY_EFFECTS = ("auto", "centred", "noncentred", "level", "hybrid")
LIKELIHOODS = ("student_t", "normal")
FORMS = ("chinchilla",)


@dataclass(frozen=True)
class Prior:
    """One distribution from the registry with its arguments."""

    dist: str
    args: tuple[tuple[str, float], ...]

    def kwargs(self) -> dict[str, float]:
        return dict(self.args)

    def to_dict(self) -> dict:
        return {"dist": self.dist, **self.kwargs()}


@dataclass(frozen=True)
class Spec:
    """A resolved model spec. See ``models/chinchilla_hierarchical.toml`` for the meaning of each key."""

    name: str
    description: str
    form: str
    pooling: str
    family_effects: str
    run_offsets: bool
    reference_params: float
    reference_tokens: float
    mean_priors: tuple[Prior, ...]  # one per PARAM_NAMES entry
    family_scale_priors: tuple[Prior, ...] | None  # partial pooling only
    correlation_prior: Prior | None  # partial pooling only
    run_scale_prior: Prior
    noise_scale_prior: Prior
    single_checkpoint_noise_prior: Prior  # noise_scale_prior when the spec does not set one
    likelihood: str
    likelihood_df: float | None
    data: dict = field(default_factory=dict)
    source: str = "<dict>"

    @property
    def marginal_run_offsets(self) -> bool:
        """Run offsets integrated out analytically (exact with a Normal likelihood) instead of sampled."""
        return self.run_offsets and self.likelihood == "normal"

    def to_dict(self) -> dict:
        """The spec as the nested dict of its TOML file (round-trips through :func:`spec_from_dict`)."""
        priors = {
            "mean": {p: pr.to_dict() for p, pr in zip(PARAM_NAMES, self.mean_priors)},
            "run_scale": self.run_scale_prior.to_dict(),
            "noise_scale": self.noise_scale_prior.to_dict(),
            "single_checkpoint_noise_scale": self.single_checkpoint_noise_prior.to_dict(),
        }
        if self.family_scale_priors is not None:
            priors["family_scale"] = {p: pr.to_dict() for p, pr in zip(PARAM_NAMES, self.family_scale_priors)}
        if self.correlation_prior is not None:
            priors["correlation"] = self.correlation_prior.to_dict()
        likelihood = {"dist": self.likelihood}
        if self.likelihood_df is not None:
            likelihood["df"] = self.likelihood_df
        return {
            "model": {
                "name": self.name,
                "description": self.description,
                "form": self.form,
                "pooling": self.pooling,
                "family_effects": self.family_effects,
                "run_offsets": self.run_offsets,
            },
            "reference": {"params": self.reference_params, "tokens": self.reference_tokens},
            "priors": priors,
            "likelihood": likelihood,
            "data": dict(self.data),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace_data_defaults(self, **data) -> "Spec":
        """A copy with some ``[data]`` defaults replaced (unknown keys raise SpecError)."""
        merged = {**self.data, **data}
        return spec_from_dict(self.to_dict() | {"data": merged}, self.source)


def shipped_specs() -> list[str]:
    """Names of the specs shipped with the package (``models/*.toml``)."""
    return sorted(p.name[:-5] for p in resources.files("bayes_scaling.models").iterdir() if p.name.endswith(".toml"))


def load_spec(name_or_path: str | Path | Spec = "chinchilla_hierarchical") -> Spec:
    """Load a spec by shipped name (``"chinchilla_hierarchical"``) or from a TOML path.

    Raises
    ------
    SpecError
        Unknown name, unreadable file, invalid TOML or any invalid key/value.
    """
    if isinstance(name_or_path, Spec):
        return name_or_path
    if not isinstance(name_or_path, (str, Path)):
        raise SpecError(f"a spec is a shipped name, a .toml path or a Spec, got {type(name_or_path).__name__}")
    text_path = str(name_or_path)
    if text_path.endswith(".toml") or Path(text_path).exists():
        path = Path(text_path)
        if not path.is_file():
            raise SpecError(f"{path}: spec file not found")
        try:
            text, source = path.read_text(encoding="utf-8"), str(path)
        except UnicodeDecodeError:
            raise SpecError(f"{path}: not a text file (a spec is UTF-8 TOML)") from None
        except OSError as exc:
            raise SpecError(f"{path}: cannot read spec: {exc.strerror or exc}") from exc
    else:
        resource = resources.files("bayes_scaling.models") / f"{text_path}.toml"
        if not resource.is_file():
            raise SpecError(f"unknown spec {text_path!r}; shipped specs: {shipped_specs()} (or give a .toml path)")
        text, source = resource.read_text(), f"{text_path}.toml"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{source}: invalid TOML: {exc}") from exc
    return spec_from_dict(raw, source)


def spec_from_json(text: str, source: str = "<saved fit>") -> Spec:
    return spec_from_dict(json.loads(text), source)


class _Reader:
    """Reads one table of a spec, remembering the key path for error messages."""

    def __init__(self, table, source: str, path: str):
        if not isinstance(table, dict):
            raise SpecError(f"{source}: key '{path}' must be a table, got {type(table).__name__}")
        self.table, self.source, self.path = table, source, path
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, message: str) -> SpecError:
        return SpecError(f"{self.source}: key '{self.key(name)}' {message}")

    def get(self, name: str, kind, default=...):
        self.used.add(name)
        if name not in self.table:
            if default is ...:
                raise self.error(name, "is required")
            return default
        value = self.table[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise self.error(name, f"must be {getattr(kind, '__name__', kind)}, got {value!r}")
        return value

    def choice(self, name: str, options, default=...):
        value = self.get(name, str, default)
        if value not in options:
            raise self.error(name, f"must be one of {list(options)}, got {value!r}")
        return value

    def sub(self, name: str, default=...) -> "_Reader":
        return _Reader(self.get(name, dict, default), self.source, self.key(name))

    def finish(self):
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.error(unknown[0], f"is not a known key (known here: {sorted(self.used)})")


def _prior(reader: _Reader, name: str, support: str) -> Prior:
    table = reader.sub(name)
    dist = table.get("dist", str)
    if dist not in DISTRIBUTIONS:
        raise table.error("dist", f"names unknown distribution {dist!r}; known: {sorted(DISTRIBUTIONS)}")
    arg_names, dist_support = DISTRIBUTIONS[dist]
    if dist_support != support:
        raise table.error("dist", f"{dist!r} has {dist_support} support but this prior needs a {support} one")
    args = []
    for arg in arg_names:
        value = table.get(arg, float)
        if not math.isfinite(value) or (arg in POSITIVE_ARGS and value <= 0):
            raise table.error(arg, f"must be a finite{' positive' if arg in POSITIVE_ARGS else ''} number, got {value!r}")
        args.append((arg, value))
    table.finish()
    return Prior(dist, tuple(args))


def _param_priors(reader: _Reader, name: str, support: str) -> tuple[Prior, ...]:
    table = reader.sub(name)
    priors = tuple(_prior(table, p, support) for p in PARAM_NAMES)
    table.finish()
    if len({p.dist for p in priors}) > 1:
        raise reader.error(name, f"must use one distribution for all of {list(PARAM_NAMES)} (they are sampled as one vector)")
    return priors


#: Keys allowed in ``[data]`` and their types: defaults for :class:`bayes_scaling.data.Filters`.
DATA_KEYS = {"min_tokens": float, "max_checkpoints": int, "primary_only": bool}


def spec_from_dict(raw: dict, source: str = "<dict>") -> Spec:
    """Build a :class:`Spec` from the nested dict of a TOML file, checking every key."""
    root = _Reader(raw, source, "")
    model = root.sub("model")
    name = model.get("name", str)
    description = model.get("description", str, "")
    form = model.choice("form", FORMS, "chinchilla")
    pooling = model.choice("pooling", POOLINGS)
    family_effects = model.choice("family_effects", FAMILY_EFFECTS, "auto")
    run_offsets = model.get("run_offsets", bool, True)
    model.finish()

    reference = root.sub("reference", {})
    ref_params = reference.get("params", float, 1e9)
    ref_tokens = reference.get("tokens", float, 1e11)
    for key, value in (("params", ref_params), ("tokens", ref_tokens)):
        if not value > 0:
            raise reference.error(key, f"must be positive, got {value!r}")
    reference.finish()

    priors = root.sub("priors")
    mean_priors = _param_priors(priors, "mean", "real")
    family_scale = correlation = None
    if pooling == "partial":
        family_scale = _param_priors(priors, "family_scale", "positive")
        correlation = _prior(priors, "correlation", "correlation")
    run_scale = _prior(priors, "run_scale", "positive")
    noise_scale = _prior(priors, "noise_scale", "positive")
    single_noise = noise_scale
    if "single_checkpoint_noise_scale" in priors.table:
        single_noise = _prior(priors, "single_checkpoint_noise_scale", "positive")
        if single_noise.dist != noise_scale.dist:
            # the model samples every family's noise as one batch of one distribution
            raise priors.error("single_checkpoint_noise_scale", f"must use the distribution of noise_scale ({noise_scale.dist!r})")
    priors.finish()

    likelihood = root.sub("likelihood")
    lik = likelihood.choice("dist", LIKELIHOODS)
    lik_df = likelihood.get("df", float) if lik == "student_t" else None
    if lik_df is not None and not lik_df > 0:
        raise likelihood.error("df", f"must be positive, got {lik_df!r}")
    likelihood.finish()

    data_reader = root.sub("data", {})
    data = {}
    for key, kind in DATA_KEYS.items():
        if key in data_reader.table:
            data[key] = data_reader.get(key, kind)
    data_reader.finish()
    root.finish()
    return Spec(
        name=name,
        description=description,
        form=form,
        pooling=pooling,
        family_effects=family_effects,
        run_offsets=run_offsets,
        reference_params=ref_params,
        reference_tokens=ref_tokens,
        mean_priors=mean_priors,
        family_scale_priors=family_scale,
        correlation_prior=correlation,
        run_scale_prior=run_scale,
        noise_scale_prior=noise_scale,
        single_checkpoint_noise_prior=single_noise,
        likelihood=lik,
        likelihood_df=lik_df,
        data=data,
        source=source,
    )
