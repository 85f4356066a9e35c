"""Traced sampler programs kept on disk, so that a new process skips tracing them.

JAX's persistent compilation cache (``jax_compilation_cache_dir``) skips XLA compilation in
a new process, but not tracing: every process still re-traces the whole NUTS run in Python
to find the cache key, and for a one-family fit that tracing is a large share of a warm run
(``benchmarks/results/user_speed.md``).
:func:`traced` wraps a function so that its first call with given argument shapes exports
the traced program (:mod:`jax.export`, StableHLO) into ``<compilation cache>/programs/``
and later processes load it instead of tracing; the compilation cache then serves its
executable.

Nothing is written unless the user (or the CLI, see
:func:`bayes_scaling.cli.enable_compilation_cache`) has set JAX's compilation cache
directory. A program's file name hashes the package's source, the JAX and NumPyro versions,
the backend and the argument shapes, so any change of code or version traces afresh; an
unreadable file is traced again and replaced.
"""

from __future__ import annotations

import hashlib
import warnings
from functools import lru_cache
from pathlib import Path

import jax

from .outputs import atomic_path

__all__ = ["program_dir", "traced"]


def program_dir() -> Path | None:
    """Where exported programs live: ``programs/`` in JAX's compilation cache (None: no cache set)."""
    root = jax.config.jax_compilation_cache_dir
    return Path(root) / "programs" if root else None


@lru_cache(maxsize=1)
def _code_version() -> str:
    """Hash of this package's Python source and the versions that shape a traced program."""
    import numpyro

    digest = hashlib.sha256(f"jax {jax.__version__} numpyro {numpyro.__version__}".encode())
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _file(name: str, specs) -> Path | None:
    root = program_dir()
    if root is None:
        return None
    shapes = ";".join(f"{s.shape}{s.dtype}" for s in specs)
    key = hashlib.sha256(f"{_code_version()} {jax.default_backend()} {jax.config.jax_enable_x64} {name} {shapes}".encode())
    return root / f"{name}-{key.hexdigest()[:24]}.jaxexport"


def _load(path: Path):
    try:
        return jax.export.deserialize(bytearray(path.read_bytes()))
    except Exception as exc:  # truncated or from an incompatible writer: trace again
        warnings.warn(f"ignoring unreadable traced program {path.name} ({type(exc).__name__}); tracing again", RuntimeWarning, stacklevel=3)
        return None


def _save(exported, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(exported.serialize())
    except Exception as exc:  # a read-only cache or a program that cannot be serialised: run without
        warnings.warn(f"cannot keep the traced program {path.name} ({type(exc).__name__}: {exc})", RuntimeWarning, stacklevel=3)


def traced(fn, name: str):
    """``fn`` (a function of arrays, or of tuples of them, returning arrays), its traced program reused
    across processes; ``name`` tells programs apart (include every setting that ``fn``
    closes over). Without a compilation cache directory, ``fn`` itself is called.

    Works under ``jax.jit`` and ``jax.pmap`` (it is traced with the per-device shapes).
    """

    def call(*args):
        specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)
        path = _file(name, jax.tree.leaves(specs))
        if path is None:
            return fn(*args)
        exported = _load(path) if path.is_file() else None
        if exported is None:
            exported = jax.export.export(jax.jit(fn))(*specs)
            _save(exported, path)
        return exported.call(*args)

    return call
