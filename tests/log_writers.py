"""Training logs written the way the tools write them, for the ingest tests and benchmark.

TensorBoard files come from the ``tensorboard`` package's own writers: ``tensorboard.summary.Writer``
(0-d tensor scalars, as TF2 writes) and ``EventFileWriter`` with ``simple_value`` summaries
(what PyTorch's ``SummaryWriter`` and so Megatron write). The Megatron log uses Megatron's
format strings; the Trainer state follows ``TrainerState.save_to_json`` (transformers is
not installed: ``dataclasses.asdict`` of its fields, ``indent=2, sort_keys=True``).
"""

# ruff: noqa: UP032  (the Megatron lines keep its own str.format calls, to print exactly what it prints)
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

#: A Chinchilla law used to make plausible losses (nats per token).
LAW = {"E": 1.8, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}


def chinchilla_loss(num_params, tokens, law=LAW) -> np.ndarray:
    return law["E"] + law["A"] / np.asarray(num_params, float) ** law["alpha"] + law["B"] / np.asarray(tokens, float) ** law["beta"]


def write_tensorboard(directory, scalars: dict, simple_value: bool = False, wall_time: float = 1.7e9) -> Path:
    """Write ``{tag: (steps, values)}`` to a new event file in ``directory``; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    events = sorted(((int(s), tag, float(v)) for tag, (steps, values) in scalars.items() for s, v in zip(steps, values)), key=lambda e: e[0])
    if simple_value:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        writer = EventFileWriter(str(directory))
        for step, tag, value in events:
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
            writer.add_event(event_pb2.Event(wall_time=wall_time + step, step=step, summary=summary))
        writer.close()
    else:
        from tensorboard.summary import Writer

        writer = Writer(str(directory))
        for step, tag, value in events:
            writer.add_scalar(tag, value, step, wall_time=wall_time + step)
        writer.close()
    return directory


def megatron_log(path, iterations, losses, global_batch_size: int, train_iters: int, validation: dict | None = None) -> Path:
    """A Megatron-LM stdout log: ``training_log`` lines and ``validation loss at`` blocks."""
    lines = ["using world size: 8, data-parallel size: 8", "> building GPT model ...", "training ..."]
    validation = validation or {}
    consumed = 0
    for iteration, loss in zip(iterations, losses):
        consumed = int(iteration) * global_batch_size
        line = " [2024-05-01 12:00:00]"
        line += " iteration {:8d}/{:8d} |".format(int(iteration), train_iters)
        line += " consumed samples: {:12d} |".format(consumed)
        line += " elapsed time per iteration (ms): {:.1f} |".format(812.3)
        line += " memory(GiB): 41 | elapsed time: 0:12:03 | remaining time: 1:02:00 |"
        line += " learning rate: {:.6E} |".format(3e-4)
        line += " global batch size: {:5d} |".format(global_batch_size)
        line += " {}: {:.6E} |".format("lm loss", float(loss))
        line += " loss scale: {:.1f} |".format(1.0)
        line += " grad norm: {:.3f} |".format(1.234)
        line += " number of skipped iterations: {:3d} |".format(0)
        line += " number of nan iterations: {:3d} |".format(0)
        lines.append(line)
        if int(iteration) in validation:
            value = validation[int(iteration)]
            string = " validation loss at {} | ".format(f"iteration {int(iteration)}")
            string += "{} value: {:.6E} | ".format("lm loss", value)
            string += "{} PPL: {:.6E} | ".format("lm loss", math.exp(min(20, value)))
            lines += ["-" * (len(string) + 1), string, "-" * (len(string) + 1)]
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def trainer_state(path, steps, losses, tokens_per_step=None, eval_every=None, eval_losses=None, max_steps=None, total_flos=0.0) -> Path:
    """A ``trainer_state.json`` as ``TrainerState.save_to_json`` writes it."""
    history = []
    for i, (step, loss) in enumerate(zip(steps, losses)):
        entry = {"epoch": round(step / 1000, 4), "grad_norm": 0.8, "learning_rate": 3e-4, "loss": float(loss), "step": int(step)}
        if tokens_per_step:
            entry["num_input_tokens_seen"] = int(step) * tokens_per_step
        history.append(entry)
        if eval_every and (i + 1) % eval_every == 0:
            history.append({"epoch": round(step / 1000, 4), "eval_loss": float(eval_losses[i]), "eval_runtime": 3.2, "step": int(step)})
    last = int(steps[-1])
    history.append({"epoch": round(last / 1000, 4), "step": last, "total_flos": total_flos, "train_loss": float(np.mean(losses)), "train_runtime": 100.0})
    state = {
        "best_global_step": None,
        "best_metric": None,
        "best_model_checkpoint": None,
        "epoch": round(last / 1000, 4),
        "eval_steps": 500,
        "global_step": last,
        "is_hyper_param_search": False,
        "is_local_process_zero": True,
        "is_world_process_zero": True,
        "log_history": history,
        "logging_steps": 10,
        "max_steps": max_steps or last,
        "num_input_tokens_seen": last * tokens_per_step if tokens_per_step else 0,
        "num_train_epochs": 1,
        "save_steps": 500,
        "stateful_callbacks": {},
        "total_flos": total_flos,
        "train_batch_size": 8,
        "trial_name": None,
        "trial_params": None,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    return Path(path)
