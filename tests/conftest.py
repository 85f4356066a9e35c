"""Shared fixtures. NUTS compilation dominates on 2 cores: fit once per session, reuse."""

import atexit
import os
import shutil
import tempfile
import warnings
from pathlib import Path

# One JAX compilation cache for the whole session, shared with the notebook kernels (they
# inherit the environment). NumPyro runs a model eagerly while it initialises, which compiles
# hundreds of small ops one by one, ~50 s per fresh process here; with the cache a second
# process with the same shapes skips most of it. A user's own cache setting wins.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="bayes-scaling-jax-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import numpyro  # noqa: E402
import pytest  # noqa: E402

# Two host devices so that two chains run in parallel; must precede any JAX computation.
numpyro.set_host_device_count(2)

from bayes_scaling import datasets  # noqa: E402
from bayes_scaling.errors import ConvergenceWarning  # noqa: E402
from bayes_scaling.inference import fit  # noqa: E402

SHARED_DATA = Path(os.environ.get("BAYES_SCALING_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


@pytest.fixture(scope="session")
def synthetic_runs():
    """A small synthetic corpus (6 families) and its true parameters."""
    return datasets.synthetic(n_families=6, seed=3)


@pytest.fixture(scope="session")
def small_fit(synthetic_runs):
    """A small hierarchical NUTS fit of ``synthetic_runs`` (2 chains x 200 draws, seed 0)."""
    runs, _ = synthetic_runs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fit(runs, population=None, chains=2, warmup=200, draws=200, seed=0)


@pytest.fixture(scope="session")
def shared_runs_path():
    """Path of the shared real corpus; tests that need it skip when it is absent."""
    path = SHARED_DATA / "runs.csv.gz"
    if not path.is_file():
        pytest.skip(f"shared corpus not found at {path} (set BAYES_SCALING_DATA)")
    return path
