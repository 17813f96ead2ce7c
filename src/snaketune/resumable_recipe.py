"""torchtune 0.6.1's ``lora_finetune_single_device``, with the resume of its step counter fixed.

That recipe restores its global step (and with it the learning-rate schedule and the metric
logs' step numbers) only when ``max_steps_per_epoch`` is *smaller* than an epoch's natural
length; with the natural length (what snaketune sets so a resume is exact) a resumed run
restarts its warmup/cosine schedule from step 0. This subclass sets the step and rebuilds the
scheduler at the step the saved epochs reached. Run as ``tune run snaketune/resumable_recipe.py
--config ...`` (torchtune imports it as the module ``snaketune.resumable_recipe``); the distributed recipe restores its step unconditionally and is used as it is.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torchtune
from omegaconf import DictConfig
from torchtune import config


def _torchtune_recipe():
    # torchtune ships its recipes as files beside the package (`recipes/` refuses imports)
    path = Path(torchtune.__file__).resolve().parents[1] / "recipes" / "lora_finetune_single_device.py"
    spec = importlib.util.spec_from_file_location("torchtune_lora_finetune_single_device", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LoRAFinetuneRecipeSingleDevice


class ResumableLoRAFinetuneRecipeSingleDevice(_torchtune_recipe()):
    def setup(self, cfg: DictConfig) -> None:
        super().setup(cfg)
        if self.epochs_run and self.global_step == 0:
            self.global_step = self.epochs_run * self._steps_per_epoch
            self._lr_scheduler = self._setup_lr_scheduler(
                cfg_lr_scheduler=cfg.get("lr_scheduler", None),
                num_training_steps=self.total_epochs * self._steps_per_epoch,
                last_epoch=self.global_step - 1,
            )


@config.parse
def recipe_main(cfg: DictConfig) -> None:
    config.log_config(recipe_name="ResumableLoRAFinetuneRecipeSingleDevice", cfg=cfg)
    recipe = ResumableLoRAFinetuneRecipeSingleDevice(cfg=cfg)
    recipe.setup(cfg=cfg)
    recipe.train()
    recipe.cleanup()


if __name__ == "__main__":
    sys.exit(recipe_main())
