"""torchtune 0.6.1's ``lora_finetune_single_device``, made exact and interruptible: a resumed
run equals the uninterrupted one (``torch.equal`` on the CPU, same thread count and batch
size), and an interruption loses the steps since the last step state, not the whole epoch.

Fixes, each found by comparing a resumed run with an uninterrupted one:
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
- **The data order follows ``seed``.** torchtune seeds its sampler with 0 whatever the config
  says; here with ``seed`` (a recipe state made before records no sampler seed: 0 then, so such
  a training resumes in the order it started with).

Mid-epoch saves (:mod:`snaketune.step_state`): the training loop is torchtune's, plus a snapshot
of the dataloader's position and the RNG states after every optimizer step. A step state is
written every ``save_every_steps`` steps and/or ``save_every_minutes`` minutes, and when the
process receives SIGTERM or SIGINT: then the training stops at the end of the batch it is in
and saves the state as of its last optimizer step (a partial gradient accumulation is dropped
and redone on resume), then exits with 128 + the signal number. ``resume_from_step_state=True``
(set by the finetune job) continues from it: torchtune's own resume is not used then (it needs
an epoch checkpoint, which a first epoch does not have), the step state holds everything.

Validation (``validation: True``, the ``dataset_val`` split; snaketune's keys, torchtune ignores
them): at each epoch's end, and every ``validate_every_steps`` optimizer steps when that is set,
the token-weighted mean loss over the whole split (sum of the token losses / number of target
tokens), in eval mode, without gradients, inside ``torch.random.fork_rng()`` with the Python and
NumPy generators restored after it: iterating a DataLoader draws from the global generators, and
validating must not change the training (the exactness test proves it). ``val_loss`` is logged in
the same metric-log record as that step's training loss (a validation step always gets one, so
every record has a ``loss``). Each epoch's token-weighted mean training loss and its validation
loss go to ``snaketune_losses.json`` (EPOCH_LOSSES) beside the checkpoints (the finetune job copies them into the
manifest); a step state carries the sums of the epoch in progress. ``validate_only: True``
(snaketune's validate job, :mod:`snaketune.validate`) loads a saved epoch as the base model
(LoRA's B starts at zero: the merged model) and writes its validation loss to ``validate_output``.

Run as ``tune run snaketune/resumable_recipe.py --config ...``: torchtune imports a custom
recipe given as a path as the module ``snaketune.resumable_recipe`` (a dotted name would lose
its last part to ``os.path.splitext``). The distributed recipe gathers copies for saving and
restores its step unconditionally: it is used as it is (epoch-level resume only).
"""

from __future__ import annotations

import importlib.util
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchtune
from omegaconf import DictConfig
from torchtune import config, training, utils
from torchtune.modules.peft import get_adapter_state_dict, get_lora_module_names, get_merged_lora_ckpt
from tqdm import tqdm

from snaketune import faults, step_state
from snaketune.render import write_atomic
from snaketune.state import EPOCH_LOSSES
from snaketune.state import RECIPE_RNG_KEY as RNG_KEY
from snaketune.state import RECIPE_SAMPLER_SEED_KEY as SAMPLER_SEED_KEY

log = utils.get_logger("DEBUG")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# torchtune's sampler seed before snaketune seeded it from the config
TORCHTUNE_SAMPLER_SEED = 0
# The step state's sums of the epoch in progress (token-weighted training loss).
EPOCH_LOSS_SUM, EPOCH_TOKENS = "epoch_loss_sum", "epoch_tokens"


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


class Stopped(Exception):
    """The training was told to stop (a signal) and has saved what it had."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class ResumableLoRAFinetuneRecipeSingleDevice(_torchtune_recipe()):
    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        self._save_every_steps = int(cfg.get("save_every_steps") or 0)
        self._save_every_seconds = float(cfg.get("save_every_minutes") or 0) * 60
        self._step_state_path = Path(cfg.output_dir) / step_state.STEP_STATE
        self._resume_from_step_state = bool(cfg.get("resume_from_step_state", False))
        self._step_state = None
        # a step state's RNG states, restored once the resumed epoch's data iterator exists
        self._step_rng_states = None
        self._sampler_seed = self.seed
        # where the epoch in progress starts (batches already consumed: a step state's position)
        self._resume_batches = 0
        # the training as of its last optimizer step, and the newest saved state's step
        self._snapshot = None
        self._saved_step = 0
        self._stop_signal = None
        self._validation = bool(cfg.get("validation", False))
        self._validate_every_steps = int(cfg.get("validate_every_steps") or 0) if self._validation else 0
        self._val_dataloader = None
        # the epoch in progress: sum of its token losses and its target tokens (None: unknown,
        # a step state of an older snaketune)
        self._epoch_loss_sum = 0.0
        self._epoch_tokens = 0

    def load_checkpoint(self, cfg_checkpointer: DictConfig) -> dict:
        if self._resume_from_step_state:
            if self._resume_from_checkpoint:
                raise ValueError("resume_from_step_state and resume_from_checkpoint exclude each other")
            self._step_state = step_state.read(self._step_state_path, device=str(self._device))
            if self._step_state is None:
                raise FileNotFoundError(f"resume_from_step_state=True but {self._step_state_path} is missing or unreadable")
            self._sampler_seed = self._step_state[step_state.SAMPLER_SEED]
        checkpoint = super().load_checkpoint(cfg_checkpointer)
        self._saved_rng_states = checkpoint.get(RNG_KEY) if self._resume_from_checkpoint else None
        if self._resume_from_checkpoint:
            self._sampler_seed = checkpoint.get(SAMPLER_SEED_KEY, TORCHTUNE_SAMPLER_SEED)
        return checkpoint

    def _setup_data(self, *args, **kwargs):
        dataloader = super()._setup_data(*args, **kwargs)
        # torchtune's StatefulDistributedSampler(seed=0); its permutation reads .seed per epoch
        dataloader.sampler.seed = self._sampler_seed
        return dataloader

    def setup(self, cfg: DictConfig) -> None:
        super().setup(cfg)
        # the last batch of an epoch is the one that completes its last optimizer step
        self._epoch_batches = self._steps_per_epoch * self._gradient_accumulation_steps
        if self._step_state is not None:
            self._continue_from_step_state(cfg)
        elif self.epochs_run and self.global_step == 0:
            self.global_step = self.epochs_run * self._steps_per_epoch
            self._lr_scheduler = self._setup_lr_scheduler(
                cfg_lr_scheduler=cfg.get("lr_scheduler", None),
                num_training_steps=self.total_epochs * self._steps_per_epoch,
                last_epoch=self.global_step - 1,
            )
        if self._validation:
            self._val_dataloader = self._setup_validation(cfg)
        # last: building the model drew from the generators (LoRA initialisation)
        if self._saved_rng_states is not None:
            restore_rng_states(self._saved_rng_states)
        self._saved_step = self.global_step
        # the run directory's name, for run-scoped fault points: checkpoints are ck-out-<run_dir>
        self._run_dir = Path(cfg.output_dir).name.removeprefix("ck-out-")

    def _setup_validation(self, cfg: DictConfig):
        """The validation split in order, every sample (no shuffling, no dropped last batch)."""
        from functools import partial

        from torch.utils.data import DataLoader
        from torchtune.config._utils import _get_component_from_path

        if cfg.get("dataset_val") is None:
            raise ValueError("validation: True needs dataset_val (the validation split's dataset)")
        generators = rng_states()
        with torch.random.fork_rng(devices=[]):
            dataset = config.instantiate(cfg.dataset_val, self._tokenizer)
        restore_rng_states(generators)
        if len(dataset) == 0:
            raise ValueError(f"the validation split {cfg.dataset_val.get('data_files')} is empty")
        collate = _get_component_from_path(cfg.get("collate_fn", "torchtune.data.padded_collate_sft"))
        collate = partial(collate, padding_idx=self._tokenizer.pad_id, ignore_idx=self._loss_fn.ignore_index)
        return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, drop_last=False, collate_fn=collate)

    def validation_loss(self) -> float:
        """Token-weighted mean loss over the validation split; the training state is untouched:
        no gradients, eval mode (no dropout), and every generator as it was."""
        generators = rng_states()
        was_training = self._model.training
        total, tokens = 0.0, 0
        devices = [self._device] if self._device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            self._model.eval()
            try:
                for batch in self._val_dataloader:
                    utils.batch_to_device(batch, self._device)
                    # the tokens the loss averages over: the labels shifted by one (_loss_step)
                    count = int((batch["labels"][..., 1:] != self._loss_fn.ignore_index).sum())
                    if count:
                        total += float(self._loss_step(batch)) * count
                        tokens += count
            finally:
                self._model.train(was_training)
        restore_rng_states(generators)
        if not tokens:
            raise ValueError("the validation split has no target tokens")
        return total / tokens

    def _record_epoch_losses(self, epoch: int, val_loss: float | None) -> None:
        """This epoch's losses into LOSSES (a redone epoch replaces its entry)."""
        import json

        path = Path(self._output_dir) / EPOCH_LOSSES
        try:
            losses = json.loads(path.read_text())
        except (OSError, ValueError):
            losses = {}
        known = self._epoch_loss_sum is not None and self._epoch_tokens
        losses[f"epoch_{epoch}"] = {
            "step": self.global_step,
            "train_loss": self._epoch_loss_sum / self._epoch_tokens if known else None,
            "train_tokens": self._epoch_tokens if known else None,
            "val_loss": val_loss,
        }
        write_atomic(path, json.dumps(losses, indent=1, sort_keys=True) + "\n")

    def _continue_from_step_state(self, cfg: DictConfig) -> None:
        state, self._step_state = self._step_state, None
        made = (state[step_state.STEPS_PER_EPOCH], state[step_state.BATCH_SIZE], state[step_state.ACCUMULATION])
        wanted = (self._steps_per_epoch, cfg.batch_size, self._gradient_accumulation_steps)
        if made != wanted:
            raise ValueError(
                f"{self._step_state_path} was made with (steps per epoch, batch size, accumulation) {made}, this training has {wanted}"
            )
        missing, unexpected = self._model.load_state_dict(state[training.ADAPTER_KEY], strict=False)
        if unexpected or any("lora" in key or "magnitude" in key for key in missing):
            raise ValueError(f"{self._step_state_path} does not fit this model's adapter ({len(unexpected)} unexpected keys)")
        self._optimizer.load_state_dict(state[training.OPT_KEY])
        self.epochs_run = state[step_state.EPOCH]
        self.global_step = state[step_state.GLOBAL_STEP]
        self._resume_batches = state[step_state.BATCHES]
        self._lr_scheduler = self._setup_lr_scheduler(
            cfg_lr_scheduler=cfg.get("lr_scheduler", None),
            num_training_steps=self.total_epochs * self._steps_per_epoch,
            last_epoch=self.global_step - 1,
        )
        self._lr_scheduler.load_state_dict(state[step_state.LR_SCHEDULER])
        # a state saved after the epoch's last step has nothing left to load: the epoch is saved next
        if self._resume_batches < self._epoch_batches:
            self._dataloader.load_state_dict(state[training.DATALOADER_KEY])
        self._step_rng_states = state[RNG_KEY]
        self._epoch_loss_sum = state.get(EPOCH_LOSS_SUM)
        self._epoch_tokens = int(state.get(EPOCH_TOKENS) or 0)
        print(
            f"snaketune: resumed from the step state at step {self.global_step} "
            f"(epoch {self.epochs_run + 1} of {self.total_epochs}, {self._resume_batches} of {self._epoch_batches} batches)",
            flush=True,
        )

    def _request_stop(self, signum, frame) -> None:
        if self._stop_signal is None:
            self._stop_signal = signum
        faults.release_holds()

    def _take_snapshot(self, epoch: int, batches: int) -> dict:
        """What a step state needs besides the model and optimizer, as of this optimizer step."""
        return {
            step_state.GLOBAL_STEP: self.global_step,
            step_state.EPOCH: epoch,
            step_state.BATCHES: batches,
            training.DATALOADER_KEY: self._dataloader.state_dict(),
            RNG_KEY: rng_states(),
            EPOCH_LOSS_SUM: self._epoch_loss_sum,
            EPOCH_TOKENS: self._epoch_tokens,
        }

    def _save_step_state(self, why: str) -> None:
        started = time.perf_counter()
        state = {
            "format": step_state.FORMAT,
            **self._snapshot,
            # unchanged since the snapshot: an accumulation in progress only fills .grad
            training.ADAPTER_KEY: get_adapter_state_dict(self._model.state_dict()),
            training.OPT_KEY: self._optimizer.state_dict(),
            step_state.LR_SCHEDULER: self._lr_scheduler.state_dict(),
            step_state.STEPS_PER_EPOCH: self._steps_per_epoch,
            step_state.BATCH_SIZE: self._dataloader.batch_size,
            step_state.ACCUMULATION: self._gradient_accumulation_steps,
            training.SEED_KEY: self.seed,
            step_state.SAMPLER_SEED: self._sampler_seed,
            step_state.SAVED_AT: time.time(),
        }
        size = step_state.write(self._step_state_path, state, self._run_dir)
        self._saved_step = self._snapshot[step_state.GLOBAL_STEP]
        print(
            f"snaketune: saved a step state at step {self._saved_step} (epoch {self._snapshot[step_state.EPOCH] + 1}, {why}) "
            f"in {time.perf_counter() - started:.3f} s, {size / 2**20:.2f} MiB",
            flush=True,
        )

    def _save_due(self, batches: int, last_save: float) -> str | None:
        """Why a step state is due after this optimizer step, or None."""
        if batches == self._epoch_batches:  # the epoch checkpoint follows right away
            return None
        if self._save_every_steps and self.global_step % self._save_every_steps == 0:
            return f"every {self._save_every_steps} steps"
        if self._save_every_seconds and time.monotonic() - last_save >= self._save_every_seconds:
            return f"every {self._save_every_seconds / 60:g} minutes"
        return None

    def _stop(self) -> None:
        name = signal.Signals(self._stop_signal).name
        if self._snapshot is not None and self._snapshot[step_state.GLOBAL_STEP] > self._saved_step:
            self._save_step_state(f"stopping on {name}")
        else:
            print(f"snaketune: stopping on {name}: nothing new since the state saved at step {self._saved_step}", flush=True)
        raise Stopped(self._stop_signal)

    def train(self) -> None:
        """torchtune's training loop, continuing mid-epoch, with step states (see the module docstring)."""
        for number in STOP_SIGNALS:
            signal.signal(number, self._request_stop)
        accumulation = self._gradient_accumulation_steps
        t0 = time.perf_counter()
        last_save = time.monotonic()
        running_loss = 0
        num_tokens = 0

        with self._profiler as prof:
            for curr_epoch in range(self.epochs_run, self.total_epochs):
                first, self._resume_batches = self._resume_batches, 0
                if not first:
                    self._epoch_loss_sum, self._epoch_tokens = 0.0, 0
                epoch_val_loss = None
                pbar = tqdm(total=self._steps_per_epoch, initial=first // accumulation)
                self._dataloader.sampler.set_epoch(curr_epoch)
                # the dataloader continues where a loaded state left off; idx counts from there
                data = iter(self._dataloader) if first < self._epoch_batches else iter(())
                if self._step_rng_states is not None:
                    # creating the iterator drew its base seed from the generators, as it had
                    # before the state was saved: restore them after it
                    restore_rng_states(self._step_rng_states)
                    self._step_rng_states = None
                for idx, batch in enumerate(data, start=first):
                    if (
                        curr_epoch == 0
                        and self.profiler_profile_memory
                        and idx == self.profiler_wait_steps + self.profiler_warmup_steps
                        and self._device.type == "cuda"
                    ):
                        torch.cuda.memory._record_memory_history()

                    utils.batch_to_device(batch, self._device)
                    # tokens of the step; the loss is normalised by them when the step is taken
                    current_num_tokens = (batch["labels"] != self._loss_fn.ignore_index).sum()
                    num_tokens += current_num_tokens
                    current_loss = self._loss_step(batch) * current_num_tokens
                    running_loss += current_loss
                    current_loss.backward()
                    faults.reached(f"recipe:batch-{self.global_step + 1}.{idx % accumulation + 1}", self._run_dir)

                    if (idx + 1) % accumulation == 0:
                        training.scale_grads(self._model, 1 / num_tokens)
                        if self._clip_grad_norm is not None:
                            grad_norm = torch.nn.utils.clip_grad_norm_(self._model.parameters(), max_norm=float(self._clip_grad_norm))
                        self._optimizer.step()
                        self._optimizer.zero_grad(set_to_none=True)
                        self._lr_scheduler.step()
                        self.global_step += 1
                        time_per_step = time.perf_counter() - t0  # before a validation

                        step_loss_sum, step_tokens = running_loss.item(), int(num_tokens)
                        loss_to_log = step_loss_sum / num_tokens
                        if self._epoch_loss_sum is not None:
                            self._epoch_loss_sum += step_loss_sum
                        self._epoch_tokens += step_tokens
                        pbar.update(1)
                        pbar.set_description(f"{curr_epoch + 1}|{self.global_step}|Loss: {loss_to_log}")
                        last_of_epoch = (idx + 1) // accumulation == self._steps_per_epoch
                        val_loss = None
                        if self._validation and (
                            last_of_epoch or (self._validate_every_steps and self.global_step % self._validate_every_steps == 0)
                        ):
                            val_loss = self.validation_loss()
                            if last_of_epoch:
                                epoch_val_loss = val_loss
                            print(f"snaketune: step {self.global_step}: validation loss {val_loss:.6g}", flush=True)
                        # a validation step always gets its record: val_loss beside that step's loss
                        if self.global_step % self._log_every_n_steps == 0 or val_loss is not None:
                            log_dict = {
                                "loss": loss_to_log,
                                "lr": self._optimizer.param_groups[0]["lr"],
                                "tokens_per_second_per_gpu": num_tokens / time_per_step,
                            }
                            if self._device.type != "cpu" and self._log_peak_memory_stats:
                                log_dict.update(training.get_memory_stats(device=self._device))
                            if self._clip_grad_norm is not None:
                                log_dict.update({"grad_norm": grad_norm})
                            if val_loss is not None:  # last: readers of "Step N | loss:… lr:…" stay right
                                log_dict["val_loss"] = val_loss
                            self._metric_logger.log_dict(log_dict, step=self.global_step)

                        self._snapshot = self._take_snapshot(curr_epoch, idx + 1)
                        due = self._save_due(idx + 1, last_save)
                        if due:
                            self._save_step_state(due)
                            last_save = time.monotonic()
                        faults.reached(f"recipe:step-{self.global_step}", self._run_dir)
                        running_loss = 0
                        num_tokens = 0
                        t0 = time.perf_counter()

                    if (
                        curr_epoch == 0
                        and self.profiler_profile_memory
                        and idx == self.profiler_wait_steps + self.profiler_warmup_steps + self.profiler_active_steps
                        and self._device.type == "cuda"
                    ):
                        torch.cuda.memory._record_memory_history(enabled=None)
                    prof.step()

                    if self._stop_signal is not None:
                        self._stop()
                    if (idx + 1) // accumulation == self._steps_per_epoch:
                        break

                self.epochs_run += 1
                if self._validation and epoch_val_loss is None:
                    # resumed from a step state saved after the epoch's last step (its record is logged)
                    epoch_val_loss = self.validation_loss()
                    print(f"snaketune: step {self.global_step}: validation loss {epoch_val_loss:.6g}", flush=True)
                self._record_epoch_losses(curr_epoch, epoch_val_loss)
                start_save_checkpoint = time.perf_counter()
                log.info("Starting checkpoint save...")
                self.save_checkpoint(epoch=curr_epoch)
                log.info(f"Checkpoint saved in {time.perf_counter() - start_save_checkpoint:.2f} seconds.")
                if self._stop_signal is not None and self.epochs_run < self.total_epochs:
                    self._stop()

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
                    SAMPLER_SEED_KEY: self._sampler_seed,
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
        self._saved_step = self.global_step
        # the epoch checkpoint contains every step state of the epoch
        step_state.remove(self._step_state_path)
        faults.reached(f"recipe:after-epoch-{epoch}", self._run_dir)


@config.parse
def recipe_main(cfg: DictConfig) -> None:
    config.log_config(recipe_name="ResumableLoRAFinetuneRecipeSingleDevice", cfg=cfg)
    recipe = ResumableLoRAFinetuneRecipeSingleDevice(cfg=cfg)
    recipe.setup(cfg=cfg)
    if cfg.get("validate_only"):
        # snaketune's validate job: the validation loss of the checkpoint loaded, nothing trained
        import json

        loss = recipe.validation_loss()
        write_atomic(Path(cfg.validate_output), json.dumps({"val_loss": loss}) + "\n")
        print(f"snaketune: validation loss {loss:.6g}", flush=True)
        recipe.cleanup()
        return
    try:
        recipe.train()
    except Stopped as stopped:
        recipe.cleanup()
        sys.exit(128 + stopped.signum)
    recipe.cleanup()


if __name__ == "__main__":
    sys.exit(recipe_main())
