"""Benchmark scripts still load against the package (one once imported a name that was gone)."""

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))  # _*.py: helpers


def test_there_are_benchmarks():
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_script_loads_and_has_main(script):
    spec = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # top level only: each script runs under `if __name__ == "__main__"`
    assert callable(getattr(module, "main", None))


def test_next_run_oracle_enumerates_every_affordable_set_with_the_smallest_size():
    spec = importlib.util.spec_from_file_location("benchmark_next_run_oracle", BENCHMARKS / "next_run_oracle.py")
    oracle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(oracle)
    cost = {1.0: 1.0, 2.0: 4.0, 4.0: 16.0, 8.0: 64.0}  # a ladder whose compute grows 4x a size: total 85
    setup = {"sizes": sorted(cost), "cost": cost}
    got = {tuple(sizes): share for sizes, share in oracle.affordable_sets(setup, ratio=0.6)}
    # by bitmask over the three larger sizes: 51 FLOPs of 85 is the bar
    want = set()
    for mask in range(8):
        chosen = (1.0, *[s for i, s in enumerate((2.0, 4.0, 8.0)) if mask >> i & 1])
        if sum(cost[s] for s in chosen) <= 51.0:
            want.add(chosen)
    assert set(got) == want == {(1.0,), (1.0, 2.0), (1.0, 4.0), (1.0, 2.0, 4.0)}
    assert got[(1.0, 2.0, 4.0)] == 21.0 / 85.0
