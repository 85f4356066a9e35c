"""The ``ingest`` command: logs written by the tools' own writers -> runs table -> fit -> predict."""

import json

import numpy as np
import pandas as pd
import pytest
from log_writers import chinchilla_loss, megatron_log, trainer_state, write_tensorboard

from bayes_scaling.cli import main
from bayes_scaling.data import load_runs

SEQ, GBS = 2048, 256
SIZES = {"125m": 1.25e8, "350m": 3.5e8, "760m": 7.6e8}

MAPPING = """
exclude = ["tb/debug-*"]

[loss]
tag = "lm loss"

[tokens]
batch_size = 256
sequence_length = 2048

[runs."tb/*"]
family = "tb-sweep"

[runs."tb/gpt-125m"]
config = { layers = 12, width = 768, embeddings = false }
[runs."tb/gpt-350m"]
config = { layers = 24, width = 1024, embeddings = false }
[runs."tb/gpt-760m"]
params = 7.6e8

[runs."meg-*"]
family = "megatron"
tokens = { tag = "consumed samples", sequence_length = 2048 }
[runs."meg-125m"]
params = 1.25e8
[runs."meg-350m"]
params = 3.5e8

[runs."hf-*"]
family = "hf"
loss = { tag = "loss", unit = "bits" }
tokens = { tag = "num_input_tokens_seen" }
[runs."hf-125m"]
params = 1.25e8
[runs."hf-350m"]
params = 3.5e8
"""


def _noisy(loss, rng):
    return loss * np.exp(rng.normal(0, 0.003, len(loss)))


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """Three formats, two runs or more each, one TensorBoard run restarted, one debug run to exclude."""
    root = tmp_path_factory.mktemp("logs")
    rng = np.random.default_rng(11)
    steps = np.arange(50, 10001, 50)  # up to 5.2e9 tokens
    for size, n in SIZES.items():
        loss = _noisy(chinchilla_loss(n, steps * GBS * SEQ), rng)
        write_tensorboard(root / "tb" / f"gpt-{size}", {"lm loss": (steps, loss), "lm loss vs samples": (steps * GBS, loss)}, simple_value=True)
    resumed = steps[steps >= 8000]  # the 125m job resumed from its step-8000 checkpoint
    write_tensorboard(root / "tb" / "gpt-125m", {"lm loss": (resumed, _noisy(chinchilla_loss(1.25e8, resumed * GBS * SEQ), rng))}, simple_value=True)
    write_tensorboard(root / "tb" / "debug-1", {"lm loss": ([1, 2], [9.0, 8.0])})
    for size in ("125m", "350m"):
        iters = np.arange(100, 10001, 100)
        megatron_log(root / f"meg-{size}.log", iters, _noisy(chinchilla_loss(SIZES[size], iters * GBS * SEQ), rng) + 0.1, GBS, 10000)
        hf_steps = np.arange(100, 20001, 100)
        bits = _noisy(chinchilla_loss(SIZES[size], hf_steps * 262144.0), rng) / np.log(2)
        trainer_state(root / f"hf-{size}" / "checkpoint-20000" / "trainer_state.json", hf_steps, bits, tokens_per_step=262144)
    (root / "map.toml").write_text(MAPPING)
    return root


def _ingest_argv(logs, out):
    # the directory holds the TensorBoard runs and the Trainer output folders; Megatron logs are named
    return ["ingest", str(logs), str(logs / "meg-125m.log"), str(logs / "meg-350m.log"), "--map", str(logs / "map.toml"), "--out", str(out)]


def test_ingest_command_writes_a_validated_table(logs, tmp_path, capsys):
    out = tmp_path / "runs.parquet"
    assert main([*_ingest_argv(logs, out), "--format", "json"]) == 0
    captured = capsys.readouterr()
    report = pd.DataFrame(json.loads(captured.out))
    table = pd.read_parquet(out)
    assert load_runs(table).shape == table.shape  # fit's validation accepts it as written
    assert sorted(report["run"]) == ["hf-125m", "hf-350m", "meg-125m", "meg-350m", "tb/gpt-125m", "tb/gpt-350m", "tb/gpt-760m"]
    assert set(table["family"]) == {"tb-sweep", "megatron", "hf"}
    restarted = report.set_index("run").loc["tb/gpt-125m"]
    assert (restarted["restarts"], restarted["superseded"], restarted["rows"]) == (1, 41, 200)
    assert table.loc[table["model"] == "tb/gpt-350m", "num_params"].iloc[0] == 24 * 12 * 1024**2
    hf = table[table["model"] == "hf-125m"]
    np.testing.assert_allclose(hf["loss"], chinchilla_loss(1.25e8, hf["tokens"]), rtol=0.02)  # bits came back as nats
    assert {"step", "source", "tag"} <= set(table.columns)
    assert "1 restart replaced 41 values" in captured.err and "excluded 1 runs: tb/debug-1" in captured.err


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.replace('tag = "lm loss"', 'tag = "train/loss"'), r"has no scalar tag 'train/loss'; tags there: 'lm loss', 'lm loss vs samples'"),
        (lambda m: m.replace("params = 7.6e8", "family = \"tb-sweep\""), r"no a parameter count .* for run 'tb/gpt-760m'"),
        (lambda m: m + '\n[runs."gpt-1.3b"]\nparams = 1.3e9\n', r"key 'runs.gpt-1.3b' matches no run; runs found: \["),
        (lambda m: m.replace('[runs."meg-350m"]', '[runs."meg-350m"]\nloss = { unit = "bits" }'), "family 'megatron' mixes loss units"),
        (lambda m: m.replace("[tokens]", "[tokens]\nper_step = 1"), "table 'tokens' must give per_step"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(logs, tmp_path, capsys, edit, message):
    mapping = tmp_path / "map.toml"
    mapping.write_text(edit(MAPPING))
    out = tmp_path / "runs.parquet"
    argv = _ingest_argv(logs, out)
    argv[argv.index("--map") + 1] = str(mapping)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bayes-scaling ingest: error:") and len(err.splitlines()) == 1
    assert pd.Series([err]).str.contains(message).all(), err
    assert list(tmp_path.iterdir()) == [mapping]  # no table, no temporary file


def test_log_without_loss_lines_exits_2(logs, tmp_path, capsys):
    crashed = tmp_path / "meg-crashed.log"
    crashed.write_text("> building GPT model ...\nRuntimeError: CUDA out of memory\n")
    assert main(["ingest", str(crashed), "--map", str(logs / "map.toml"), "--out", str(tmp_path / "runs.csv")]) == 2
    err = capsys.readouterr().err
    assert "meg-crashed.log: no Megatron training lines" in err and not (tmp_path / "runs.csv").exists()


@pytest.mark.slow  # a fresh NUTS compilation: over a minute on 2 cores; the test above covers ingest + validation
def test_ingest_fit_predict(logs, tmp_path, capsys):
    runs = tmp_path / "runs.csv.gz"
    assert main(_ingest_argv(logs, runs)) == 0
    fit = tmp_path / "fit.nc"
    argv = ["fit", str(runs), "--out", str(fit), "--spec", "chinchilla_independent", "--min-tokens", "1e8", "--max-checkpoints", "8",
            "--chains", "1", "--warmup", "100", "--draws", "100", "--seed", "0", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["predict", str(fit), "--family", "tb-sweep", "--params", "7.6e8", "--tokens", "5.24e9", "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    truth = float(chinchilla_loss(7.6e8, 5.24e9))
    assert row["q05"] < row["median"] < row["q95"]
    assert abs(row["median"] / truth - 1) < 0.02  # the 760m run is in the data: 2% is loose for 0.3% noise
