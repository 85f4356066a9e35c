"""The ingest mapping file (TOML): what training logs do not say about each run.

Logs hold steps and losses; a runs table also needs each run's family, parameter count,
tokens seen and the loss in nats. The mapping supplies them, read as strictly as a model
spec (:mod:`bayes_scaling.spec`): unknown keys, wrong types and impossible values are
:class:`~bayes_scaling.errors.SpecError` naming the file and the key. Example::

    family = "sweep-a"                      # default family of every run
    exclude = ["debug-*"]                   # runs to leave out (shell patterns)

    [loss]
    tag = "train/loss"                      # which logged scalar is the loss
    unit = "nats"                           # nats (default), bits or perplexity, per token

    [tokens]                                # one of:
    per_step = 1_048_576                    #   tokens per optimizer step
    # batch_size = 512; sequence_length = 2048     (per_step = their product)
    # tag = "num_input_tokens_seen"                a logged count of tokens seen
    # tag = "consumed samples"; sequence_length = 2048   a count of samples seen

    [runs."*"]                              # keys are shell patterns over run names;
    config = { vocab = 50304, embeddings = false }  # every matching table applies, in order

    [runs."gpt-125m"]
    config = { layers = 12, width = 768 }   # or: params = 124_439_808

    [cleaning]                              # the defaults
    drop_spikes = true
    spike_factor = 1.25
    spike_window = 10

Per run, tables merge in file order: top-level defaults first, then each ``[runs.P]``
whose pattern matches; ``loss`` and ``config`` merge key by key, ``tokens`` is replaced
whole, ``family`` and ``params`` are replaced.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from ..errors import SpecError
from ..spec import _Reader

__all__ = ["LOSS_UNITS", "Cleaning", "Mapping", "ModelConfig", "RunSettings", "TokensRule", "mapping_from_dict", "read_mapping"]

LOSS_UNITS = ("nats", "bits", "perplexity")
_CONFIG_INTS = ("layers", "width", "vocab", "ffn_width")
_CONFIG_BOOLS = ("embeddings", "tied_embeddings", "gated_mlp")
_TOKENS_KEYS = frozenset({"per_step", "batch_size", "sequence_length", "tag"})
_NAMES_SHOWN = 10


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer's shape, to count its parameters.

    Non-embedding parameters per layer: ``4 width^2`` (attention Q, K, V, O) plus
    ``2 width ffn_width`` (``3`` with a gated MLP such as SwiGLU); biases and norms are
    left out (under 0.1% at these widths). With ``embeddings`` the input embedding
    ``vocab x width`` counts too, twice when the output head is not tied to it.
    """

    layers: int
    width: int
    embeddings: bool
    vocab: int | None = None
    ffn_width: int | None = None
    gated_mlp: bool = False
    tied_embeddings: bool | None = None

    def num_params(self) -> float:
        ffn = self.ffn_width or 4 * self.width
        count = self.layers * (4 * self.width**2 + (3 if self.gated_mlp else 2) * self.width * ffn)
        if self.embeddings:
            count += self.vocab * self.width * (1 if self.tied_embeddings else 2)
        return float(count)


@dataclass(frozen=True)
class TokensRule:
    """How tokens seen follow from a run's log.

    Either ``per_step`` (tokens = step x per_step; for Megatron's ``... vs samples`` tags,
    whose step counts samples, give the sequence length) or ``tag`` (tokens = the tag's
    value x ``tag_scale`` at each loss step, interpolated linearly between the steps it
    was logged at; ``tag_scale`` is the sequence length when the tag counts samples).
    """

    per_step: float | None = None
    tag: str | None = None
    tag_scale: float = 1.0

    def describe(self) -> str:
        if self.tag is None:
            return f"step x {self.per_step:g}"
        return f"{self.tag!r}" + (f" x {self.tag_scale:g}" if self.tag_scale != 1 else "")


@dataclass(frozen=True)
class Cleaning:
    """Rules for logged losses that are not checkpoints of a healthy run.

    A spike is a loss more than ``spike_factor`` times the median of the
    ``spike_window`` values logged before it (after non-finite values are dropped); a
    decreasing curve never trips it, and a jump that persists stops counting once it
    fills half the window.
    """

    drop_spikes: bool = True
    spike_factor: float = 1.25
    spike_window: int = 10


@dataclass(frozen=True)
class RunSettings:
    """Everything the mapping says about one run, complete and checked."""

    family: str
    num_params: float
    params_from: str
    loss_tag: str
    loss_unit: str
    tokens: TokensRule


@dataclass(frozen=True)
class Mapping:
    """A parsed mapping file; :meth:`resolve` turns it into settings per run."""

    source: str
    family: str | None
    loss: dict
    tokens: TokensRule | None
    runs: tuple[tuple[str, dict], ...]
    exclude: tuple[str, ...]
    cleaning: Cleaning

    def excluded(self, names) -> list[str]:
        """Names matched by an ``exclude`` pattern; SpecError for a pattern that matches none."""
        names = list(names)
        for pattern in self.exclude:
            if not any(fnmatchcase(n, pattern) for n in names):
                raise SpecError(f"{self.source}: exclude pattern {pattern!r} matches no run; {_runs_found(names)}")
        return [n for n in names if any(fnmatchcase(n, p) for p in self.exclude)]

    def resolve(self, names) -> dict[str, RunSettings]:
        """Settings of each run not excluded, in the order of ``names``.

        Raises
        ------
        SpecError
            A ``[runs]`` key or ``exclude`` pattern that matches no run; runs left without a
            family, parameter count (or a complete model config), loss tag or tokens
            rule (all of them named).
        """
        names = list(names)
        for pattern, _ in self.runs:
            if not any(fnmatchcase(n, pattern) for n in names):
                raise SpecError(f"{self.source}: key 'runs.{pattern}' matches no run; {_runs_found(names)}")
        excluded = set(self.excluded(names))
        merged = {name: self._merge(name) for name in names if name not in excluded}
        missing = {
            "a family (family = ...)": [n for n, m in merged.items() if m["family"] is None],
            "a parameter count (params = N, or a config with layers, width, embeddings, and vocab and tied_embeddings "
            "when embeddings = true)": [n for n, m in merged.items() if m["params"] is None and _config_lacks(m["config"])],
            "a loss tag ([loss] tag = ...)": [n for n, m in merged.items() if "tag" not in m["loss"]],
            "a tokens rule ([tokens])": [n for n, m in merged.items() if m["tokens"] is None],
        }
        problems = [f"no {what} for run{'s' if len(runs) > 1 else ''} {_names(runs)}" for what, runs in missing.items() if runs]
        if problems:
            raise SpecError(f"{self.source}: " + "; ".join(problems))
        return {name: _run_settings(m) for name, m in merged.items()}

    def _merge(self, name: str) -> dict:
        merged = {"family": self.family, "params": None, "config": {}, "loss": dict(self.loss), "tokens": self.tokens}
        for pattern, table in self.runs:
            if not fnmatchcase(name, pattern):
                continue
            for key, value in table.items():
                if key in ("loss", "config"):
                    merged[key] = {**merged[key], **value}
                else:
                    merged[key] = value
            if "params" in table:
                merged["config"] = {}
            elif "config" in table:
                merged["params"] = None
        return merged


def _run_settings(merged: dict) -> RunSettings:
    if merged["params"] is not None:
        num_params, params_from = merged["params"], "given"
    else:
        config = merged["config"]
        num_params = ModelConfig(**config).num_params()
        params_from = f"config, embeddings {'included' if config['embeddings'] else 'excluded'}"
    return RunSettings(merged["family"], num_params, params_from, merged["loss"]["tag"], merged["loss"].get("unit", "nats"), merged["tokens"])


def _config_lacks(config: dict) -> list[str]:
    needed = ["layers", "width", "embeddings"] + (["vocab", "tied_embeddings"] if config.get("embeddings") else [])
    return [k for k in needed if k not in config]


def read_mapping(path) -> Mapping:
    """Read and check a mapping file.

    Raises
    ------
    SpecError
        Missing file, invalid TOML, or any invalid key or value (named with the file).
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: mapping file not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: invalid TOML: {exc}") from exc
    return mapping_from_dict(raw, str(path))


def mapping_from_dict(raw: dict, source: str = "<dict>") -> Mapping:
    """Build a :class:`Mapping` from the nested dict of a TOML file, checking every key."""
    root = _Reader(raw, source, "")
    family = root.get("family", str, None)
    exclude = root.get("exclude", list, [])
    for pattern in exclude:
        if not isinstance(pattern, str):
            raise root.error("exclude", f"must be a list of strings, got {pattern!r}")
    loss = _loss(root.sub("loss")) if "loss" in raw else {}
    tokens = _tokens(root.sub("tokens")) if "tokens" in raw else None
    cleaning = _cleaning(root.sub("cleaning", {}))
    runs_table = root.sub("runs", {})
    runs = []
    for pattern in runs_table.table:
        table = runs_table.sub(pattern)
        entry = {}
        if "family" in table.table:
            entry["family"] = table.get("family", str)
        if "params" in table.table:
            entry["params"] = _positive(table, "params", float)
        if "config" in table.table:
            entry["config"] = _config(table.sub("config"))
        if "params" in entry and "config" in entry:
            raise table.error("params", "and 'config' are both given: give one")
        if "loss" in table.table:
            entry["loss"] = _loss(table.sub("loss"))
        if "tokens" in table.table:
            entry["tokens"] = _tokens(table.sub("tokens"))
        table.finish()
        runs.append((pattern, entry))
    runs_table.finish()
    root.finish()
    return Mapping(source, family, loss, tokens, tuple(runs), tuple(exclude), cleaning)


def _positive(reader: _Reader, name: str, kind):
    value = reader.get(name, kind)
    if not (math.isfinite(value) and value > 0):
        raise reader.error(name, f"must be a finite number > 0, got {value!r}")
    return value


def _loss(reader: _Reader) -> dict:
    out = {}
    if "tag" in reader.table:
        out["tag"] = reader.get("tag", str)
    if "unit" in reader.table:
        out["unit"] = reader.choice("unit", LOSS_UNITS)
    reader.finish()
    return out


def _tokens(reader: _Reader) -> TokensRule:
    given = frozenset(reader.table)
    forms = {
        frozenset({"per_step"}),
        frozenset({"batch_size", "sequence_length"}),
        frozenset({"tag"}),
        frozenset({"tag", "sequence_length"}),
    }
    if given not in forms:
        reader.used.update(given & _TOKENS_KEYS)
        reader.finish()  # an unknown key first: it is the likelier mistake
        raise SpecError(
            f"{reader.source}: table '{reader.path}' must give per_step, or batch_size and sequence_length, or tag "
            f"(with sequence_length when the tag counts samples); got {sorted(given)}"
        )
    if "tag" in given:
        scale = float(_positive(reader, "sequence_length", int)) if "sequence_length" in given else 1.0
        return TokensRule(tag=reader.get("tag", str), tag_scale=scale)
    if "per_step" in given:
        return TokensRule(per_step=_positive(reader, "per_step", float))
    return TokensRule(per_step=float(_positive(reader, "batch_size", int) * _positive(reader, "sequence_length", int)))


def _config(reader: _Reader) -> dict:
    out = {}
    for key in _CONFIG_INTS:
        if key in reader.table:
            out[key] = _positive(reader, key, int)
    for key in _CONFIG_BOOLS:
        if key in reader.table:
            out[key] = reader.get(key, bool)
    reader.finish()
    return out


def _cleaning(reader: _Reader) -> Cleaning:
    defaults = Cleaning()
    drop = reader.get("drop_spikes", bool, defaults.drop_spikes)
    factor = reader.get("spike_factor", float, defaults.spike_factor)
    if not (math.isfinite(factor) and factor > 1):
        raise reader.error("spike_factor", f"must be a finite number > 1, got {factor!r}")
    window = reader.get("spike_window", int, defaults.spike_window)
    if window < 1:
        raise reader.error("spike_window", f"must be a positive integer, got {window!r}")
    reader.finish()
    return Cleaning(drop, factor, window)


def _names(names) -> str:
    shown = ", ".join(repr(n) for n in names[:_NAMES_SHOWN])
    return f"[{shown}{', ...' if len(names) > _NAMES_SHOWN else ''}] ({len(names)})" if len(names) > 1 else shown


def _runs_found(names) -> str:
    return f"runs found: {_names(sorted(names))}" if names else "no runs were found"
