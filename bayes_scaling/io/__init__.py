"""Read the logs labs have into a validated runs table.

``ingest(sources, mapping)`` reads TensorBoard event files, W&B history exports and panel
CSVs (or ``wandb://`` with the ``wandb`` package), Hugging Face ``trainer_state.json`` and
Megatron-LM stdout logs; the TOML mapping (:mod:`~bayes_scaling.io.mapping`) adds what logs
lack. One module per format; :mod:`~bayes_scaling.io.ingest` holds the shared rules.
"""

from .ingest import IngestResult, discover, ingest, write_runs
from .logs import Curve, RunLog, RunRef
from .mapping import (
    Cleaning,
    Mapping,
    ModelConfig,
    RunSettings,
    TokensRule,
    mapping_from_dict,
    read_mapping,
)

__all__ = [
    "Cleaning",
    "Curve",
    "IngestResult",
    "Mapping",
    "ModelConfig",
    "RunLog",
    "RunRef",
    "RunSettings",
    "TokensRule",
    "discover",
    "ingest",
    "mapping_from_dict",
    "read_mapping",
    "write_runs",
]
