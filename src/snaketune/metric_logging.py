"""A torchtune metric logger that writes both the disk log and Weights & Biases.

torchtune's recipes take exactly one ``metric_logger``. Replacing its ``DiskLogger`` by the
``WandBLogger`` would lose the ``log_*.txt`` files that the report's loss curves (and a run's
status) read, so with W&B on, finetune.yaml names this logger, which hands every call to both.
"""

from __future__ import annotations

from collections.abc import Mapping

from torchtune.training.metric_logging import DiskLogger, MetricLoggerInterface, WandBLogger


class DiskAndWandBLogger(MetricLoggerInterface):
    """torchtune's ``DiskLogger`` (into ``log_dir``) and ``WandBLogger`` (``wandb`` keywords)."""

    def __init__(self, log_dir: str, wandb: Mapping):
        # W&B first: a missing wandb package fails before an empty disk log is created
        self._wandb = WandBLogger(**wandb)
        self._disk = DiskLogger(log_dir=log_dir)

    def log(self, name, data, step) -> None:
        self._disk.log(name, data, step)
        self._wandb.log(name, data, step)

    def log_dict(self, payload, step) -> None:
        self._disk.log_dict(payload, step)
        self._wandb.log_dict(payload, step)

    def log_config(self, config) -> None:
        # both would save torchtune_config.yaml into output_dir; the W&B logger also uploads it
        self._wandb.log_config(config)

    def close(self) -> None:
        self._disk.close()
        self._wandb.close()
