"""Build the demo's tiny local model and its synthetic capitalization data.

The demo must run on a laptop-class CPU with no model hub, yet show a real
before/after signal when the workflow LoRA-tunes a model. A randomly initialised
model learns nothing under LoRA in seconds, so the "base" model is a tiny Llama
that was first *fully* fine-tuned to copy a word (``apple`` -> ``apple``) and stop.
It scores ~0 on case-sensitive capitalization (``apple`` -> ``Apple``), and a short
LoRA run on ``data/wordcase.json`` teaches it the rest (measured on 2 CPU cores:
rank 16, lr 1e-3, 2 epochs -> 1.00 held-out exact match in ~10 s; see
:func:`train_copy_base` for the one built-in piece of "knowledge" that makes
this learnable).

Layout written under an experiment directory::

    data/wordcase.json           {"train"|"validation"|"test": [{"input", "output"}]}
    models/tiny-llama-base/      HF LlamaForCausalLM + tokenizer (HF and torchtune)

The tokenizer is a byte-level BPE with no merges (one token per byte) whose
special tokens have small ids inside the model's vocabulary. It is saved twice:
``tokenizer.json`` (+ ``tokenizer_config.json`` with a ChatML template) for
transformers/inspect-ai, and ``vocab.json`` + ``merges.txt`` for torchtune's
``qwen2_tokenizer`` (pass ``special_tokens_path: tokenizer.json`` so it uses the
small special ids). Both sides produce the same ChatML token sequence: the chat
template always emits a system turn (empty when none is given), which is what
torchtune produces with ``new_system_prompt: ""``; the assistant turn ends with
``<|im_end|>``, torchtune's EOS and the ``eos_token_id`` of the generation config.

Run ``python -m snaketune.demo build --dest examples/demo [--force]``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import random
import shutil
import string
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Bump whenever anything below changes what gets built: stale assets are rebuilt.
DEMO_VERSION = "3"
# The copy pre-training runs on one thread: with more, CPU float reductions differ from build to
# build (measured: two 2-thread builds gave different weights, two 1-thread builds identical
# ones, in 38 s), and so would every score of the demo.
BUILD_THREADS = 1

DATA_RELPATH = Path("data") / "wordcase.json"
MODEL_RELPATH = Path("models") / "tiny-llama-base"
STAMP_NAME = "snaketune_demo.json"

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Small ids, inside the model's vocabulary (Qwen2's own ids are ~151k).
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)

# torchtune's Qwen2Tokenizer pre-tokenize regex, copied so both tokenizers split
# text identically (torchtune.models.qwen2._tokenizer.PRETOKENIZE_REGEX).
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|"
    r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# ChatML, always with a system turn so that a missing and an empty system prompt
# render identically, and identically to torchtune's ``new_system_prompt: ""``.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\n<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- endif -%}"
)

SEED = 1234
CONSONANTS = "bcdfghjklmnpqrstvwxz"
VOWELS = "aeiouy"


@dataclass(frozen=True)
class ModelSpec:
    """Dimensions of the tiny Llama; chosen so the whole build takes well under a minute."""

    hidden_size: int = 64
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    max_position_embeddings: int = 256
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0


@dataclass(frozen=True)
class CopyTraining:
    """Full fine-tuning of the random model on the copy task (makes the "base")."""

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1.5e-3  # 3e-3 and above sometimes stall on the copy plateau
    warmup_steps: int = 50
    min_len: int = 3
    max_len: int = 8


@dataclass(frozen=True)
class DataSpec:
    """Sizes of the capitalization splits (train is what a LoRA run sees per epoch)."""

    n_train: int = 400
    n_validation: int = 50
    n_test: int = 100
    min_len: int = 4
    max_len: int = 7


MODEL = ModelSpec()
COPY = CopyTraining()
DATA = DataSpec()


# --------------------------------------------------------------------------- data


def make_word(rng: random.Random, min_len: int, max_len: int) -> str:
    """A pronounceable lowercase pseudo-word (alternating consonants and vowels)."""
    length = rng.randint(min_len, max_len)
    start_with_vowel = rng.random() < 0.3
    letters = []
    for i in range(length):
        vowel = (i % 2 == 0) == start_with_vowel
        letters.append(rng.choice(VOWELS if vowel else CONSONANTS))
    return "".join(letters)


def capitalize(word: str) -> str:
    """The target of the demo task: first letter upper-cased, the rest unchanged."""
    return word[:1].upper() + word[1:]


def build_wordcase_data(spec: DataSpec = DATA, seed: int = SEED) -> dict[str, list[dict[str, str]]]:
    """Deterministic train/validation/test splits of distinct words (no word shared)."""
    rng = random.Random(seed)
    total = spec.n_train + spec.n_validation + spec.n_test
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < total:
        word = make_word(rng, spec.min_len, spec.max_len)
        if word not in seen:
            seen.add(word)
            words.append(word)
    bounds = {
        "train": (0, spec.n_train),
        "validation": (spec.n_train, spec.n_train + spec.n_validation),
        "test": (spec.n_train + spec.n_validation, total),
    }
    return {split: [{"input": w, "output": capitalize(w)} for w in words[lo:hi]] for split, (lo, hi) in bounds.items()}


# --------------------------------------------------------------------- tokenizer


def build_tokenizer() -> Any:
    """A byte-level BPE with no merges: one token per byte, special tokens at ids 0-2.

    One token per character makes copying and capitalizing a per-token mapping,
    which a tiny model learns in seconds. The pre-tokenizer is torchtune's Qwen2
    regex followed by byte-level mapping, exactly like Qwen2's own tokenizer.json.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = BpeTrainer(
        vocab_size=len(SPECIAL_TOKENS) + len(alphabet),  # = no merges
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(["system user assistant"], trainer=trainer)
    return tok


def save_tokenizer(tok: Any, dest: Path) -> Any:
    """Write the HF files and torchtune's vocab.json/merges.txt; return the HF tokenizer."""
    from transformers import PreTrainedTokenizerFast

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        bos_token=None,
        model_max_length=MODEL.max_position_embeddings,
        clean_up_tokenization_spaces=False,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    # The template goes into tokenizer_config.json (not chat_template.jinja) so that
    # older transformers releases on a cluster find it too.
    hf_tok.save_pretrained(dest, save_jinja_files=False)
    config_path = dest / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # portable across versions
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    tok.model.save(str(dest))  # vocab.json + merges.txt for torchtune
    return hf_tok


# ------------------------------------------------------------------------- model


def chat_prompt_ids(hf_tok: Any, word: str) -> list[int]:
    """Token ids of the prompt exactly as inspect-ai's hf provider builds it."""
    text = hf_tok.apply_chat_template([{"role": "user", "content": word}], add_generation_prompt=True, tokenize=False)
    return list(hf_tok(text, add_special_tokens=True)["input_ids"])


def copy_batches(hf_tok: Any, spec: CopyTraining, rng: random.Random) -> Iterator[tuple[Any, Any]]:
    """Endless batches of ChatML copy examples, scored like torchtune scores them.

    torchtune's instruct datasets (``train_on_input: False``) compute the loss on
    the whole assistant turn: the ``<|im_start|>assistant\\n`` header, the answer
    and the final ``<|im_end|>``. The base learns exactly those tokens, so a LoRA
    run starts with low loss everywhere except where the task differs (the first
    letter). The prompt is the chat template's rendering split around the word
    (rendering the template per example would cost more than the training step).
    """
    import torch

    im_end = hf_tok.convert_tokens_to_ids(IM_END)
    pad = hf_tok.convert_tokens_to_ids(ENDOFTEXT)
    probe = "qzx"
    probe_ids = chat_prompt_ids(hf_tok, probe)
    word_ids = hf_tok(probe, add_special_tokens=False)["input_ids"]
    cut = len(probe_ids) - len(word_ids) - 1
    while probe_ids[cut : cut + len(word_ids)] != word_ids:
        cut -= 1
    prefix, suffix = probe_ids[:cut], probe_ids[cut + len(word_ids) :]
    header = hf_tok(IM_START + "assistant\n", add_special_tokens=False)["input_ids"]
    if suffix[-len(header) :] != header:
        raise RuntimeError("chat template does not end with the assistant header")
    while True:
        rows: list[tuple[list[int], int]] = []  # (tokens, how many trailing are scored)
        for _ in range(spec.batch_size):
            word = make_word(rng, spec.min_len, spec.max_len)
            ids = list(hf_tok(word, add_special_tokens=False)["input_ids"])
            rows.append((prefix + ids + suffix + ids + [im_end], len(header) + len(ids) + 1))
        width = max(len(seq) for seq, _ in rows)
        ids_t = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, (seq, scored) in enumerate(rows):
            ids_t[i, : len(seq)] = torch.tensor(seq)
            labels[i, len(seq) - scored : len(seq)] = torch.tensor(seq[-scored:])
        yield ids_t, labels


def train_copy_base(model: Any, hf_tok: Any, spec: CopyTraining, seed: int = SEED) -> float:
    """Fully fine-tune ``model`` in place on the copy task; return the final loss.

    Real base models know that ``a`` and ``A`` are one letter in two cases; this
    tiny one gets that knowledge by construction. While it learns to copy, each
    upper-case letter's input embedding is tied to its lower-case twin and its
    output row is the twin's plus one shared, learned "upper case" direction.
    Capitalizing is then "copy, but add that direction at the first answer
    token": a LoRA run learns it from a few hundred words and it generalizes to
    every letter. (Without the tie, a LoRA run must memorise 26 unrelated letter
    pairs and reaches ~0 held-out accuracy in a CPU-sized run.) The ties are
    materialised into the plain weights at the end, so the saved model is an
    ordinary LlamaForCausalLM.
    """
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed + 1)
    lower = torch.tensor(hf_tok.convert_tokens_to_ids(list(string.ascii_lowercase)))
    upper = torch.tensor(hf_tok.convert_tokens_to_ids(list(string.ascii_uppercase)))
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    case_offset = torch.zeros(head.shape[1], requires_grad=True)

    def tied_weights() -> tuple[Any, Any]:
        emb = embed.index_copy(0, upper, embed[lower])
        out = head.index_copy(0, upper, head[lower] + case_offset)
        return emb, out

    params = [*model.parameters(), case_offset]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < spec.warmup_steps:
            return (step + 1) / spec.warmup_steps
        progress = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    loss_value = float("nan")
    batches = copy_batches(hf_tok, spec, rng)
    for step in range(spec.steps):
        ids, labels = next(batches)
        emb, out = tied_weights()
        hidden = model.model(inputs_embeds=emb[ids]).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        scored = targets != -100
        loss = torch.nn.functional.cross_entropy(hidden[scored] @ out.T, targets[scored])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        loss_value = loss.item()
        if step % 100 == 0:
            log.debug("copy training step %d loss %.4f", step, loss_value)
    with torch.no_grad():
        emb, out = tied_weights()
        embed.copy_(emb)
        head.copy_(out)
    model.eval()
    return loss_value


def new_random_model(vocab_size: int, hf_tok: Any, spec: ModelSpec = MODEL, seed: int = SEED) -> Any:
    """A randomly initialised LlamaForCausalLM whose dims torchtune's lora_llama3 can mirror."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rms_norm_eps=spec.rms_norm_eps,
        rope_theta=spec.rope_theta,
        tie_word_embeddings=False,  # torchtune's llama3 (not 3.2) keeps a separate output
        bos_token_id=None,
        eos_token_id=hf_tok.convert_tokens_to_ids(IM_END),
        pad_token_id=hf_tok.convert_tokens_to_ids(ENDOFTEXT),
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def greedy_answers(model: Any, hf_tok: Any, words: Sequence[str], max_new_tokens: int = 12) -> list[str]:
    """Decode answers the way inspect-ai's hf provider does (left padding, greedy)."""
    import torch

    texts = [hf_tok.apply_chat_template([{"role": "user", "content": w}], add_generation_prompt=True, tokenize=False) for w in words]
    side, hf_tok.padding_side = hf_tok.padding_side, "left"
    try:
        batch = hf_tok(texts, return_tensors="pt", padding=True)
    finally:
        hf_tok.padding_side = side
    with torch.no_grad():
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=hf_tok.convert_tokens_to_ids(IM_END),
            pad_token_id=hf_tok.convert_tokens_to_ids(ENDOFTEXT),
        )
    return hf_tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


# ------------------------------------------------------------------- the build


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _recipe() -> dict[str, Any]:
    """Everything that determines the build; a stamp with another recipe is stale."""
    return {
        "version": DEMO_VERSION,
        "seed": SEED,
        "model": asdict(MODEL),
        "copy_training": asdict(COPY),
        "data": asdict(DATA),
        "threads": BUILD_THREADS,
    }


def _is_current(exp_dir: Path) -> bool:
    """True when a finished build of this recipe is in place (cheap: no torch import)."""
    model_dir = exp_dir / MODEL_RELPATH
    data_path = exp_dir / DATA_RELPATH
    try:
        stamp = json.loads((model_dir / STAMP_NAME).read_text())
        return (
            stamp.get("recipe") == _recipe()
            and stamp.get("data_sha256") == _sha256(data_path)
            and all((model_dir / name).is_file() for name in stamp.get("files", []))
        )
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _build_lock(exp_dir: Path) -> Iterator[None]:
    """Serialise concurrent builds (e.g. parallel test workers) of one experiment dir."""
    lock_path = exp_dir / "models" / ".tiny-llama-base.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_permissions(path: Path) -> None:
    """Give ``path`` (and a directory's files) the modes a plain mkdir/open would.

    mkstemp/mkdtemp (and safetensors) create owner-only files; on a shared
    cluster the demo model must stay readable by the group like anything else.
    """
    mask = _umask()
    if path.is_dir():
        path.chmod(0o777 & ~mask)
        for child in path.iterdir():
            child.chmod(0o666 & ~mask)
    else:
        path.chmod(0o666 & ~mask)


def _write_json_atomic(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=1)
            handle.write("\n")
        _publish_permissions(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _build_model_dir(dest: Path, data: dict[str, list[dict[str, str]]]) -> dict[str, Any]:
    """Tokenizer, random Llama, copy-task full fine-tune, save; return sanity metrics."""
    from transformers import GenerationConfig

    tok = build_tokenizer()
    hf_tok = save_tokenizer(tok, dest)
    vocab_size = 8 * math.ceil(len(hf_tok) / 8)
    model = new_random_model(vocab_size, hf_tok)
    final_loss = train_copy_base(model, hf_tok, COPY)

    test_words = [row["input"] for row in data["test"]]
    answers = greedy_answers(model, hf_tok, test_words)
    copy_acc = sum(a == w for a, w in zip(answers, test_words, strict=True)) / len(test_words)
    cap_acc = sum(a == capitalize(w) for a, w in zip(answers, test_words, strict=True)) / len(test_words)
    if copy_acc < 0.9:
        raise RuntimeError(
            f"demo base model copies only {copy_acc:.0%} of held-out words (final loss {final_loss:.4f}); the demo would show no signal"
        )

    model.generation_config = GenerationConfig(
        eos_token_id=hf_tok.convert_tokens_to_ids(IM_END),  # what the model learned to emit
        pad_token_id=hf_tok.convert_tokens_to_ids(ENDOFTEXT),
    )
    model.save_pretrained(dest, safe_serialization=True)
    # transformers 5 writes rope_theta only under "rope_parameters"; keep the
    # classic top-level key too, for readers of config.json (torchtune's rope_base).
    config_path = dest / "config.json"
    config = json.loads(config_path.read_text())
    config.setdefault("rope_theta", MODEL.rope_theta)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return {
        "final_copy_loss": round(final_loss, 6),
        "base_copy_accuracy": copy_acc,
        "base_capitalize_accuracy": cap_acc,
    }


def build_demo_assets(exp_dir: Path, force: bool = False) -> None:
    """Create ``data/wordcase.json`` and ``models/tiny-llama-base/`` under ``exp_dir``.

    Idempotent: returns at once when a stamp in the model directory records this
    recipe and the data file it was built with. Otherwise rebuilds both (~45-55 s
    on 2 CPU cores). The model is assembled in a temporary sibling directory and renamed
    into place with its stamp already inside, so an interrupted build leaves either
    the previous complete build or nothing, never a half-written model.
    """
    exp_dir = Path(exp_dir)
    if not force and _is_current(exp_dir):
        return
    with _build_lock(exp_dir):
        if not force and _is_current(exp_dir):  # another process just built it
            return
        started = time.monotonic()
        data = build_wordcase_data()
        data_path = exp_dir / DATA_RELPATH
        _write_json_atomic(data_path, data)

        model_dir = exp_dir / MODEL_RELPATH
        for stale in model_dir.parent.glob(f".{model_dir.name}.tmp-*"):  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
        tmp_dir = Path(tempfile.mkdtemp(dir=model_dir.parent, prefix=f".{model_dir.name}.tmp-"))
        try:
            with _torch_threads(BUILD_THREADS):
                metrics = _build_model_dir(tmp_dir, data)
            files = sorted(p.name for p in tmp_dir.iterdir())
            stamp = {
                "recipe": _recipe(),
                "data_sha256": _sha256(data_path),
                "files": files,
                "build_seconds": round(time.monotonic() - started, 1),
                **metrics,
            }
            (tmp_dir / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
            _publish_permissions(tmp_dir)
            if model_dir.exists():
                shutil.rmtree(model_dir)
            tmp_dir.rename(model_dir)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise


# ------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m snaketune.demo build --dest DIR [--force]``."""
    parser = argparse.ArgumentParser(prog="python -m snaketune.demo", description="Build the demo's tiny model and data.")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or verify) the demo model and data")
    build.add_argument("--dest", type=Path, required=True, help="experiment directory")
    build.add_argument("--force", action="store_true", help="rebuild even if up to date")
    build.add_argument("-v", "--verbose", action="store_true", help="log copy-training progress")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    build_demo_assets(args.dest, force=args.force)
    stamp = json.loads((args.dest / MODEL_RELPATH / STAMP_NAME).read_text())
    print(
        f"demo assets ready in {time.monotonic() - started:.1f}s: "
        f"{args.dest / DATA_RELPATH}, {args.dest / MODEL_RELPATH} "
        f"(base copies {stamp['base_copy_accuracy']:.0%}, "
        f"capitalizes {stamp['base_capitalize_accuracy']:.0%} of test words)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
