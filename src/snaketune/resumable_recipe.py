"""torchtune 0.6.1's ``lora_finetune_single_device``, made exact: a resumed run equals the
uninterrupted one (``torch.equal`` on the CPU, same thread count and batch size).

Three fixes, each found by comparing a resumed run with an uninterrupted one:
- **Saving an epoch no longer changes the live model.** torchtune merges the LoRA delta into
  ``{k: v.cpu() for k, v in model.state_dict()}`` in place. On a GPU ``.cpu()`` copies; on the
  CPU it returns the live tensor, so every epoch save added the adapter into the base weights
  while the adapter stayed active (the next epoch trained a model with the delta counted twice:
  the demo's loss jumped from 0.009 to 0.157 at the epoch boundary). Here the merge writes into
  copies of the tensors that alias the model.
- **RNG states are saved with the recipe state and restored on resume.** Dropout and the
  dataloader's per-epoch seed draw from the global generators; torchtune saves none of them.
- **The step counter and learning-rate schedule are restored.** torchtune restores them only
  when ``max_steps_per_epoch`` is *smaller* than an epoch's natural length; snaketune sets it to
  exactly that length (so a resume knows where an epoch ends).

Run as ``tune run snaketune/resumable_recipe.py --config ...``: torchtune imports a custom
recipe given as a path as the module ``snaketune.resumable_recipe`` (a dotted name would lose
its last part to ``os.path.splitext``). The distributed recipe gathers copies for saving and
restores its step unconditionally: it is used as it is.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torchtune
from omegaconf import DictConfig
from torchtune import config, training
from torchtune.modules.peft import get_adapter_state_dict, get_lora_module_names, get_merged_lora_ckpt

from snaketune import faults
from snaketune.state import RECIPE_RNG_KEY as RNG_KEY


def _torchtune_recipe():
    # torchtune ships its recipes as files beside the package (`recipes/` refuses imports)
    path = Path(torchtune.__file__).resolve().parents[1] / "recipes" / "lora_finetune_single_device.py"
    spec = importlib.util.spec_from_file_location("torchtune_lora_finetune_single_device", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LoRAFinetuneRecipeSingleDevice


def rng_states() -> dict:
    """Every generator a training draws from, in a form ``torch.load(weights_only=True)`` reads."""
    version, state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "python": [version, list(state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def merged_checkpoint(live: dict, rank: int, alpha: float) -> dict:
    """The model's weights with the LoRA delta merged in, on the CPU, without writing into any
    tensor of ``live`` (the model's own state dict)."""
    state_dict = {key: value.cpu() for key, value in live.items()}
    for key in [key for key in state_dict if key.endswith(".lora_a.weight")]:
        weight = key.removesuffix(".lora_a.weight") + ".weight"
        # on the CPU .cpu() is the live tensor itself, and the merge adds into it in place
        if state_dict[weight].data_ptr() == live[weight].data_ptr():
            state_dict[weight] = state_dict[weight].clone()
    return get_merged_lora_ckpt(state_dict, rank=rank, alpha=alpha)


class _FaultPoints:
    """The recipe's metric logger, reporting each logged optimizer step to :mod:`snaketune.faults`."""

    def __init__(self, logger, run_dir: str):
        self._logger, self._run_dir = logger, run_dir

    def log_dict(self, payload, step) -> None:
        self._logger.log_dict(payload, step)
        faults.reached(f"recipe:step-{step}", self._run_dir)

    def __getattr__(self, name):
        return getattr(self._logger, name)


class ResumableLoRAFinetuneRecipeSingleDevice(_torchtune_recipe()):
    def load_checkpoint(self, cfg_checkpointer: DictConfig) -> dict:
        checkpoint = super().load_checkpoint(cfg_checkpointer)
        self._saved_rng_states = checkpoint.get(RNG_KEY) if self._resume_from_checkpoint else None
        return checkpoint

    def setup(self, cfg: DictConfig) -> None:
        super().setup(cfg)
        if self.epochs_run and self.global_step == 0:
            self.global_step = self.epochs_run * self._steps_per_epoch
            self._lr_scheduler = self._setup_lr_scheduler(
                cfg_lr_scheduler=cfg.get("lr_scheduler", None),
                num_training_steps=self.total_epochs * self._steps_per_epoch,
                last_epoch=self.global_step - 1,
            )
        # last: building the model drew from the generators (LoRA initialisation)
        if self._saved_rng_states is not None:
            restore_rng_states(self._saved_rng_states)
        # the run directory's name, for run-scoped fault points: checkpoints are ck-out-<run_dir>
        self._run_dir = Path(cfg.output_dir).name.removeprefix("ck-out-")
        self._metric_logger = _FaultPoints(self._metric_logger, self._run_dir)

    def save_checkpoint(self, epoch: int) -> None:
        """torchtune's save, from copies, with the RNG states in the recipe state."""
        intermediate = epoch + 1 < self.total_epochs
        state = {}
        if intermediate:
            state.update(
                {
                    training.OPT_KEY: self._optimizer.state_dict(),
                    training.SEED_KEY: self.seed,
                    training.EPOCHS_KEY: self.epochs_run,
                    training.TOTAL_EPOCHS_KEY: self.total_epochs,
                    training.MAX_STEPS_KEY: self.max_steps_per_epoch,
                    training.DATALOADER_KEY: self._dataloader.state_dict(),
                    RNG_KEY: rng_states(),
                }
            )
        live = self._model.state_dict()
        state[training.ADAPTER_KEY] = get_adapter_state_dict(live)
        if not self._save_adapter_weights_only:
            state[training.MODEL_KEY] = merged_checkpoint(live, self._lora_rank, self._lora_alpha)
        state[training.ADAPTER_CONFIG] = {
            "r": self._lora_rank,
            "lora_alpha": self._lora_alpha,
            "target_modules": get_lora_module_names(self._lora_attn_modules, self._apply_lora_to_mlp, self._apply_lora_to_output),
            "peft_type": "LORA",
        }
        self._checkpointer.save_checkpoint(
            state, epoch=epoch, intermediate_checkpoint=intermediate, adapter_only=self._save_adapter_weights_only
        )
        faults.reached(f"recipe:after-epoch-{epoch}", self._run_dir)


@config.parse
def recipe_main(cfg: DictConfig) -> None:
    config.log_config(recipe_name="ResumableLoRAFinetuneRecipeSingleDevice", cfg=cfg)
    recipe = ResumableLoRAFinetuneRecipeSingleDevice(cfg=cfg)
    recipe.setup(cfg=cfg)
    recipe.train()
    recipe.cleanup()


if __name__ == "__main__":
    sys.exit(recipe_main())
