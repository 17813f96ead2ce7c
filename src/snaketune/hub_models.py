"""Synthetic models in Hugging Face hub layout, for tests and benchmarks without a model hub.

A model directory as the hub ships it: the published ``config.json`` (the real dimensions), a
``generation_config.json``, random weights in ``model.safetensors`` and the tokenizer files the
family's ``models:`` entry names. Llama 3 gets the real tokenizer: the tiktoken file inside the
``llama-models`` PyPI package as ``original/tokenizer.model`` (what torchtune reads), and the HF
``tokenizer.json`` converted from it with transformers' ``TikTokenConverter`` (same ids), with the
family's chat template in ``tokenizer_config.json``. Qwen2.5 gets a synthetic byte-level BPE of the
real format and size (``vocab.json``/``merges.txt`` + ``tokenizer.json``: real special-token ids, not
the real merges). Only the weights are random: a model built here trains and evaluates like the real
one, and learns nothing.

``build_hub_model(published_dir, dest)`` is idempotent (a stamp records what was built).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import tempfile
import time
from pathlib import Path

from snaketune.demo import _publish_permissions

STAMP = "snaketune_hub_model.json"
BUILD_VERSION = "1"

# The published Llama 3.1/3.2 tokenizer.json special tokens: 128000-128255.
LLAMA3_NAMED = {
    128000: "<|begin_of_text|>",
    128001: "<|end_of_text|>",
    128002: "<|reserved_special_token_0|>",
    128003: "<|reserved_special_token_1|>",
    128004: "<|finetune_right_pad_id|>",
    128005: "<|reserved_special_token_2|>",
    128006: "<|start_header_id|>",
    128007: "<|end_header_id|>",
    128008: "<|eom_id|>",
    128009: "<|eot_id|>",
    128010: "<|python_tag|>",
}
LLAMA3_SPECIAL = [LLAMA3_NAMED.get(i, f"<|reserved_special_token_{i - 128008}|>") for i in range(128000, 128256)]
# Qwen2.5's added tokens in id order, from 151643 (torchtune.models.qwen2_5._tokenizer has the same ids).
QWEN2_5_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]
QWEN2_5_REGULAR_TOKENS = 151643


def llama3_tiktoken_file() -> Path:
    """The Llama 3 tiktoken file shipped by the pinned ``llama-models`` package (not imported: only its file)."""
    spec = importlib.util.find_spec("llama_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llama-models package (requirements.lock.txt) is not installed: it ships the Llama 3 tokenizer")
    path = Path(next(iter(spec.submodule_search_locations))) / "llama3" / "tokenizer.model"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llama-models package")
    return path


def _save_hf_tokenizer(tokenizer, dest: Path, chat_template: str, **special) -> None:
    """tokenizer.json + tokenizer_config.json (chat template inside, readable by older transformers)."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tokenizer, clean_up_tokenization_spaces=False, **special)
    hf.chat_template = chat_template
    hf.save_pretrained(dest, save_jinja_files=False)
    config_path = dest / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def write_llama3_tokenizer(dest: Path, chat_template: str, eos_token: str = "<|eot_id|>") -> None:
    """The real Llama 3 tokenizer: ``original/tokenizer.model`` and the HF files converted from it."""
    from tokenizers import processors
    from torchtune.models.llama3._tokenizer import CL100K_PATTERN
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tiktoken = llama3_tiktoken_file()
    (dest / "original").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tiktoken, dest / "original" / "tokenizer.model")
    tokenizer = TikTokenConverter(vocab_file=str(tiktoken), pattern=CL100K_PATTERN, extra_special_tokens=LLAMA3_SPECIAL).converted()
    bos = "<|begin_of_text|>"
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, 128000)]),
        ]
    )
    _save_hf_tokenizer(tokenizer, dest, chat_template, bos_token=bos, eos_token=eos_token, model_max_length=131072)


def write_qwen2_5_tokenizer(dest: Path, chat_template: str, regular_tokens: int = QWEN2_5_REGULAR_TOKENS) -> None:
    """A byte-level BPE in Qwen2.5's format and size: 256 byte tokens, then synthetic merges up to
    ``regular_tokens`` (not Qwen's merges: ids of text differ from the real tokenizer's), then
    Qwen2.5's special tokens at their real ids (151643...). Written as vocab.json + merges.txt
    (torchtune's qwen2_5_tokenizer) and tokenizer.json (transformers)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from torchtune.models.qwen2._tokenizer import PRETOKENIZE_REGEX
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {symbol: index for index, symbol in enumerate(symbols)}
    merges = []
    # Deterministic merges: pairs of byte symbols, then pairs of the merged tokens, in order.
    frontier = list(symbols)
    while len(vocab) < regular_tokens:
        grown = []
        for left in frontier:
            for right in symbols:
                token = left + right
                if token in vocab:
                    continue
                vocab[token] = len(vocab)
                merges.append((left, right))
                grown.append(token)
                if len(vocab) >= regular_tokens:
                    break
            if len(vocab) >= regular_tokens:
                break
        frontier = grown
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (dest / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in merges))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    from tokenizers import AddedToken

    tokenizer.add_special_tokens([AddedToken(token, normalized=False, special=True) for token in QWEN2_5_SPECIAL])
    _save_hf_tokenizer(tokenizer, dest, chat_template, eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=131072)


def write_random_weights(published: dict, dest: Path, dtype: str = "bfloat16", seed: int = 0) -> None:
    """config.json as published, random weights as one ``model.safetensors``, generation_config.json."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.for_model(**copy.deepcopy(published))  # transformers edits rope_scaling in place
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    eos = published.get("eos_token_id")
    model.generation_config = GenerationConfig(bos_token_id=published.get("bos_token_id"), eos_token_id=eos, do_sample=False)
    model.save_pretrained(dest, safe_serialization=True, max_shard_size="100GB")
    # the published config.json itself (transformers would rewrite keys, e.g. rope_theta)
    (dest / "config.json").write_text(json.dumps(published, indent=2) + "\n")


def build_hub_model(published_dir: Path, dest: Path, chat_template: str, tokenizer: str, seed: int = 0) -> Path:
    """A random-weight model in hub layout from a published ``config.json`` (in ``published_dir``).

    ``tokenizer``: ``llama3`` (real) or ``qwen2_5`` (synthetic, real format and size). Returns ``dest``;
    returns at once when a stamp records the same build.
    """
    published_dir, dest = Path(published_dir), Path(dest)
    published = json.loads((published_dir / "config.json").read_text())
    recipe = {"version": BUILD_VERSION, "config": published, "tokenizer": tokenizer, "chat_template": chat_template, "seed": seed}
    try:
        if json.loads((dest / STAMP).read_text())["recipe"] == recipe:
            return dest
    except (OSError, ValueError, KeyError):
        pass
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    started = time.monotonic()
    try:
        write_random_weights(published, scratch, seed=seed)
        if tokenizer == "llama3":
            write_llama3_tokenizer(scratch, chat_template)
        elif tokenizer == "qwen2_5":
            write_qwen2_5_tokenizer(scratch, chat_template)
        else:
            raise ValueError(f"no synthetic tokenizer {tokenizer!r} (llama3, qwen2_5)")
        (scratch / STAMP).write_text(json.dumps({"recipe": recipe, "build_seconds": round(time.monotonic() - started, 1)}) + "\n")
        for folder in (scratch, scratch / "original"):
            if folder.is_dir():
                _publish_permissions(folder)  # mkdtemp and safetensors make owner-only files
        if dest.exists():
            shutil.rmtree(dest)
        scratch.rename(dest)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return dest
