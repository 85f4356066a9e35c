"""Benchmark scripts still load against the package (one once imported a name that was gone)."""

import importlib.util
from pathlib import Path

import pytest

SCRIPTS = sorted(p for p in (Path(__file__).resolve().parent.parent / "benchmarks").glob("*.py") if not p.name.startswith("_"))  # _*.py: helpers


def test_there_are_benchmarks():
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_script_loads_and_has_main(script):
    spec = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # top level only: each script runs under `if __name__ == "__main__"`
    assert callable(getattr(module, "main", None))
