"""Traced programs kept on disk (bayes_scaling.programs): reused without tracing, same numbers."""

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayes_scaling import programs


@pytest.fixture
def program_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(programs, "program_dir", lambda: tmp_path)
    return tmp_path


def _counting(calls):
    def fn(x, pair):
        calls.append(1)  # runs once per trace, never when a kept program is called
        a, b = pair
        return jnp.cumsum(x * a) + b, jnp.sum(x)

    return fn


def test_a_kept_program_is_called_without_tracing_and_gives_the_same_numbers(program_dir):
    x, pair = jnp.arange(5.0), (jnp.float32(2.0), jnp.ones(5))
    calls = []
    first = programs.traced(_counting(calls), "toy")(x, pair)
    assert len(calls) == 1 and len(list(program_dir.glob("toy-*.jaxexport"))) == 1

    again = programs.traced(_counting(calls), "toy")(x, pair)  # a new process would do this
    assert len(calls) == 1, "the kept program was traced again"
    for got, want in zip(again, first):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(first[0]), np.cumsum(np.arange(5.0) * 2) + 1)


def test_other_shapes_or_names_get_their_own_program(program_dir):
    calls = []
    programs.traced(_counting(calls), "toy")(jnp.arange(5.0), (jnp.float32(2.0), jnp.ones(5)))
    programs.traced(_counting(calls), "toy")(jnp.arange(6.0), (jnp.float32(2.0), jnp.ones(6)))
    programs.traced(_counting(calls), "other")(jnp.arange(5.0), (jnp.float32(2.0), jnp.ones(5)))
    assert len(calls) == 3
    assert len(list(program_dir.glob("*.jaxexport"))) == 3


def test_a_damaged_program_is_traced_again_and_replaced(program_dir):
    x, pair = jnp.arange(5.0), (jnp.float32(2.0), jnp.ones(5))
    calls = []
    want = programs.traced(_counting(calls), "toy")(x, pair)
    (path,) = program_dir.glob("toy-*.jaxexport")
    path.write_bytes(b"not a program")
    with pytest.warns(RuntimeWarning, match="unreadable traced program"):
        got = programs.traced(_counting(calls), "toy")(x, pair)
    assert len(calls) == 2
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
    programs.traced(_counting(calls), "toy")(x, pair)  # the replacement loads
    assert len(calls) == 2


def test_without_a_cache_directory_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(programs, "program_dir", lambda: None)
    calls = []
    out = programs.traced(_counting(calls), "toy")(jnp.arange(3.0), (jnp.float32(1.0), jnp.zeros(3)))
    np.testing.assert_array_equal(np.asarray(out[0]), [0.0, 1.0, 3.0])
    assert not list(tmp_path.iterdir())


def test_under_pmap_each_device_runs_the_kept_program(program_dir):
    if jax.local_device_count() < 2:
        pytest.skip("needs two devices (numpyro.set_host_device_count in conftest)")
    calls = []
    mapped = jax.pmap(programs.traced(_counting(calls), "toy"), in_axes=(0, None), devices=jax.local_devices()[:2])
    out = mapped(jnp.stack([jnp.arange(5.0), -jnp.arange(5.0)]), (jnp.float32(2.0), jnp.ones(5)))
    np.testing.assert_array_equal(np.asarray(out[1]), [10.0, -10.0])
    assert len(list(program_dir.glob("toy-*.jaxexport"))) == 1  # traced with the per-device shapes


def test_each_test_process_compiles_into_its_own_cache():
    # two xdist workers sharing one cache read each other's half-written entries (CI failure)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    cache = os.environ["JAX_COMPILATION_CACHE_DIR"]
    if cache != os.environ.get("BAYES_SCALING_TEST_JAX_CACHE"):
        pytest.skip("the user's own JAX_COMPILATION_CACHE_DIR is in use")
    assert Path(cache).name.startswith(f"bayes-scaling-jax-cache-{worker}-")
    assert jax.config.jax_compilation_cache_dir == cache
