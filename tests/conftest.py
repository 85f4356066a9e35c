"""Shared fixtures. NUTS compilation dominates on 2 cores: fit once per session, reuse."""

import atexit
import os
import shutil
import tempfile
import warnings
from pathlib import Path

# One JAX compilation cache per test process, shared with the CLI subprocesses and notebook
# kernels it starts (they inherit the environment). NumPyro runs a model eagerly while it
# initialises, which compiles hundreds of small ops one by one, ~50 s per fresh process here;
# with the cache a second process with the same shapes skips most of it.
# Each xdist worker gets its own: JAX writes a cache entry without a lock, so a worker that
# read an entry the other was still writing failed on a truncated file (CI, 6 errors).
# A user's own cache setting wins (and is shared by the workers).
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
if os.environ.get("JAX_COMPILATION_CACHE_DIR") in (None, os.environ.get("BAYES_SCALING_TEST_JAX_CACHE")):
    _cache = tempfile.mkdtemp(prefix=f"bayes-scaling-jax-cache-{WORKER}-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    # the marker tells a worker that the inherited directory is its controller's, not the user's
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["BAYES_SCALING_TEST_JAX_CACHE"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import numpyro  # noqa: E402
from filelock import FileLock  # noqa: E402
import pytest  # noqa: E402

# Two host devices so that two chains run in parallel; must precede any JAX computation.
numpyro.set_host_device_count(2)

from bayes_scaling import datasets  # noqa: E402
from bayes_scaling.errors import ConvergenceWarning  # noqa: E402
from bayes_scaling.inference import Fit, fit  # noqa: E402

SHARED_DATA = Path(os.environ.get("BAYES_SCALING_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


@pytest.fixture(scope="session")
def synthetic_runs():
    """A small synthetic corpus (6 families) and its true parameters."""
    return datasets.synthetic(n_families=6, seed=3)


@pytest.fixture(scope="session")
def small_fit(synthetic_runs, tmp_path_factory):
    """A small hierarchical NUTS fit of ``synthetic_runs`` (2 chains x 200 draws, seed 0).

    The suite's costliest fixture, so under xdist it is fitted once per run: the first
    worker to ask fits and saves it, the other waits on the lock and loads it (the save/load
    round trip is exact, tests/test_inference.py). The directory above a worker's base
    temp is this run's own.
    """
    runs, _ = synthetic_runs

    def small():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return fit(runs, population=None, chains=2, warmup=200, draws=200, seed=0)

    if "PYTEST_XDIST_WORKER" not in os.environ:
        return small()
    path = tmp_path_factory.getbasetemp().parent / "small_fit.nc"
    with FileLock(f"{path}.lock"):
        if path.is_file():
            return Fit.load(path)
        result = small()
        result.save(path)
        return result


@pytest.fixture(scope="session")
def shared_runs_path():
    """Path of the shared real corpus; tests that need it skip when it is absent."""
    path = SHARED_DATA / "runs.csv.gz"
    if not path.is_file():
        pytest.skip(f"shared corpus not found at {path} (set BAYES_SCALING_DATA)")
    return path
