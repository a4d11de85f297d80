"""Training driver of mplfast: config and presets, the run loop, checkpoints, logging, plots,
evaluation of checkpoints and the seeded ablation.

``from mplfast.train import TrainConfig, run`` is the library entry point; the CLI
(``mplfast train|eval|ablate``) is a thin layer over it.
"""
from mplfast.train.config import TrainConfig, resolve
from mplfast.train.presets import PRESETS
from mplfast.train.runner import RunResult, run

__all__ = ["PRESETS", "RunResult", "TrainConfig", "resolve", "run"]
