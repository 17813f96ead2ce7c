"""A resumed training equals the uninterrupted one, bit for bit (CPU, same threads and batch).

Real torchtune trainings of the tiny demo model, killed at named points (snaketune.faults) and
resumed by torchtune's own resume path through snaketune's recipe; LoRA dropout is on, so the
saved RNG states are part of what is proven.
"""

from __future__ import annotations

import pytest
import torch
from exactness import Settings, assert_same_training, recipe_state, train

from snaketune.resumable_recipe import RNG_KEY, merged_checkpoint

SETTINGS = Settings()


@pytest.mark.e2e
def test_resumed_twice_equals_uninterrupted(tmp_path, demo_assets, uninterrupted):
    resumed = train(tmp_path, demo_assets, SETTINGS, kills=["recipe:after-epoch-0", "recipe:after-epoch-1"])
    assert resumed.exit_codes == [-9, -9, 0]
    assert RNG_KEY in recipe_state(resumed.output_dir)
    assert_same_training(resumed, uninterrupted(SETTINGS), SETTINGS.epochs)


@pytest.mark.e2e
def test_killed_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path, demo_assets, uninterrupted):
    # step 7 is the second step of epoch 1: the resume redoes epoch 1 from epoch_0's state
    resumed = train(tmp_path, demo_assets, SETTINGS, kills=["recipe:step-7"])
    assert [step for step, _, _ in resumed.logged_steps].count(7) == 2  # logged by both attempts
    assert_same_training(resumed, uninterrupted(SETTINGS), SETTINGS.epochs)


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
