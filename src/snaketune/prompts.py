"""Train/eval prompt parity: evaluation must show a model the prompt it was trained on.

torchtune builds training prompts with its own tokenizer and prompt format; inspect-ai's hf provider
renders the checkpoint's Hugging Face chat template and tokenizes the result. Three ways they drift
apart, all silent (measured on the demo: 0.99 -> 0.00 accuracy from a template preamble alone):

- the official Llama 3.x Instruct template writes a "Cutting Knowledge Date ... Today Date ..."
  preamble into the system turn; torchtune's Llama 3 tokenizer does not (fixed: evaluation uses
  :data:`LLAMA3_CHAT_TEMPLATE`, the official template without it, via inspect's ``chat_template``);
- a task that sends no system message gets the template's default system turn (Qwen2.5: "You are
  Qwen, ..."), training always has one (fixed for the built-in task: :func:`task_messages`);
- inspect tokenizes the rendered template with special tokens on: a second BOS for templates that
  write their own (fixed: ``add_special_tokens: False``, as ``apply_chat_template(tokenize=True)``).

:func:`check` renders one test sample of any task both ways and reports the first difference; the
per-run scaffold job runs it (:func:`check_run`) and caches its finding in
``<experiment>/.snaketune/parity/<key>.json`` (and ``~/.cache/snaketune/parity/``, shared by the
experiments of this machine), keyed by what decides both renderings (the model's tokenizer files,
task script digest, system prompt, tokenizer settings); the driver prints cached mismatches
(:func:`cached_warnings`) and ``snaketune parity <experiment>`` prints them all.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

# The official Llama 3.2 Instruct chat template (tests/data/chat_templates) without the date
# preamble and the tool branches: exactly what torchtune's llama3_tokenizer produces for a
# system + user conversation (system turn always present, contents trimmed).
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content']|trim %}"
    "{%- set messages = messages[1:] %}"
    "{%- else %}"
    "{%- set system_message = '' %}"
    "{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + system_message + '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content']|trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)
CHAT_TEMPLATES = {"llama3": LLAMA3_CHAT_TEMPLATE}
# Files of a model directory that decide how either side tokenizes (part of the cache key).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "original/tokenizer.model",
)
PARITY_DIR = Path(".snaketune") / "parity"


def hf_model_args(setup: dict) -> dict:
    """inspect hf provider model arguments that make evaluation prompts match training prompts."""
    args: dict = {"tokenizer_call_args": {"add_special_tokens": False}}
    template = setup["evaluation"].get("chat_template")
    if template:
        args["chat_template"] = CHAT_TEMPLATES[template]
    return args


def system_turn(setup: dict) -> bool:
    """Whether the model family's chat format has a system turn (training always sends one then)."""
    return setup["torchtune"].get("system_turn", True) is not False


def task_messages(setup: dict, user_text: str) -> list[dict]:
    """The built-in task's messages: the system turn whenever training has one (even empty: a
    missing system message makes templates such as Qwen2.5's insert their own default)."""
    messages = [{"role": "system", "content": setup.get("system_prompt") or ""}] if system_turn(setup) else []
    return messages + [{"role": "user", "content": user_text}]


@dataclass
class Parity:
    """One test sample rendered for training (torchtune) and for evaluation (inspect's hf provider)."""

    run: str
    task: str
    identical: bool
    train_tokens: int  # the whole training sequence (prompt, answer, end tokens)
    eval_prompt_tokens: int
    first_difference: int | None = None
    train_text: str = ""
    eval_text: str = ""
    note: str = ""
    error: str = ""
    key: str = field(default="", repr=False)

    def message(self) -> str:
        where = f"run {self.run!r}, task {self.task!r}"
        if self.error:
            return f"{where}: prompt parity could not be checked: {self.error}"
        if self.identical:
            return f"{where}: evaluation prompt is token-identical to training ({self.eval_prompt_tokens} tokens)"
        return (
            f"{where}: the evaluation prompt differs from the training prompt at token {self.first_difference}"
            f" ({self.eval_prompt_tokens} eval prompt tokens, {self.train_tokens} training tokens){': ' + self.note if self.note else ''}."
            f"\n  training:   {self.train_text!r}\n  evaluation: {self.eval_text!r}"
        )


@functools.lru_cache(maxsize=64)
def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    """sha256 of a file, once per (path, size, mtime): the driver asks for every run."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def task_script(setup: dict, task: str) -> Path:
    from snaketune.plan import BUILTIN_TASK

    script = setup["evaluation"]["tasks"][task]["script"]
    return Path(__file__).parent / "tasks" / "exact_match.py" if script == BUILTIN_TASK else Path(script)


def cache_key(setup: dict, task: str) -> str | None:
    """What decides both renderings of the task's first sample; None when the files are not here.

    Cheap (stats of the model's tokenizer files, a digest of the task script): the driver computes
    it for every run and task to find cached findings.
    """
    model_dir = Path(setup["model_path"])
    script = task_script(setup, task)
    if not (model_dir / "config.json").is_file() or not script.is_file():
        return None
    files = {
        name: [(stat := (model_dir / name).stat()).st_size, stat.st_mtime_ns] for name in TOKENIZER_FILES if (model_dir / name).is_file()
    }
    decided_by = {
        "model_path": str(model_dir),
        "tokenizer_files": files,
        "script": str(script),
        "script_sha256": _file_digest(script, (stat := script.stat()).st_size, stat.st_mtime_ns),
        "dataset": setup["dataset"],
        "system_prompt": setup["system_prompt"],
        "torchtune": setup["torchtune"],
        "evaluation": {key: value for key, value in setup["evaluation"].items() if key != "tasks"},
    }
    return hashlib.sha256(json.dumps(decided_by, sort_keys=True).encode()).hexdigest()[:32]


def _train_tokens(finetune: dict, user_text: str, target: str) -> tuple[list[int], list[int], object]:
    """Tokens and labels of one (input, output) row through the run's rendered tokenizer and dataset
    components, exactly as torchtune's recipe instantiates them."""
    from omegaconf import OmegaConf
    from torchtune import config as tune_config

    tokenizer = tune_config.instantiate(OmegaConf.create(finetune["tokenizer"]))
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "sample.json"
        data.write_text(json.dumps({"parity": [{"input": user_text, "output": target}]}))
        dataset_config = dict(finetune["dataset"], source="json", data_files=str(data), field="parity", packed=False, split="train")
        dataset = tune_config.instantiate(OmegaConf.create(dataset_config), tokenizer)
        sample = dataset[0]
    return list(sample["tokens"]), list(sample["labels"]), tokenizer


def _eval_tokens(setup: dict, model_dir: Path, messages: list) -> tuple[list[int], object]:
    """Token ids of the prompt inspect's hf provider generates from, without loading the model:
    its own ``hf_chat`` (chat template, message conversion) and tokenizer call."""
    from inspect_ai.model._providers.hf import HuggingFaceAPI
    from transformers import AutoTokenizer

    args = hf_model_args(setup)
    provider = object.__new__(HuggingFaceAPI)  # __init__ would load the weights
    provider.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    provider.chat_template = args.get("chat_template")
    provider.use_chat_template = None
    provider.enable_thinking = None
    chat = provider.hf_chat(messages, [])
    ids = provider.tokenizer(chat, **args["tokenizer_call_args"])["input_ids"]
    return list(ids), provider.tokenizer


def _first_sample(setup_path: Path, script: Path):
    """The task's first sample, loaded the way ``inspect eval`` loads the task file."""
    from inspect_ai._eval.loader import load_tasks

    tasks = load_tasks([os.path.relpath(script)], {"config_path": str(setup_path)})
    if not tasks:
        raise ValueError(f"{script} defines no inspect task")
    sample = tasks[0].dataset[0]
    return sample


def check(setup_path: Path, task: str, finetune: dict | None = None) -> Parity:
    """Render the task's first test sample for training and for evaluation and compare the tokens.

    Training side: the sample's last user message and its target as one row through the run's
    rendered dataset and tokenizer (with the run's system prompt, as training sees every row).
    Evaluation side: the sample's messages through inspect's hf provider. Identical means the eval
    prompt is a prefix of the training tokens and what follows there is the target.
    """
    from inspect_ai.model import ChatMessageUser

    from snaketune import render

    setup_path = Path(setup_path).absolute()
    import yaml

    setup = yaml.safe_load(setup_path.read_text())
    finetune = finetune or render.finetune_config(setup)
    sample = _first_sample(setup_path, task_script(setup, task))
    messages = [ChatMessageUser(content=sample.input)] if isinstance(sample.input, str) else list(sample.input)
    users = [message for message in messages if message.role == "user"]
    target = sample.target if isinstance(sample.target, str) else sample.target[0]
    train, _, _ = _train_tokens(finetune, users[-1].text if users else "", target)
    evaluation, hf_tokenizer = _eval_tokens(setup, Path(setup["model_path"]), messages)
    difference = next((i for i, (a, b) in enumerate(zip(train, evaluation, strict=False)) if a != b), None)
    if difference is None and len(evaluation) > len(train):
        difference = len(train)
    note = ""
    if difference is None:
        answer = hf_tokenizer(target, add_special_tokens=False)["input_ids"]
        rest = train[len(evaluation) :]
        if rest[: len(answer)] != answer:
            difference, note = (
                len(evaluation),
                "training continues the prompt with more than the target (a header the evaluation prompt lacks?)",
            )
    system = [message.text for message in messages if message.role == "system"]
    if system_turn(setup) and (not system or system[0] != (setup.get("system_prompt") or "")):
        note = note or f"the task's system message {system[0] if system else None!r} is not training's {setup.get('system_prompt') or ''!r}"
    # a window around the first difference, in text (a byte-level tokenizer's tokens are characters)
    start, end = max(0, (difference or 0) - 12), (difference or 0) + 40
    return Parity(
        run=setup["run_dir"],
        task=task,
        identical=difference is None,
        train_tokens=len(train),
        eval_prompt_tokens=len(evaluation),
        first_difference=difference,
        train_text="" if difference is None else hf_tokenizer.decode(train[start:end])[:160],
        eval_text="" if difference is None else hf_tokenizer.decode(evaluation[start:end])[:160],
        note=note,
    )


def _cache_path(experiment_dir: Path, key: str) -> Path:
    return Path(experiment_dir) / PARITY_DIR / f"{key}.json"


def _shared_cache_path(key: str) -> Path:
    """The same finding for every experiment on this machine (the key holds everything it depends on):
    a new experiment with a checked model and task costs no check."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "snaketune" / "parity" / f"{key}.json"


def check_run(experiment_dir: Path, setup: dict, setup_path: Path, finetune: dict, recompute: bool = False) -> list[Parity]:
    """The scaffold job's check: every task of a fine-tuned run whose model files are here, once per
    cache key (runs sharing model, task and prompt settings share the finding)."""
    findings = []
    for task in setup["evaluation"]["tasks"]:
        key = cache_key(setup, task)
        if key is None:
            continue
        cached = _cache_path(experiment_dir, key)
        cached.parent.mkdir(parents=True, exist_ok=True)
        # one check per key at a time: parallel scaffold jobs of runs sharing model and task wait
        # for the first one's finding instead of each loading torchtune and transformers
        with open(cached.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            findings.append(_finding(cached, key, setup, setup_path, task, finetune, recompute))
    return findings


def _finding(cached: Path, key: str, setup: dict, setup_path: Path, task: str, finetune: dict, recompute: bool) -> Parity:
    """The cached finding (this experiment's, else this machine's), or a new check recorded in both."""
    from snaketune.render import write_atomic

    shared = _shared_cache_path(key)
    known = None if recompute else next((path for path in (cached, shared) if path.is_file()), None)
    if known:
        parity = Parity(**json.loads(known.read_text()))
        parity.run = setup["run_dir"]
    else:
        try:
            parity = check(setup_path, task, finetune)
        except Exception as error:  # a finding, not a failure: the scaffold job's files are written
            parity = Parity(setup["run_dir"], task, False, 0, 0, error=f"{type(error).__name__}: {error}")
        parity.key = key
        if not parity.error:
            try:
                write_atomic(shared, json.dumps(asdict(parity), indent=1) + "\n")
            except OSError:
                pass  # no writable cache folder: every experiment checks for itself
    if known != cached:
        write_atomic(cached, json.dumps(asdict(parity), indent=1) + "\n")  # what the driver reads
    return parity


def cached_warnings(plan) -> list[str]:
    """Warnings of the cached findings that say a run's evaluation prompt differs from training.

    For the driver only (it stats model files and reads task scripts); absent findings are skipped.
    """
    warnings = []
    for run in plan.runs:
        if not run.fine_tuned:
            continue
        for task in run.setup["evaluation"]["tasks"]:
            key = cache_key(run.setup, task)
            cached = _cache_path(plan.directory, key) if key else None
            if cached is None or not cached.is_file():
                continue
            parity = Parity(**json.loads(cached.read_text()))
            if not parity.identical:
                parity.run = run.run_dir
                warnings.append(parity.message())
    return warnings
