"""Nothing lost, nothing silent (issue 19): bad input, damaged files, refused resumes, locks.

Back-tests here use the classic point fits on a 3-family synthetic table (no NUTS); only
the extrapolation test reads the session's ``small_fit``. ``benchmarks/fault_sweep.py``
replays the same faults with real kills (SIGINT, SIGKILL) and concurrent processes.
"""

import io
import os
import warnings

import arviz as az
import numpy as np
import pandas as pd
import pytest

import bayes_scaling as bs
from bayes_scaling import datasets
from bayes_scaling.cli import main
from bayes_scaling.data import Filters, load_runs, prepare
from bayes_scaling.distributed import OutputLock, ParquetSink, frame_equal_numbers
from bayes_scaling.errors import (
    BayesScalingError,
    DataError,
    ExtrapolationWarning,
    FitError,
    OutputError,
)
from bayes_scaling.inference import Fit
from bayes_scaling.predict import efolds_outside, predict_loss, summarize

BACKTEST = ["--estimators", "classic", "--fractions", "0.5", "1.0", "--min-tokens", "0", "--no-progress"]


@pytest.fixture(scope="module")
def runs():
    table, _ = datasets.synthetic(n_families=3, seed=3)
    return table


@pytest.fixture()
def runs_csv(runs, tmp_path):
    path = tmp_path / "runs.csv"
    runs.to_csv(path, index=False)
    return path


def _backtest(runs_path, out, *extra) -> int:
    return main(["backtest", str(runs_path), "--out", str(out), *BACKTEST, *map(str, extra)])


def _no_traceback(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# --------------------------------------------------------------------------- resume (1, 2, 5)


def test_refused_resume_keeps_the_finished_results(runs_csv, tmp_path, capsys):
    out = tmp_path / "out"
    assert _backtest(runs_csv, out) == 0
    before = (out / "backtest.csv").read_bytes()
    assert _backtest(runs_csv, out, "--seed", "1") == 2
    assert "other settings (seed)" in _no_traceback(capsys)
    assert (out / "backtest.csv").read_bytes() == before  # the refusal touched nothing
    assert (out / "backtest.md").exists()


def test_resume_from_the_same_file_spelled_differently(runs_csv, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert _backtest(runs_csv, out) == 0
    first = pd.read_csv(out / "backtest.csv")

    def refit(*args, **kwargs):
        raise AssertionError("a stored cell was fitted again")

    monkeypatch.setattr("bayes_scaling.backtest.runner.evaluate_cell", refit)
    monkeypatch.chdir(tmp_path)
    assert _backtest(os.path.join(".", "out", "..", runs_csv.name), out) == 0  # same bytes, other path
    assert frame_equal_numbers(pd.read_csv(out / "backtest.csv"), first)


def test_changed_runs_table_refuses_the_resume(runs, runs_csv, tmp_path, capsys):
    out = tmp_path / "out"
    assert _backtest(runs_csv, out) == 0
    before = (out / "backtest.csv").read_bytes()
    runs.assign(loss=runs["loss"] * 1.3).to_csv(runs_csv, index=False)  # same path, new numbers
    assert _backtest(runs_csv, out) == 2
    assert "another runs table" in _no_traceback(capsys)
    assert (out / "backtest.csv").read_bytes() == before
    assert _backtest(runs_csv, out, "--restart") == 0
    assert not frame_equal_numbers(pd.read_csv(out / "backtest.csv"), pd.read_csv(io.BytesIO(before)))


def test_damaged_cell_files_are_set_aside_and_refitted(runs_csv, tmp_path, capsys):
    out = tmp_path / "out"
    assert _backtest(runs_csv, out) == 0
    first = pd.read_csv(out / "backtest.csv")
    files = sorted((out / "cells").glob("cell-*.parquet"))
    n_cells = len(files)
    files[0].write_bytes(files[0].read_bytes()[:100])  # truncated
    files[1].write_bytes(b"")  # empty
    files[2].write_bytes(files[3].read_bytes())  # another cell's rows under this name
    capsys.readouterr()
    assert _backtest(runs_csv, out) == 0
    err = _no_traceback(capsys)
    assert "3 damaged cell file(s)" in err
    assert len(list((out / "cells").glob("*.damaged"))) == 3
    assert len(list((out / "cells").glob("cell-*.parquet"))) == n_cells
    result = pd.read_csv(out / "backtest.csv")
    assert not result.duplicated(["min_tokens", "family", "target", "k", "fraction", "estimator"]).any()
    assert frame_equal_numbers(result, first)


def test_parquet_sink_skips_an_empty_cell_file(tmp_path):
    sink = ParquetSink(tmp_path)
    row = {"min_tokens": 0.0, "family": "f", "k": 1, "fraction": 1.0, "estimator": "classic", "are": 0.1}
    sink([row])
    (path,) = tmp_path.glob("cell-*.parquet")
    path.write_bytes(b"")
    assert ParquetSink(tmp_path).stored() == {}  # set aside, so the cell can be written again
    sink([row])
    assert len(ParquetSink(tmp_path).stored()) == 1


# --------------------------------------------------------------------------- concurrency (3)


def test_second_run_on_one_out_is_refused(runs_csv, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    with OutputLock(out):  # another live run holds the directory
        assert _backtest(runs_csv, out) == 2
        assert "in use by another run (pid" in _no_traceback(capsys)
        assert not (out / "cells").exists()
    assert _backtest(runs_csv, out) == 0


def test_lock_left_by_a_dead_run_is_taken_over(runs_csv, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".lock").write_text("pid 999999 on a-machine-that-died")  # file left behind, no flock held
    assert _backtest(runs_csv, out) == 0
    with pytest.raises(OutputError, match="in use"), OutputLock(out):
        OutputLock(out).acquire()


# --------------------------------------------------------------------------- outputs (4)


def test_fit_checks_out_before_sampling(runs_csv, tmp_path, monkeypatch, capsys):
    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before checking --out")

    monkeypatch.setattr("bayes_scaling.inference.fit", no_sampling)
    assert main(["fit", str(runs_csv), "--out", str(runs_csv / "fit.nc"), "--min-tokens", "0"]) == 2
    assert "lies under" in _no_traceback(capsys)
    assert main(["fit", str(runs_csv), "--out", str(tmp_path), "--min-tokens", "0"]) == 2
    assert "is a directory" in _no_traceback(capsys)


def _tiny_idata():
    return az.from_dict(posterior={"x": np.random.default_rng(0).normal(size=(2, 50, 100))})


def test_fit_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "fit.nc"
    path.write_bytes(b"the previous fit")
    fit = Fit(_tiny_idata())

    def dies_half_way(target, *args, **kwargs):
        with open(target, "wb") as fh:
            fh.write(b"half a NetCDF")
        raise OSError("disk full")

    monkeypatch.setattr(fit.idata, "to_netcdf", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        fit.save(path)
    assert path.read_bytes() == b"the previous fit"
    assert [p.name for p in tmp_path.iterdir()] == ["fit.nc"]  # no temporary file left


# --------------------------------------------------------------------------- damaged inputs (5)


@pytest.fixture()
def damaged_nc(tmp_path):
    path = tmp_path / "damaged.nc"
    _tiny_idata().to_netcdf(str(path))
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 200] = b"\xff" * 200  # inside the compressed values
    path.write_bytes(bytes(data))
    return path


def test_damaged_fit_file_is_one_line_everywhere(damaged_nc, tmp_path, capsys):
    with pytest.raises(FitError, match="cannot read fit file"):
        Fit.load(damaged_nc)
    commands = [
        ["predict", damaged_nc, "--family", "a", "--params", "1e9", "--tokens", "1e10"],
        ["budget", damaged_nc, "--family", "a", "--flops", "1e20", "--no-plots"],
        ["compare", damaged_nc, "--a", "a", "--b", "b", "--flops", "1e20", "--no-plots"],
        ["diagnose", damaged_nc, "--out", tmp_path / "report"],
    ]
    for argv in commands:
        assert main([str(a) for a in argv]) == 2, argv
        err = _no_traceback(capsys)
        assert err.count("\n") == 1 and "cannot read fit file" in err, err


def test_truncated_csv_gz_is_a_data_error(runs, tmp_path):
    path = tmp_path / "runs.csv.gz"
    runs.to_csv(path, index=False)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(DataError, match="damaged or truncated"):
        load_runs(path)


# --------------------------------------------------------------------------- silent wrong data (6)


def test_datetime_tokens_are_refused(runs, tmp_path):
    path = tmp_path / "runs.parquet"
    runs.assign(tokens=pd.to_datetime(runs["tokens"].astype("int64"))).to_parquet(path)
    with pytest.raises(DataError, match="'tokens' has dtype datetime64"):
        load_runs(path)
    with pytest.raises(DataError, match="'num_params' has dtype bool"):
        load_runs(runs.assign(num_params=True))


def test_one_family_in_billions_is_caught_per_family(runs):
    fam = runs["family"].iloc[0]
    mixed = runs.assign(tokens=np.where(runs["family"] == fam, runs["tokens"] / 1e9, runs["tokens"]))
    with pytest.raises(DataError, match="looks like billions of tokens") as info:
        prepare(mixed, Filters(min_tokens=0))
    assert fam in str(info.value) and "billions" in str(info.value)


def test_unclear_is_primary_values_are_refused(runs):
    with pytest.raises(DataError, match="'ja'"):
        load_runs(runs.assign(is_primary=np.where(np.arange(len(runs)) % 2, "ja", "true")))
    clear = load_runs(runs.assign(is_primary=np.where(np.arange(len(runs)) % 2, "no", "Yes")))
    assert clear["is_primary"].sum() == (len(runs) + 1) // 2


# --------------------------------------------------------------------------- crashes (7)


def test_nothing_to_backtest_is_a_clear_error(runs, runs_csv, tmp_path, capsys):
    assert _backtest(runs_csv, tmp_path / "a", "--k", "9") == 2
    assert "nothing to back-test" in _no_traceback(capsys)
    fam = runs["family"].iloc[0]
    two_sizes = runs[runs["num_params"].isin(sorted(runs.loc[runs["family"] == fam, "num_params"].unique())[:2])]
    path = tmp_path / "two.csv"
    two_sizes[two_sizes["family"] == fam].to_csv(path, index=False)
    assert _backtest(path, tmp_path / "b") == 2
    assert "2 distinct sizes" in _no_traceback(capsys)


def test_out_that_is_a_file(runs_csv, capsys):
    assert _backtest(runs_csv, runs_csv) == 2
    assert "not a directory" in _no_traceback(capsys)
    assert main(["budget", "missing.nc", "--family", "a", "--flops", "1e20", "--out", str(runs_csv)]) == 2
    assert "not a directory" in _no_traceback(capsys)


def test_binary_spec_and_zero_dpi(runs_csv, tmp_path, capsys):
    spec = tmp_path / "binary.toml"
    spec.write_bytes(bytes(range(256)) * 4)
    assert main(["fit", str(runs_csv), "--out", str(tmp_path / "f.nc"), "--population", "none", "--spec", str(spec)]) == 2
    assert "not a text file" in _no_traceback(capsys)
    with pytest.raises(SystemExit) as info:
        main(["diagnose", "x.nc", "--out", str(tmp_path / "r"), "--dpi", "0"])
    assert info.value.code == 2 and "must be a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_ctrl_c_prints_one_line_and_exits_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("bayes_scaling.cli.core.run_predict", interrupted)
    assert main(["predict", "x.nc", "--family", "a", "--params", "1e9", "--tokens", "1e10"]) == 130
    assert _no_traceback(capsys) == "bayes-scaling predict: interrupted\n"


# --------------------------------------------------------------------------- messages (8)


def test_semicolon_csv_names_the_delimiter(runs, tmp_path):
    path = tmp_path / "runs.csv"
    runs.to_csv(path, index=False, sep=";")
    with pytest.raises(DataError, match="delimiter looks wrong"):
        load_runs(path)


def test_duplicate_message_names_tokens_and_rows(runs):
    doubled = pd.concat([runs, runs.iloc[[5]]], ignore_index=True)
    with pytest.raises(DataError) as info:
        load_runs(doubled)
    message = str(info.value)
    row = runs.iloc[5]
    assert f"tokens={row['tokens']:g}" in message and f"rows 5, {len(runs)}" in message
    assert message.count(f"model={row['model']}") == 1


def test_negative_scientific_number_is_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "x.nc", "--family", "a", "--params", "-7e9", "--tokens", "1e10"])
    err = capsys.readouterr().err
    assert "argument --params: must be > 0, got -7e9" in err


def test_compare_a_family_with_itself_is_refused(capsys):
    assert main(["compare", "x.nc", "--a", "f", "--b", "f", "--flops", "1e21"]) == 2
    assert "same family" in _no_traceback(capsys)


def test_efolds_outside_the_training_range():
    import xarray as xr

    draws = xr.Dataset(attrs={"train_num_params": [1e8, 1e9], "train_tokens": [1e9, 1e11]})
    e = efolds_outside(draws, [5e8, 1e10, 1e8, 1e-300], [1e10, 1e10, 1e12, 1e10])
    assert np.allclose(e[:3], [0.0, np.log(10), np.log(10)])
    assert e[3] > 600


def test_far_query_warns_and_every_prediction_says_how_far(small_fit):
    family = small_fit.families[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExtrapolationWarning)
        table = summarize(predict_loss(small_fit, family, [1e9, 1e10], [2e10, 2e11]))  # near the data: quiet
    assert "efolds_outside" in table and (table["efolds_outside"] < 3).all()
    with pytest.warns(ExtrapolationWarning, match="e-folds"):
        far = summarize(predict_loss(small_fit, family, 1e-300, 2e10))
    assert far["efolds_outside"].iloc[0] > 600
    with pytest.raises(DataError, match="a number or an array of numbers"):
        predict_loss(small_fit, family, "7B", 2e10)


# --------------------------------------------------------------------------- API types (9)


@pytest.mark.parametrize(
    "call, expected",
    [
        (lambda: load_runs(None), "a path .* or a pandas DataFrame, got NoneType"),
        (lambda: bs.predict_loss("7B", "f", 1e9, 1e10), "fit must be a Fit"),
        (lambda: Fit.load(None), "needs a file path"),
        (lambda: bs.load_spec(3), "got int"),
    ],
)
def test_wrong_argument_types_raise_the_package_errors(call, expected):
    with pytest.raises(BayesScalingError, match=expected):
        call()
