"""A resumed training equals the uninterrupted one, bit for bit (CPU, same threads and batch).

Real torchtune trainings of the tiny demo model, killed at named points (snaketune.faults) or
told to stop by a signal, and resumed through snaketune's recipe from what they saved: an
epoch checkpoint (torchtune's own resume path) or a step state (mid-epoch); LoRA dropout is
on, so the saved RNG states are part of what is proven.
"""

from __future__ import annotations

import math
import signal

import pytest
import torch
from exactness import Settings, Stop, assert_same_training, recipe_state, train

from snaketune.finetune import write_manifest
from snaketune.resumable_recipe import RNG_KEY, merged_checkpoint
from snaketune.step_state import STEP_STATE

SETTINGS = Settings()
# two batches per optimizer step: a stop in between drops the first and redoes it
ACCUMULATING = Settings(epochs=2, steps_per_epoch=3, batch_size=4, gradient_accumulation_steps=2)


@pytest.mark.e2e
def test_resumed_twice_equals_uninterrupted(tmp_path, demo_assets, uninterrupted):
    resumed = train(tmp_path, demo_assets, SETTINGS, kills=["recipe:after-epoch-0", "recipe:after-epoch-1"])
    assert resumed.exit_codes == [-9, -9, 0]
    assert RNG_KEY in recipe_state(resumed.output_dir)
    assert_same_training(resumed, uninterrupted(SETTINGS), SETTINGS.epochs)


@pytest.mark.e2e
def test_killed_mid_epoch_resumes_from_the_last_step_state(tmp_path, demo_assets, uninterrupted):
    # a step state every 3 steps; SIGKILL at step 8 (epoch 1): the resume redoes steps 7 and 8
    resumed = train(tmp_path, demo_assets, SETTINGS, kills=["recipe:step-8"], policy={"save_every_steps": 3})
    assert resumed.resumes == [["resume_from_step_state=True"]]
    assert resumed.attempt_steps[1][0] == 7
    steps = [step for step, _, _ in resumed.logged_steps]
    assert len(steps) - SETTINGS.epochs * SETTINGS.steps_per_epoch == 2  # at most the save interval more
    assert_same_training(resumed, uninterrupted(SETTINGS), SETTINGS.epochs)
    assert not (resumed.output_dir / STEP_STATE).exists()  # removed with the epoch that contains it


@pytest.mark.e2e
def test_stopped_by_sigterm_saves_a_step_state_and_resumes_at_that_step(tmp_path, demo_assets, uninterrupted):
    # stopped after the last step of epoch 0 (before its checkpoint), then mid-epoch 1
    resumed = train(tmp_path, demo_assets, SETTINGS, kills=[Stop("recipe:step-5"), Stop("recipe:step-7")])
    assert resumed.exit_codes == [128 + signal.SIGTERM, 128 + signal.SIGTERM, 0]
    assert resumed.resumes == [["resume_from_step_state=True"]] * 2
    # the resumed attempts' first steps follow the saved ones: nothing lost, nothing repeated
    assert [steps[0] for steps in resumed.attempt_steps] == [1, 6, 8]
    assert [step for step, _, _ in resumed.logged_steps] == list(range(1, 16))
    assert_same_training(resumed, uninterrupted(SETTINGS), SETTINGS.epochs)


@pytest.mark.e2e
def test_stopped_mid_accumulation_drops_the_partial_step(tmp_path, demo_assets, uninterrupted):
    # SIGINT after the first of the two batches of step 5 (epoch 1): the state is step 4's
    resumed = train(tmp_path, demo_assets, ACCUMULATING, kills=[Stop("recipe:batch-5.1", signal.SIGINT)])
    assert resumed.exit_codes == [128 + signal.SIGINT, 0]
    assert resumed.attempt_steps[0][-1] == 4 and resumed.attempt_steps[1][0] == 5
    assert_same_training(resumed, uninterrupted(ACCUMULATING), ACCUMULATING.epochs)


@pytest.mark.e2e
def test_validation_leaves_the_training_unchanged(tmp_path, demo_assets, uninterrupted):
    # validation loss every 2 steps and at each epoch's end (steps 5, 10, 15); dropout is on
    validated = train(tmp_path, demo_assets, SETTINGS, training={"validation": True, "validate_every_steps": 2})
    assert_same_training(validated, uninterrupted(SETTINGS), SETTINGS.epochs)
    assert uninterrupted(SETTINGS).val_losses() == {}
    val_losses = validated.val_losses()
    assert sorted(val_losses) == [2, 4, 5, 6, 8, 10, 12, 14, 15]
    assert all(math.isfinite(loss) and loss > 0 for loss in val_losses.values())
    epochs = validated.epoch_losses()
    assert sorted(epochs) == ["epoch_0", "epoch_1", "epoch_2"]
    train_losses = {step: float(loss) for step, (loss, _) in validated.losses().items()}
    for epoch in range(SETTINGS.epochs):
        entry = epochs[f"epoch_{epoch}"]
        last = (epoch + 1) * SETTINGS.steps_per_epoch
        assert entry["step"] == last
        assert entry["val_loss"] == val_losses[last]  # the epoch's record is its last step's validation
        steps = [train_losses[step] for step in range(last - SETTINGS.steps_per_epoch + 1, last + 1)]
        # the token-weighted mean of the epoch's steps lies within them
        assert min(steps) <= entry["train_loss"] <= max(steps)
        assert entry["train_tokens"] > 0
    # the manifest carries them, per epoch
    manifest = write_manifest(tmp_path / "run", validated.output_dir, SETTINGS.epochs)
    assert manifest["losses"] == {key: {"train_loss": e["train_loss"], "val_loss": e["val_loss"]} for key, e in epochs.items()}
    # without validation the manifest has the training losses only
    reference = write_manifest(tmp_path / "reference", uninterrupted(SETTINGS).output_dir, SETTINGS.epochs)
    assert all(e["val_loss"] is None and e["train_loss"] > 0 for e in reference["losses"].values())


@pytest.mark.e2e
def test_validating_resumed_training_equals_uninterrupted(tmp_path, demo_assets, uninterrupted):
    # stopped mid-epoch 1 with validation on: the step state carries the epoch's loss sums
    validation = {"validation": True, "validate_every_steps": 3}
    resumed = train(tmp_path, demo_assets, SETTINGS, kills=[Stop("recipe:step-7")], training=validation)
    assert_same_training(resumed, uninterrupted(SETTINGS), SETTINGS.epochs)
    assert {3, 5, 6, 9, 10, 12, 15} <= set(resumed.val_losses())
    reference = write_manifest(tmp_path / "reference", uninterrupted(SETTINGS).output_dir, SETTINGS.epochs)["losses"]
    epochs = resumed.epoch_losses()
    # the same training: the same token-weighted epoch losses, the interrupted epoch included
    assert [epochs[key]["train_loss"] for key in reference] == pytest.approx([e["train_loss"] for e in reference.values()], rel=1e-12)


def test_saving_a_checkpoint_leaves_the_live_model_unchanged():
    from torchtune.models.llama3 import lora_llama3
    from torchtune.modules.peft import get_merged_lora_ckpt

    torch.manual_seed(0)
    model = lora_llama3(
        lora_attn_modules=["q_proj", "v_proj"],
        apply_lora_to_mlp=True,
        lora_rank=4,
        lora_alpha=8,
        vocab_size=64,
        num_layers=1,
        num_heads=2,
        num_kv_heads=2,
        embed_dim=16,
        max_seq_len=32,
        intermediate_dim=32,
    )
    for name, parameter in model.named_parameters():
        if "lora_b" in name:  # a trained adapter: LoRA's B starts at zero
            torch.nn.init.normal_(parameter)
    tokens = torch.arange(8).unsqueeze(0)
    with torch.no_grad():
        before = model(tokens)
        merged = merged_checkpoint(model.state_dict(), rank=4, alpha=8)
        after = model(tokens)
    assert torch.equal(before, after)
    assert not any("lora" in key for key in merged)
    # the merge itself is torchtune's: base weight + (alpha / rank) * B @ A
    layer = model.layers[0].attn.q_proj
    assert torch.allclose(merged["layers.0.attn.q_proj.weight"], layer.weight + 2 * layer.lora_b.weight @ layer.lora_a.weight)
    # torchtune 0.6.1's own save path, {k: v.cpu()} merged in place, changes the model on the CPU
    with torch.no_grad():
        get_merged_lora_ckpt({k: v.cpu() for k, v in model.state_dict().items()}, rank=4, alpha=8)
        assert not torch.equal(before, model(tokens))
