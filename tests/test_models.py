"""Every shipped `models:` entry against its real model: architecture, weights, shards, tokenizer.

For each published model in tests/data/models/ (its config.json and hub file list, see the README
there): plan a run for it from a summary, render its finetune.yaml, build the rendered LoRA
component and the Hugging Face architecture on the meta device, convert the HF state dict with
torchtune's own checkpointer code for the entry's model_type and compare every parameter name and
shape, the RoPE/norm settings and the parameter count; check the weight files against the hub's
sharding; instantiate the rendered tokenizer from files of the real format at the names the entry
gives and tokenize one sample through the rendered dataset component. No weights, no GPU: seconds.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from snaketune import render
from snaketune.parse import SummaryError, read_summary
from snaketune.plan import model_spec, plan_experiment

PUBLISHED = Path(__file__).parent / "data" / "models"
NAMES = sorted(p.name for p in PUBLISHED.iterdir() if (p / "config.json").is_file())
HERE = (Path("experiment_summary.md"), 1)

SUMMARY = """# Experiment: conformance

## All Runs
| Run Name | Model | LoRA Rank | Type |
|----------|-------|-----------|------|
| run | {model} | 8 | Fine-tuned |

## Resources

### Models
- **{model}**: `{path}`

### Dataset
- **Path:** `{dataset}`

## Configuration
- **Epochs:** 1
- **GPUs:** 1
- **System prompt:** ""
"""


def hub_files(name: str) -> list[str]:
    return (PUBLISHED / name / "hub_files.txt").read_text().split()


def weight_shards(name: str) -> list[str]:
    return sorted(f for f in hub_files(name) if f.startswith("model") and f.endswith(".safetensors"))


def published_config(name: str) -> dict:
    return json.loads((PUBLISHED / name / "config.json").read_text())


def hf_meta_state(name: str) -> tuple[dict, int]:
    """The HF architecture's state dict as the hub file holds it (tied lm_head not stored), on the
    meta device, and its parameter count."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**published_config(name))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    state = dict(model.state_dict())
    if getattr(config, "tie_word_embeddings", False) or published_config(name).get("model_type") == "gemma2":
        state.pop("lm_head.weight", None)
    return state, sum(p.numel() for p in model.parameters())


def plan_for(name: str, config: dict, tmp_path: Path, hub: Path) -> dict:
    dataset = tmp_path / "data.json"
    dataset.write_text(json.dumps({split: [{"input": "apple pie", "output": "Apple pie"}] for split in ("train", "validation", "test")}))
    summary = tmp_path / "experiment_summary.md"
    summary.write_text(SUMMARY.format(model=name, path=hub, dataset=dataset))
    plan = plan_experiment(read_summary(summary), config, {})
    return plan.runs[0].setup


def write_hub_layout(name: str, hub: Path, state: dict) -> None:
    """config.json, empty stand-ins for the other hub files, and an index naming the real shards."""
    for file in hub_files(name):
        (hub / file).parent.mkdir(parents=True, exist_ok=True)
        (hub / file).touch()
    (hub / "config.json").write_text((PUBLISHED / name / "config.json").read_text())
    shards = weight_shards(name)
    if "model.safetensors.index.json" in hub_files(name):
        weight_map = {key: shards[i * len(shards) // len(state)] for i, key in enumerate(state)}
        (hub / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def converted_by_checkpointer(finetune: dict, hub: Path, state: dict, tmp_path: Path, monkeypatch) -> dict:
    """torchtune's FullModelHFCheckpointer.load_checkpoint on the hub layout; reading a shard returns
    the meta tensors the shard would hold (the weights cannot exist here)."""
    from torchtune.training import FullModelHFCheckpointer
    from torchtune.training.checkpointing import _checkpointer

    checkpointer = FullModelHFCheckpointer(
        checkpoint_dir=str(hub),
        checkpoint_files=finetune["checkpointer"]["checkpoint_files"],
        model_type=finetune["checkpointer"]["model_type"],
        output_dir=str(tmp_path / "out"),
    )
    index = hub / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"] if index.is_file() else {key: "model.safetensors" for key in state}
    monkeypatch.setattr(
        _checkpointer, "safe_torch_load", lambda path, **_: {k: v for k, v in state.items() if weight_map[k] == Path(path).name}
    )
    # load_checkpoint runs gc.collect() after each shard: ~0.3 s each in a test process, 30 shards for a 70B
    monkeypatch.setattr(_checkpointer.gc, "collect", lambda *_: 0)
    return checkpointer.load_checkpoint()["model"]


def rope_and_norm(model) -> dict:
    """The positional and normalisation settings a torchtune decoder was built with."""
    rope = model.layers[0].attn.pos_embeddings
    norm = getattr(model.norm, "rms_norm", model.norm)  # Gemma 2 soft-caps after its final norm
    found = {"rope_base": float(rope.base), "norm_eps": float(norm.eps)}
    if hasattr(rope, "scale_factor"):
        found["rope_scale_factor"] = float(rope.scale_factor)
    return found


def expected_rope_and_norm(published: dict) -> dict:
    expected = {"rope_base": float(published["rope_theta"]), "norm_eps": float(published["rms_norm_eps"])}
    if (published.get("rope_scaling") or {}).get("rope_type") == "llama3":
        expected["rope_scale_factor"] = float(published["rope_scaling"]["factor"])
    return expected


@pytest.mark.parametrize("name", NAMES)
def test_entry_builds_the_published_architecture(name, config, tmp_path, monkeypatch):
    from omegaconf import OmegaConf
    from torchtune import config as tune_config

    entry = model_spec(name, config["models"], HERE)
    state, parameters = hf_meta_state(name)
    hub = tmp_path / name
    write_hub_layout(name, hub, state)
    finetune = render.finetune_config(plan_for(name, config, tmp_path, hub))

    # weight files: the config's list (planning without the model) and the files on disk agree with the hub
    assert entry["checkpoint_files"] == weight_shards(name)
    assert finetune["checkpointer"]["checkpoint_files"] == weight_shards(name)

    with torch.device("meta"):
        model = tune_config.instantiate(OmegaConf.create(finetune["model"]))
    base = {key: tuple(value.shape) for key, value in model.state_dict().items() if "lora_" not in key}
    converted = converted_by_checkpointer(finetune, hub, state, tmp_path, monkeypatch)
    assert {key: tuple(value.shape) for key, value in converted.items()} == base
    assert any("lora_a" in key for key in model.state_dict()), "no LoRA adapters in the rendered model"

    assert rope_and_norm(model) == pytest.approx(expected_rope_and_norm(published_config(name)))
    # the config's parameter count (used by the will-it-fit warning) is the architecture's
    assert entry["params_billions"] == pytest.approx(parameters / 1e9, rel=0.03)


def test_checkpoint_files_ignore_other_safetensors_of_the_hub_repo(config, tmp_path):
    """Mistral v0.3 repos also hold consolidated.safetensors (the same weights, Mistral's names)."""
    name = "Mistral-7B-Instruct-v0.3"
    assert "consolidated.safetensors" in hub_files(name)
    state, _ = hf_meta_state(name)
    hub = tmp_path / name
    write_hub_layout(name, hub, state)
    files = render.finetune_config(plan_for(name, config, tmp_path, hub))["checkpointer"]["checkpoint_files"]
    assert files == weight_shards(name) and "consolidated.safetensors" not in files


def test_every_trainable_entry_is_checked_against_a_published_model(config):
    tested = {model_spec(name, config["models"], HERE)["match"] for name in NAMES}
    trainable = {entry["match"] for entry in config["models"] if not entry.get("unsupported") and entry["match"] != "^tiny-llama"}
    # Qwen2.5-Math-1.5B/72B share Math-7B's builder (from_config); 3B's is checked through 3B-Instruct
    assert trainable - tested <= {"^Qwen2\\.5-Math-1\\.5B", "^Qwen2\\.5-Math-72B"}


def test_base_and_instruct_get_their_own_builders(config):
    assert model_spec("Qwen2.5-7B-Instruct", config["models"], HERE)["builder"].endswith("_7b_instruct")
    assert model_spec("Qwen/Qwen2.5-7B", config["models"], HERE)["builder"].endswith("_7b_base")
    assert model_spec("Qwen2.5-Coder-32B-Instruct", config["models"], HERE)["builder"].endswith("_32b_instruct")
    assert (
        model_spec("gemma-2-9b-it", config["models"], HERE)["checkpoint_files"]
        != model_spec("gemma-2-9b", config["models"], HERE)["checkpoint_files"]
    )


@pytest.mark.parametrize(
    ("name", "words"),
    [("Qwen3-8B", "Qwen3 is not in torchtune 0.6.1"), ("Llama-4-Scout-17B-16E-Instruct", "Llama 4"), ("Phi-3.5-mini-instruct", "LongRoPE")],
)
def test_unsupported_families_are_refused_with_the_reason(config, name, words):
    with pytest.raises(SummaryError, match=words) as refused:
        model_spec(name, config["models"], HERE)
    assert "line 1" in str(refused.value)


def test_an_unknown_model_says_what_to_add(config):
    with pytest.raises(SummaryError, match=r"add one to config/config.yaml 'models:' \(match, builder, model_type, tokenizer"):
        model_spec("Falcon-7B", config["models"], HERE)


# ------------------------------------------------------------------------------------ tokenizers


def write_tokenizer_files(component: str, hub: Path, tmp_path: Path) -> None:
    """Tokenizer files of the format the component reads (the real Llama 3 file; synthetic others)."""
    from snaketune import hub_models
    from snaketune.demo import build_tokenizer

    name = component.rsplit(".", 1)[-1]
    if name == "llama3_tokenizer":
        (hub / "original").mkdir()
        shutil.copyfile(hub_models.llama3_tiktoken_file(), hub / "original" / "tokenizer.model")
    elif name in ("qwen2_5_tokenizer", "phi4_tokenizer"):
        build_tokenizer().model.save(str(hub))  # vocab.json + merges.txt, byte-level BPE
    else:  # SentencePiece: Gemma, Mistral, Phi-3
        import sentencepiece

        corpus = [f"{word} apple pie Apple pie system user assistant model" for word in ("the", "a", "one", "two")] * 50
        with open(hub / "tokenizer.model", "wb") as model:
            sentencepiece.SentencePieceTrainer.train(
                sentence_iterator=iter(corpus),
                model_writer=model,
                vocab_size=320,  # above the 256 byte pieces
                hard_vocab_limit=False,
                byte_fallback=True,
                # keep newlines and spaces as Gemma's and Mistral's own models do
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                minloglevel=2,
                user_defined_symbols=["<start_of_turn>", "<end_of_turn>", "[INST]", "[/INST]"],
            )


def text(decoded) -> str:
    """torchtune 0.6.1's Phi-4 tokenizer decodes to a list of byte-level pieces (Ġ for a space)."""
    return "".join(decoded).replace("Ġ", " ") if isinstance(decoded, list) else decoded


@pytest.mark.parametrize("name", NAMES)
def test_rendered_tokenizer_and_dataset_tokenize_a_sample(name, config, tmp_path):
    from omegaconf import OmegaConf
    from torchtune import config as tune_config

    hub = tmp_path / name
    hub.mkdir()
    (hub / "config.json").write_text((PUBLISHED / name / "config.json").read_text())
    entry = model_spec(name, config["models"], HERE)
    for key in render.TOKENIZER_FILE_KEYS:
        if key in entry["tokenizer"]:
            assert entry["tokenizer"][key] in hub_files(name), f"{key}: {entry['tokenizer'][key]} is not a file of the hub repo"
    write_tokenizer_files(entry["tokenizer"]["_component_"], hub, tmp_path)
    finetune = render.finetune_config(plan_for(name, config, tmp_path, hub))
    assert finetune["tokenizer"]["max_seq_len"] is None  # torchtune 0.6.1 masks the final EOS otherwise
    tokenizer = tune_config.instantiate(OmegaConf.create(finetune["tokenizer"]))
    dataset = tune_config.instantiate(OmegaConf.create(finetune["dataset"]), tokenizer)
    sample = dataset[0]
    scored = [token for token, label in zip(sample["tokens"], sample["labels"], strict=True) if label != -100]
    assert "Apple pie" in text(tokenizer.decode(scored))
    assert "apple pie" in text(tokenizer.decode([t for t, label in zip(sample["tokens"], sample["labels"], strict=True) if label == -100]))
    assert len(scored) < len(sample["tokens"])
    if entry["tokenizer"].get("prompt_template"):  # Gemma: the chat format the entry gives torchtune's tokenizer
        turns = r"<start_of_turn>user\n\s*apple pie\s*<end_of_turn>\n<start_of_turn>model\n\s*Apple pie\s*<end_of_turn>"
        assert re.match(turns, text(tokenizer.decode(sample["tokens"])))


def test_families_without_a_system_turn_refuse_a_system_prompt(config, tmp_path):
    hub = tmp_path / "gemma-2-2b-it"
    setup = plan_for("gemma-2-2b-it", config, tmp_path, hub)
    assert render.finetune_config(setup)["dataset"]["new_system_prompt"] is None
    summary = tmp_path / "experiment_summary.md"
    summary.write_text(summary.read_text().replace('- **System prompt:** ""', '- **System prompt:** "Be brief."'))
    with pytest.raises(SummaryError, match=r"line \d+: model 'gemma-2-2b-it' has no system turn"):
        plan_experiment(read_summary(summary), config, {})


# ------------------------------------------------------------------------------ will it fit?


@pytest.mark.parametrize(
    ("model", "gpus", "gpu_mem_gb", "warned", "suggested"),
    [
        ("Llama-3.1-70B-Instruct", 1, 80, True, 3),
        ("Llama-3.1-70B-Instruct", 4, 80, False, None),
        ("Qwen2.5-72B-Instruct", 2, 40, True, 5),
        ("Llama-3.1-8B-Instruct", 1, 24, False, None),
        ("Llama-3.1-8B-Instruct", 1, 12, True, 2),
        ("Llama-3.1-70B-Instruct", 1, "", False, None),
    ],
)
def test_planning_warns_when_a_run_cannot_fit_its_gpus(config, tmp_path, model, gpus, gpu_mem_gb, warned, suggested):
    config = json.loads(json.dumps(config))
    config["resources"]["finetune"]["gpu_mem_gb"] = gpu_mem_gb
    summary = tmp_path / "experiment_summary.md"
    summary.write_text(
        SUMMARY.format(model=model, path=tmp_path / model, dataset=tmp_path / "d.json").replace("**GPUs:** 1", f"**GPUs:** {gpus}")
    )
    warnings = [w for w in plan_experiment(read_summary(summary), config, {}).warnings if "cannot hold" in w]
    assert bool(warnings) == warned
    if warned:
        assert f"line 6: run 'run': model {model}" in warnings[0]
        assert f"{gpus} GPU(s) of {float(gpu_mem_gb):g} GB" in warnings[0]
        assert f"use GPUs: {suggested} or more (lora_finetune_distributed" in warnings[0]
        assert suggested == math.ceil(2 * model_spec(model, config["models"], HERE)["params_billions"] * 1.25 / gpu_mem_gb)


def test_cpu_runs_are_checked_against_the_jobs_memory(config, tmp_path):
    summary = tmp_path / "experiment_summary.md"
    model = "Llama-3.1-8B-Instruct"
    summary.write_text(
        SUMMARY.format(model=model, path=tmp_path / model, dataset=tmp_path / "d.json").replace("**GPUs:** 1", "**GPUs:** 0")
    )
    warnings = plan_experiment(read_summary(summary), config, {}).warnings  # mem_mb 32000 < 32 GB of fp32 weights
    assert any("32 GB of fp32 weights: a CPU training with mem_mb 32000 cannot hold them" in w for w in warnings)
