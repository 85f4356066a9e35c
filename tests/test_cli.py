"""The command line, in-process: exit codes, outputs, one-line errors."""

import json

import pandas as pd
import pytest

from bayes_scaling import datasets
from bayes_scaling.cli import main


@pytest.fixture(scope="module")
def runs_csv(tmp_path_factory):
    runs, _ = datasets.synthetic(n_families=2, seed=5, n_checkpoints=10, sizes_per_family=(3, 3))
    path = tmp_path_factory.mktemp("cli") / "runs.csv.gz"
    runs.drop(columns="true_loss").to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def fitted(runs_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "fit.nc"
    # the joint model (the population path has its own CLI test in test_population.py)
    code = main(["fit", str(runs_csv), "--out", str(out), "--population", "none", "--chains", "1", "--warmup", "30", "--draws", "30", "--no-progress"])
    assert code == 0
    return out


def test_fit_writes_netcdf(fitted):
    from bayes_scaling.inference import Fit

    assert fitted.is_file() and fitted.stat().st_size > 0
    post = Fit.load(fitted).idata.posterior
    assert post["theta"].dtype == "float64"  # the default precision
    assert json.loads(post.attrs["bayes_scaling_settings"])["x64"] is True


def test_fit_sampler_flags_reach_fit(runs_csv, tmp_path, monkeypatch):
    # wiring only (a float32 fit would compile every op again, ~30 s)
    seen = {}

    def fake_fit(data, spec, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr("bayes_scaling.inference.fit", fake_fit)
    for flag, x64 in (([], True), (["--float32"], False)):
        with pytest.raises(SystemExit):
            main(["fit", str(runs_csv), "--out", str(tmp_path / "f.nc"), "--population", "none", "--no-progress", *flag])
        assert seen["x64"] is x64 and seen["target_accept"] is None  # None: the library default of the path taken
    with pytest.raises(SystemExit):
        main(["fit", str(runs_csv), "--out", str(tmp_path / "f.nc"), "--population", "none", "--no-progress", "--target-accept", "0.97"])
    assert seen["target_accept"] == 0.97


def test_predict_formats(fitted, capsys):
    assert main(["predict", str(fitted), "--family", "synth-00", "--params", "1e9", "3e9", "--tokens", "1e11", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and rows[0]["q05"] <= rows[0]["median"] <= rows[0]["q95"]
    assert main(["predict", str(fitted), "--family", "synth-01", "--params", "1e9", "--tokens", "1e11", "--new-run", "--format", "csv"]) == 0
    table = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))
    assert table["kind"].iloc[0] == "new_run"
    assert main(["predict", str(fitted), "--params", "1e9", "--tokens", "1e11", "--new-family"]) == 0
    assert "median" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "{fit}", "--family", "nope", "--params", "1e9", "--tokens", "1e11"], "not in this fit"),
        (["predict", "{fit}", "--params", "1e9", "--tokens", "1e11"], "--family is required"),
        (["predict", "{fit}", "--family", "synth-00", "--params", "1e9", "2e9", "3e9", "--tokens", "1e11", "2e11"], "equal counts"),
        (["predict", "missing.nc", "--family", "a", "--params", "1e9", "--tokens", "1e11"], "not found"),
        (["fit", "missing.csv", "--out", "x.nc"], "not found"),
        (["fit", "{runs}", "--out", "x.nc", "--population", "none", "--spec", "nope"], "unknown spec"),
        (["fit", "{runs}", "--out", "x.nc", "--population", "none", "--retry-thinning", "3"], "population path"),
        (["fit", "{runs}", "--out", "x.nc", "--population", "none", "--tempering"], "population path"),
        (["fit", "{runs}", "--out", "x.nc", "--families", "gpt"], "not in the runs table"),
        (["fit", "{runs}", "--out", "x.nc", "--min-tokens", "1e13"], "leaves no rows"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, fitted, runs_csv, capsys):
    argv = [a.format(fit=fitted, runs=runs_csv) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "x.nc", "--params", "-5", "--tokens", "1e11"],
        ["fit", "runs.csv", "--out", "x.nc", "--target-accept", "1.0"],
        ["fit", "runs.csv", "--out", "x.nc", "--target-accept", "0"],
    ],
)
def test_argparse_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def test_demo_quick_writes_outputs(tmp_path, monkeypatch, capsys):
    # the smallest demo that still exercises every step: 3 families, 1 chain
    monkeypatch.setattr("bayes_scaling.demo.QUICK_SETTINGS", {"n_families": 3, "chains": 1, "warmup": 40, "draws": 40})
    assert main(["demo", "--synthetic", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "coverage of 90% intervals" in out and "synth-02" in out
    for name in ("demo_predictions.csv", "demo_curves.png", "demo_fit.nc"):
        assert (tmp_path / name).stat().st_size > 0


def test_real_demo_quick_predicts_the_largest_run(tmp_path, capsys):
    """The README's main job at ``--quick`` sampler settings (2 x (300 + 300)): every target
    checkpoint of the 2B run gets an ordered 90% interval, and the outputs are written."""
    assert main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "coverage of 90% intervals" in out and "2 chains x 300 draws" in out
    table = pd.read_csv(tmp_path / "demo_predictions.csv")
    assert len(table) == 53 and (table["q05"] <= table["median"]).all() and (table["median"] <= table["q95"]).all()
    for name in ("demo_fan.png", "demo_fit.nc"):
        assert (tmp_path / name).stat().st_size > 0


def test_real_demo_samples_its_own_draws_unless_told(monkeypatch):
    """The demo's settings (twice the library's draws) go under what the caller passes."""
    from bayes_scaling import demo

    seen = {}

    def fake_fit(train, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop")  # only the settings are under test

    monkeypatch.setattr(demo, "fit", fake_fit)
    with pytest.raises(RuntimeError):
        demo.run_real_demo()
    assert seen["draws"] == demo.REAL_DEMO_SETTINGS["draws"] == 2000
    with pytest.raises(RuntimeError):
        demo.run_real_demo(draws=300, warmup=200)
    assert seen["draws"] == 300 and seen["warmup"] == 200


def test_counts_read_as_english():
    from bayes_scaling.cli.common import counted

    assert counted(1, "family", "families") == "1 family"
    assert counted(22, "family", "families") == "22 families"
    assert counted(1, "run") == "1 run" and counted(0, "checkpoint") == "0 checkpoints"


def test_json_output_writes_a_missing_value_as_null():
    # a new family's mean is NaN; Python's json would write a bare NaN, which is not JSON
    import io

    import numpy as np

    from bayes_scaling.cli.common import write_table

    out = io.StringIO()
    write_table(pd.DataFrame({"kind": ["new_family", "family"], "mean": [np.nan, 2.5], "q05": [np.float64(0.5), 2.0]}), "json", out)
    assert json.loads(out.getvalue(), parse_constant=lambda c: pytest.fail(f"not JSON: {c}")) == [
        {"kind": "new_family", "mean": None, "q05": 0.5},
        {"kind": "family", "mean": 2.5, "q05": 2.0},
    ]
