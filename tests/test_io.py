"""bayes_scaling.io: log readers checked against the tools' own writers and readers, the
mapping file, the cleaning rules. No sampler here (see test_ingest.py for the fit)."""

import math
import sys
import types

import numpy as np
import pandas as pd
import pytest
from log_writers import chinchilla_loss, megatron_log, trainer_state, write_tensorboard

from bayes_scaling.errors import DataError, SpecError
from bayes_scaling.io import ingest, mapping_from_dict, read_mapping
from bayes_scaling.io import tensorboard_events as tb
from bayes_scaling.io.ingest import later_segment_wins, spike_mask, to_nats
from bayes_scaling.io.mapping import Cleaning, ModelConfig
from bayes_scaling.io.megatron import read_log
from bayes_scaling.io.wandb_logs import read_export

TOKENS_PER_STEP = 256 * 2048


def mapping(**extra):
    """A complete mapping for runs named like ``m-125m`` (family m, params from the mapping)."""
    raw = {"family": "m", "loss": {"tag": "lm loss"}, "tokens": {"batch_size": 256, "sequence_length": 2048}}
    raw.update(extra)
    raw.setdefault("runs", {"*": {"params": 1.25e8}})
    return mapping_from_dict(raw, "map.toml")


# --- TensorBoard ------------------------------------------------------------------------


@pytest.mark.parametrize("simple_value", [True, False], ids=["simple_value", "tensor"])
def test_tensorboard_reader_matches_tensorboards_own_loader(tmp_path, simple_value):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    steps = np.arange(0, 300, 3)
    run = write_tensorboard(
        tmp_path / "run", {"lm loss": (steps, 3 + 1 / (steps + 1)), "lr": (steps[::2], np.full(50, 3e-4))}, simple_value=simple_value
    )
    write_tensorboard(run, {"lm loss": (steps[:10] + 150, np.full(10, 2.5))}, simple_value=simple_value)  # a restart, second file
    (ref,) = tb.find_runs(tmp_path)
    log = ref.load(None)
    assert ref.name == "run" and log.tags == ("lm loss", "lr") and len(log.sources) == 2
    expected = {}
    for index, path in enumerate(log.sources):
        for event in EventFileLoader(path).Load():  # migrates simple_value to tensors
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars" or value.tensor.dtype:
                    expected.setdefault(value.tag, []).append((event.step, float(tensor_util.make_ndarray(value.tensor)), index))
    for tag, rows in expected.items():
        curve = log.curves[tag]
        got = list(zip(curve.step.tolist(), curve.value.tolist(), curve.source.tolist()))
        assert got == rows
    assert len(log.curves["lm loss"]) == 110


def test_tensorboard_tag_filter_keeps_the_tag_list(tmp_path):
    write_tensorboard(tmp_path / "r", {"a": ([1, 2], [1.0, 2.0]), "b": ([1], [5.0])})
    (ref,) = tb.find_runs(tmp_path)
    log = ref.load(frozenset({"b"}))
    assert set(log.curves) == {"b"} and log.tags == ("a", "b")


def test_masked_crc32c_matches_tensorboards(tmp_path):
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    rng = np.random.default_rng(0)
    chunks = [rng.integers(0, 256, size=n, dtype=np.uint8).tobytes() for n in (0, 1, 7, 8, 71, 1000, 3)]
    data = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    starts = np.cumsum([0] + [len(c) for c in chunks[:-1]])
    got = tb.masked_crc32c(data, starts, [len(c) for c in chunks])
    assert got.tolist() == [masked_crc32c(c) for c in chunks]


def test_tensorboard_corrupt_and_truncated_files(tmp_path):
    run = write_tensorboard(tmp_path / "r", {"lm loss": (np.arange(1, 21), np.linspace(4, 3, 20))})
    (path,) = run.iterdir()
    good = path.read_bytes()
    path.write_bytes(good[:-7])  # a job killed mid-write: the last record is cut
    log = tb.find_runs(tmp_path)[0].load(None)
    assert log.attrs["truncated_records"] == 1 and len(log.curves["lm loss"]) == 19
    for position in (-5, -10, -30):  # inside the data of the last scalar event: parses or not, the checksum tells
        corrupt = bytearray(good)
        corrupt[position] ^= 0x5A
        path.write_bytes(bytes(corrupt))
        with pytest.raises(DataError, match=r"fails its CRC check.*corrupt") as err:
            tb.find_runs(tmp_path)[0].load(None)
        assert str(path) in str(err.value)
    path.write_bytes(b"not an event file at all, just text\n" * 3)
    with pytest.raises(DataError, match="header .* fails its CRC check"):
        tb.find_runs(tmp_path)[0].load(None)


def test_megatron_tensorboard_tags_vs_samples_give_the_same_tokens(tmp_path):
    steps = np.arange(10, 1001, 10)
    loss = chinchilla_loss(1.25e8, steps * TOKENS_PER_STEP)
    write_tensorboard(
        tmp_path / "m-125m",
        {"lm loss": (steps, loss), "lm loss vs samples": (steps * 256, loss), "lm loss validation": (steps[::10], loss[::10] + 0.01)},
        simple_value=True,
    )
    by_step = ingest([tmp_path], mapping()).table
    by_samples = ingest([tmp_path], mapping(loss={"tag": "lm loss vs samples"}, tokens={"per_step": 2048})).table
    validation = ingest([tmp_path], mapping(loss={"tag": "lm loss validation"})).table
    np.testing.assert_allclose(by_samples["tokens"], by_step["tokens"])
    np.testing.assert_allclose(by_samples["loss"], by_step["loss"], rtol=1e-6)  # float32 in the file
    assert len(validation) == 10 and (validation["tag"] == "lm loss validation").all()


def test_unknown_tag_lists_the_tags(tmp_path):
    write_tensorboard(tmp_path / "m-125m", {"lm loss": ([1, 2], [3.0, 2.9]), "grad-norm": ([1], [1.0])})
    with pytest.raises(DataError, match=r"run 'm-125m' has no scalar tag 'train/loss'; tags there: 'grad-norm', 'lm loss'"):
        ingest([tmp_path], mapping(loss={"tag": "train/loss"}))


# --- Megatron stdout, Trainer state, W&B --------------------------------------------------


def test_megatron_log(tmp_path):
    iterations = np.arange(100, 1001, 100)
    path = megatron_log(tmp_path / "gpt-1.3b.log", iterations, np.linspace(4, 3, 10), 512, 5000, validation={500: 3.4, 1000: 3.1})
    log = read_log(path)
    assert log.name == "gpt-1.3b" and log.attrs == {"max_steps": 5000}
    assert {"lm loss", "consumed samples", "global batch size", "lm loss validation", "lm loss validation ppl"} <= set(log.tags)
    assert "elapsed time" not in log.tags  # h:mm:ss, not a number
    np.testing.assert_allclose(log.curves["consumed samples"].value, iterations * 512)
    np.testing.assert_allclose(log.curves["lm loss validation"].value, [3.4, 3.1])
    np.testing.assert_allclose(log.curves["lm loss validation ppl"].value, np.exp([3.4, 3.1]), rtol=1e-6)
    assert log.curves["lm loss validation"].step.tolist() == [500, 1000]


def test_megatron_tokens_from_consumed_samples(tmp_path):
    iterations = np.arange(100, 1001, 100)
    megatron_log(tmp_path / "m-125m.log", iterations, np.linspace(4, 3, 10), 512, 5000, validation={500: 3.4})
    m = mapping(tokens={"tag": "consumed samples", "sequence_length": 2048}, loss={"tag": "lm loss validation"})
    result = ingest([tmp_path / "m-125m.log"], m)
    assert result.table["tokens"].tolist() == [500 * 512 * 2048]
    assert result.report["max_steps"].iloc[0] == 5000


def test_megatron_log_without_loss_lines(tmp_path):
    path = tmp_path / "crashed.log"
    path.write_text("> building GPT model ...\nTraceback (most recent call last):\n")
    with pytest.raises(DataError, match=r"crashed.log: no Megatron training lines.*no loss lines"):
        read_log(path)


def test_trainer_state_checkpoints_and_tokens(tmp_path):
    steps = np.arange(10, 501, 10)
    loss = chinchilla_loss(1.25e8, steps * 4096.0)
    run = tmp_path / "out" / "m-125m"
    trainer_state(run / "checkpoint-250" / "trainer_state.json", steps[:25], loss[:25], tokens_per_step=4096)
    trainer_state(run / "checkpoint-500" / "trainer_state.json", steps, loss, tokens_per_step=4096, eval_every=10, eval_losses=loss + 0.05, total_flos=6e15)
    result = ingest([tmp_path / "out"], mapping(loss={"tag": "loss"}, tokens={"tag": "num_input_tokens_seen"}))
    table = result.table
    assert result.report["run"].tolist() == ["m-125m"] and len(table) == 50  # the latest state holds everything
    np.testing.assert_allclose(table["tokens"], steps * 4096.0)
    np.testing.assert_allclose(table["flops"], steps * 6e15 / 500)
    assert table["source"].iloc[0].endswith("checkpoint-500/trainer_state.json")
    evals = ingest([run / "checkpoint-500" / "trainer_state.json"], mapping(loss={"tag": "eval_loss"}, tokens={"tag": "num_input_tokens_seen"}))
    assert evals.report["run"].tolist() == ["m-125m"] and len(evals.table) == 5


def test_trainer_state_run_level_token_count(tmp_path):
    # without per-entry counts, the top-level num_input_tokens_seen is spread evenly over the steps
    steps = np.arange(10, 101, 10)
    path = trainer_state(tmp_path / "m-125m" / "trainer_state.json", steps, np.linspace(4, 3, 10), tokens_per_step=None)
    text = path.read_text().replace('"num_input_tokens_seen": 0', '"num_input_tokens_seen": 100000000')
    path.write_text(text)
    table = ingest([tmp_path], mapping(loss={"tag": "loss"}, tokens={"tag": "num_input_tokens_seen"})).table
    np.testing.assert_allclose(table["tokens"], steps * 1e6)


def test_wandb_history_export_csv_and_parquet(tmp_path):
    steps = np.arange(0, 200)
    frame = pd.DataFrame({"_step": steps, "_runtime": steps * 1.5, "_timestamp": 1.7e9 + steps, "train/loss": np.linspace(5, 3, 200)})
    frame.loc[frame.index % 10 != 0, "train/loss"] = np.nan  # logged every 10 steps
    frame["train/tokens"] = steps * 1e6
    frame.to_csv(tmp_path / "m-125m.csv", index=False)
    both = pd.concat([frame.assign(run="m-350m"), frame.assign(run="m-760m")])
    both.to_parquet(tmp_path / "sweep.parquet")
    (csv_log,) = read_export(tmp_path / "m-125m.csv")
    assert csv_log.name == "m-125m" and csv_log.tags == ("train/loss", "train/tokens")
    assert len(csv_log.curves["train/loss"]) == 20
    result = ingest([tmp_path / "m-125m.csv", tmp_path / "sweep.parquet"], mapping(loss={"tag": "train/loss"}, tokens={"tag": "train/tokens"}))
    assert result.report["run"].tolist() == ["m-125m", "m-350m", "m-760m"]
    assert result.report["no_tokens"].tolist() == [1, 1, 1]  # step 0
    assert (result.table.groupby("model").size() == 19).all()


def test_wandb_panel_csv(tmp_path):
    steps = np.arange(100, 1001, 100)
    panel = pd.DataFrame({"Step": steps})
    for run, offset in (("m-125m", 0.2), ("m-350m", 0.0)):
        panel[f"{run} - train/loss"] = np.linspace(4, 3, 10) + offset
        panel[f"{run} - train/loss__MIN"] = panel[f"{run} - train/loss"] - 0.1
        panel[f"{run} - train/loss__MAX"] = panel[f"{run} - train/loss"] + 0.1
    panel.loc[9, "m-350m - train/loss"] = np.nan  # one run stopped earlier
    panel.to_csv(tmp_path / "panel.csv", index=False)
    logs = {log.name: log for log in read_export(tmp_path / "panel.csv")}
    assert set(logs) == {"m-125m", "m-350m"} and logs["m-125m"].tags == ("train/loss",)
    np.testing.assert_allclose(logs["m-125m"].curves["train/loss"].value, np.linspace(4, 3, 10) + 0.2)
    assert logs["m-350m"].curves["train/loss"].step.tolist() == steps[:9].tolist()
    tokens_axis = panel.rename(columns={"Step": "train/tokens"}).assign(**{"train/tokens": steps * 1e6})
    tokens_axis.to_csv(tmp_path / "panel_tokens.csv", index=False)
    table = ingest([tmp_path / "panel_tokens.csv"], mapping(loss={"tag": "train/loss"}, tokens={"tag": "train/tokens"})).table
    np.testing.assert_allclose(table[table["model"] == "m-125m"]["tokens"], steps * 1e6)


def test_not_a_wandb_export(tmp_path):
    pd.DataFrame({"a": [1], "b": [2]}).to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(DataError, match=r"x.csv: not a W&B export"):
        read_export(tmp_path / "x.csv")


class _FakeRun:
    def __init__(self, name, run_id, rows):
        self.name, self.id, self._rows = name, run_id, rows

    def scan_history(self):
        return iter(self._rows)


def test_wandb_api_boundary(monkeypatch):
    rows = [{"_step": s, "_runtime": s * 2.0, "train/loss": 4 - s / 100, "tokens": s * 1e6} for s in range(1, 51)]
    calls = []

    class Api:
        def runs(self, path):
            calls.append(("runs", path))
            return [_FakeRun("m-125m", "abc1", rows), _FakeRun("m-350m", "abc2", rows[::2])]

        def run(self, path):
            calls.append(("run", path))
            return _FakeRun("m-125m", "abc1", rows)

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=Api))
    m = mapping(loss={"tag": "train/loss"}, tokens={"tag": "tokens"})
    result = ingest(["wandb://lab/sweep"], m)
    assert calls == [("runs", "lab/sweep")]
    assert result.report["rows"].tolist() == [50, 25]
    assert result.table["source"].iloc[0] == "wandb://lab/sweep/abc1"
    single = ingest(["wandb://lab/sweep/abc1"], m)
    assert calls[-1] == ("run", "lab/sweep/abc1") and single.report["run"].tolist() == ["m-125m"]


def test_wandb_url_without_wandb(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails
    with pytest.raises(DataError, match=r"needs the wandb package"):
        ingest(["wandb://lab/sweep"], mapping())


# --- the mapping file -------------------------------------------------------------------


def test_config_parameter_count():
    # GPT-2 small shapes: 12 layers x 12 x 768^2 = 84.9M non-embedding; + 50257 x 768 tied
    assert ModelConfig(layers=12, width=768, embeddings=False).num_params() == 12 * 12 * 768**2
    assert ModelConfig(layers=12, width=768, embeddings=True, vocab=50257, tied_embeddings=True).num_params() == 12 * 12 * 768**2 + 50257 * 768
    untied = ModelConfig(layers=2, width=64, embeddings=True, vocab=100, tied_embeddings=False, ffn_width=128, gated_mlp=True)
    assert untied.num_params() == 2 * (4 * 64**2 + 3 * 64 * 128) + 2 * 100 * 64


def test_mapping_patterns_merge_in_order(tmp_path):
    path = tmp_path / "map.toml"
    path.write_text(
        """
family = "sweep"
[loss]
tag = "loss"
[tokens]
per_step = 1000
[runs."*"]
config = { vocab = 1000, embeddings = true, tied_embeddings = false }
loss = { unit = "bits" }
[runs."a-*"]
family = "a"
config = { layers = 2, width = 64 }
[runs."a-big"]
params = 5e8
tokens = { tag = "tokens" }
"""
    )
    settings = read_mapping(path).resolve(["a-small", "a-big"])
    small, big = settings["a-small"], settings["a-big"]
    assert small.family == big.family == "a" and small.loss_unit == "bits" and small.loss_tag == "loss"
    assert small.num_params == 2 * 12 * 64**2 + 2 * 1000 * 64 and small.params_from == "config, embeddings included"
    assert big.num_params == 5e8 and big.params_from == "given" and big.tokens.tag == "tokens" and small.tokens.per_step == 1000


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"famly": "x"}, "key 'famly' is not a known key"),
        ({"loss": {"tag": "l", "unit": "ppl"}}, r"key 'loss.unit' must be one of \['nats', 'bits', 'perplexity'\]"),
        ({"tokens": {"per_step": 10, "tag": "t"}}, "table 'tokens' must give per_step"),
        ({"tokens": {"per_step": -1}}, "key 'tokens.per_step' must be a finite number > 0"),
        ({"runs": {"a": {"params": 1e8, "config": {"layers": 2}}}}, "both given"),
        ({"runs": {"a": {"config": {"layers": 2, "depth": 3}}}}, "key 'runs.a.config.depth' is not a known key"),
        ({"cleaning": {"spike_factor": 0.9}}, "spike_factor' must be a finite number > 1"),
        ({"exclude": [1]}, "must be a list of strings"),
    ],
)
def test_mapping_is_strict(raw, message):
    with pytest.raises(SpecError, match=message):
        mapping_from_dict(raw, "map.toml")


def test_mapping_names_what_is_missing():
    m = mapping_from_dict({"loss": {"tag": "loss"}, "runs": {"a*": {"family": "f", "params": 1e8}}}, "map.toml")
    with pytest.raises(SpecError, match=r"map.toml: no a family .* for runs \['b1', 'b2'\].*; no a parameter count .* for runs \['b1', 'b2'\].*no a tokens rule"):
        m.resolve(["a1", "b1", "b2"])
    m = mapping_from_dict({"family": "f", "loss": {"tag": "l"}, "tokens": {"per_step": 1}, "runs": {"gpt-7b": {"params": 7e9}}}, "map.toml")
    with pytest.raises(SpecError, match=r"key 'runs.gpt-7b' matches no run; runs found: \['gpt-125m', 'gpt-350m'\]"):
        m.resolve(["gpt-125m", "gpt-350m"])
    with pytest.raises(SpecError, match=r"exclude pattern 'dbg\*' matches no run"):
        mapping_from_dict({"exclude": ["dbg*"]}, "map.toml").resolve(["gpt-125m"])


def test_exclude_leaves_runs_out(tmp_path):
    for name in ("m-125m", "debug-1"):
        write_tensorboard(tmp_path / name, {"lm loss": (np.arange(1, 11), np.linspace(4, 3, 10))})
    result = ingest([tmp_path], mapping(exclude=["debug-*"]))
    assert result.excluded == ("debug-1",) and result.report["run"].tolist() == ["m-125m"]
    assert "excluded 1 runs: debug-1" in result.summary()


def test_mixed_units_in_a_family(tmp_path):
    for name in ("m-125m", "m-350m"):
        write_tensorboard(tmp_path / name, {"lm loss": (np.arange(1, 11), np.linspace(4, 3, 10))})
    m = mapping(runs={"*": {"params": 1e8}, "m-350m": {"loss": {"unit": "bits"}}})
    with pytest.raises(DataError, match=r"family 'm' mixes loss units \(nats: \['m-125m'\]; bits: \['m-350m'\]\)"):
        ingest([tmp_path], m)


def test_duplicate_run_names_across_sources(tmp_path):
    for sweep in ("a", "b"):
        write_tensorboard(tmp_path / sweep / "m-125m", {"lm loss": ([10], [3.0])})
    with pytest.raises(DataError, match="two runs are named 'm-125m'.*common parent"):
        ingest([tmp_path / "a", tmp_path / "b"], mapping())
    assert {r for r in ingest([tmp_path], mapping()).report["run"]} == {"a/m-125m", "b/m-125m"}


# --- cleaning rules ---------------------------------------------------------------------


def test_later_segment_wins():
    step = np.array([1, 2, 3, 4, 5, 3, 4, 5, 6, 6, 7])
    keep, restarts = later_segment_wins(step)
    assert step[keep].tolist() == [1, 2, 3, 4, 5, 6, 7] and restarts == 2
    assert keep.nonzero()[0].tolist() == [0, 1, 5, 6, 7, 9, 10]  # the re-logged 3, 4, 5 and the second 6 win


def test_spikes_and_units():
    loss = np.array([5.0, 4.0, 3.5, 3.2, 9.0, 3.1, 3.05, 3.0])
    assert spike_mask(loss, Cleaning()).nonzero()[0].tolist() == [4]
    assert not spike_mask(loss, Cleaning(drop_spikes=False)).any()
    assert not spike_mask(np.geomspace(10, 2, 50), Cleaning()).any()  # a steep fall is not a spike
    np.testing.assert_allclose(to_nats(np.array([1.0, 4.0]), "bits"), [math.log(2), 4 * math.log(2)])
    np.testing.assert_allclose(to_nats(np.array([math.e**3]), "perplexity"), [3.0])


def test_cleaning_counts_and_perplexity(tmp_path):
    steps = np.arange(0, 101)
    ppl = np.exp(chinchilla_loss(1.25e8, np.maximum(steps, 1) * TOKENS_PER_STEP))
    ppl[[20, 21]] = [np.nan, np.inf]
    ppl[60] *= 30  # a spike: 30x the perplexity is +3.4 nats
    write_tensorboard(tmp_path / "m-125m", {"ppl": (steps, ppl)}, simple_value=True)
    result = ingest([tmp_path], mapping(loss={"tag": "ppl", "unit": "perplexity"}))
    report = result.report.iloc[0]
    assert (report["logged"], report["non_finite"], report["spikes"], report["no_tokens"], report["rows"]) == (101, 2, 1, 1, 97)
    expected = chinchilla_loss(1.25e8, result.table["tokens"])
    np.testing.assert_allclose(result.table["loss"], expected, rtol=1e-5)
    write_tensorboard(tmp_path / "m-125m", {"ppl": ([200], [0.5])}, simple_value=True)
    with pytest.raises(DataError, match="values below 1.*impossible for a perplexity"):
        ingest([tmp_path], mapping(loss={"tag": "ppl", "unit": "perplexity"}))


def test_a_run_left_empty_is_an_error(tmp_path):
    write_tensorboard(tmp_path / "m-125m", {"lm loss": ([0, 1, 2], [np.nan, np.nan, np.nan])})
    with pytest.raises(DataError, match=r"no usable loss rows left for runs \['m-125m'\]"):
        ingest([tmp_path], mapping())


def test_the_table_is_validated_like_fit_input(tmp_path):
    # tokens below 1e6 everywhere look like billions: the runs-table validation says so
    write_tensorboard(tmp_path / "m-125m", {"lm loss": (np.arange(1, 11), np.linspace(4, 3, 10))})
    with pytest.raises(DataError, match="looks like billions of tokens"):
        ingest([tmp_path], mapping(tokens={"per_step": 1}))


def test_linked_run_folders_are_followed_once(tmp_path):
    for name in ("m-125m", "m-350m"):
        write_tensorboard(tmp_path / "store" / name, {"lm loss": ([10, 20], [3.2, 3.1])})
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    for name in ("m-125m", "m-350m"):
        (sweep / name).symlink_to(tmp_path / "store" / name, target_is_directory=True)
    (sweep / "m-350m" / "loop").symlink_to(sweep, target_is_directory=True)  # a cycle must not hang discovery
    assert sorted(ref.name for ref in tb.find_runs(sweep)) == ["m-125m", "m-350m"]
