"""From a parsed summary and the config to one :class:`RunPlan` per run.

A run's plan is the complete, typed description of what to train and evaluate: it is
written as the run's ``setup_finetune.yaml`` and every later file is rendered from it.
Precedence for each value: the All Runs row, then the summary's Configuration section,
then ``config.yaml``'s ``training``/``evaluation`` defaults.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from snaketune.naming import run_directories, run_key
from snaketune.parse import BEST, Experiment, Run, SummaryError

RECIPES = ("lora_finetune_single_device", "lora_finetune_distributed")
BUILTIN_TASK = "snaketune"
TRUE_WORDS = {"true", "yes", "y", "on", "enabled", "enable", "1", "✓"}
FALSE_WORDS = {"false", "no", "n", "off", "disabled", "disable", "0", "none", "-"}


@dataclass(frozen=True)
class Evaluation:
    """One evaluate job: a task on one checkpoint (``epoch_N``, or ``base`` for a control)."""

    task: str
    checkpoint: str


@dataclass
class RunPlan:
    name: str
    run_dir: str
    type: str
    key: str
    setup: dict
    evaluations: list[Evaluation] = field(default_factory=list)
    # Digests of the settings each of the run's jobs depends on (snaketune.workflow fills it on
    # first use: every job of the run asks, planning computes them once).
    digests: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def fine_tuned(self) -> bool:
        return self.type == "fine-tuned"


@dataclass
class ExperimentPlan:
    experiment: Experiment
    runs: list[RunPlan]
    warnings: list[str]
    # dataset split sizes read at planning time (snaketune.workflow.batch_warnings)
    dataset_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def directory(self) -> Path:
        return self.experiment.directory

    def run(self, run_dir: str) -> RunPlan:
        return self._by_dir[run_dir]

    def __post_init__(self) -> None:
        self._by_dir = {run.run_dir: run for run in self.runs}


def table_values(experiment: Experiment, run: Run, setup: dict) -> dict:
    """The run's value of every parameter column of the table (typed where training uses it):
    the columns of its row in the results table."""
    values = {"model": run.model}
    training = setup.get("training", {})
    for column in experiment.columns:
        if column in training:
            values[column] = training[column]
        else:
            values[column] = run.params.get(column, experiment.config.get(column) if run.type == "fine-tuned" else None)
    return values


def resolve_path(value: str, base: Path) -> str:
    """Absolute form of a summary path; relative paths resolve against ``base``."""
    path = Path(os.path.expanduser(value))
    return str(path if path.is_absolute() else (base / path).absolute())


def parse_bool(value, where: tuple[Path, int], label: str) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise SummaryError(where[0], where[1], f"{label} {value!r} is not yes/no")


def checkpoints_to_evaluate(phrase: str | None, epochs: int, where: tuple[Path, int]) -> list[str]:
    """Checkpoints named by a phrase: ``epoch_N`` for the epochs it names, then ``best`` (the epoch
    of lowest validation loss, decided after training) when it asks for that."""
    parts = (phrase or "").split(",")
    best = BEST in parts
    rest = ",".join(part for part in parts if part != BEST)
    chosen = [] if best and not rest else epochs_to_evaluate(rest or None, epochs, where)
    return [f"epoch_{epoch}" for epoch in chosen] + ([BEST] if best else [])


def epochs_to_evaluate(phrase: str | None, epochs: int, where: tuple[Path, int]) -> list[int]:
    """Epoch indices (0-based) named by a phrase; the default is the last epoch."""
    if phrase in (None, "", "last"):
        return [epochs - 1]
    if phrase == "all":
        return list(range(epochs))
    chosen = sorted({int(n) for n in phrase.split(",")})
    for epoch in chosen:
        if epoch >= epochs:
            raise SummaryError(
                where[0],
                where[1],
                f"epoch {epoch} is evaluated but the run trains {epochs} epoch(s) (epochs are 0-indexed: 0..{epochs - 1})",
            )
    return chosen


def model_spec(model: str, models: list[dict], where: tuple[Path, int]) -> dict:
    """The config's torchtune mapping entry for a model name (matched on its full name, so that an
    Instruct entry can come before its base model's)."""
    name = model.rstrip("/").rsplit("/", 1)[-1]
    for entry in models:
        if re.search(entry["match"], name, re.IGNORECASE):
            if entry.get("unsupported"):
                raise SummaryError(where[0], where[1], f"model {model!r} cannot be fine-tuned here: {entry['unsupported']}")
            return entry
    raise SummaryError(
        where[0],
        where[1],
        f"unknown model {model!r}: no entry of config 'models' matches {name!r}; add one to config/config.yaml 'models:' "
        "(match, builder, model_type, tokenizer, checkpoint_files, params_billions; README: Supported models)",
    )


# Keys of a `models:` entry that only planning reads: they are rendered into no file and stay out of
# every digest (so adding one never retrains or re-evaluates anything).
PLANNING_ONLY_KEYS = ("match", "params_billions", "prompt_parity", "chat_template", "unsupported")
# bf16 on a GPU, fp32 on the CPU (render.finetune_config's dtype)
BYTES_PER_PARAMETER = {"gpu": 2, "cpu": 4}
# Headroom over the weights for activations, LoRA optimizer state and CUDA buffers when suggesting a
# GPU count; the warning itself fires only when the weights alone cannot fit.
FIT_HEADROOM = 1.25


def fit_warning(model: str, spec: dict, gpus: int, resources: dict) -> str | None:
    """Why a LoRA run clearly cannot fit the memory it is given, or None.

    "Clearly": the model's weights alone exceed it (bf16 on GPUs, sharded across them by the
    distributed recipe; fp32 in the job's memory on the CPU). Unknown memory: no warning.
    """
    billions = spec.get("params_billions")
    if not billions:
        return None
    if gpus == 0:
        weights_gb = BYTES_PER_PARAMETER["cpu"] * billions
        memory_gb = int(resources["mem_mb"]) / 1000
        if weights_gb <= memory_gb:
            return None
        return f"model {model} ({billions:g}B parameters) has {weights_gb:.0f} GB of fp32 weights: a CPU training with mem_mb {resources['mem_mb']} cannot hold them"
    gpu_mem_gb = resources.get("gpu_mem_gb")
    if gpu_mem_gb in (None, ""):
        return None
    weights_gb = BYTES_PER_PARAMETER["gpu"] * billions
    if weights_gb / gpus <= float(gpu_mem_gb):
        return None
    needed = math.ceil(weights_gb * FIT_HEADROOM / float(gpu_mem_gb))
    return (
        f"model {model} ({billions:g}B parameters) has {weights_gb:.0f} GB of bf16 weights: {gpus} GPU(s) of {float(gpu_mem_gb):g} GB cannot hold them;"
        f" use GPUs: {needed} or more (lora_finetune_distributed shards the model across them) or GPUs with more memory"
    )


class _Settings:
    """Looks a value up in row -> summary Configuration -> config defaults, remembering where from."""

    def __init__(self, experiment: Experiment, run: Run, defaults: dict):
        self.experiment, self.run, self.defaults = experiment, run, defaults

    def where(self, key: str) -> tuple[Path, int]:
        if key in self.run.params:
            return self.experiment.path, self.run.line
        return self.experiment.path, self.experiment.config_lines.get(key, self.run.line)

    def raw(self, key: str):
        if key in self.run.params:
            return self.run.params[key]
        if key in self.experiment.config:
            return self.experiment.config[key]
        return self.defaults.get(key)

    def int(self, key: str) -> int:
        return int(self.raw(key))

    def float(self, key: str) -> float:
        value = float(self.raw(key))
        return int(value) if key == "lora_alpha" and value.is_integer() else value

    def bool(self, key: str) -> bool:
        return parse_bool(self.raw(key), self.where(key), key.replace("_", " "))


def _dataset(experiment: Experiment, run: Run, base: Path, resolve=resolve_path) -> tuple[str, str]:
    raw = run.params.get("dataset") or experiment.dataset
    if not raw:
        raise SummaryError(
            experiment.path, run.line, f"run {run.name!r} has no dataset: give '### Dataset' -> '**Path:**' under '## Resources'"
        )
    path = resolve(raw, base)
    if path.endswith(".json") or path.endswith(".jsonl"):
        return path, "json"
    if path.endswith(".parquet"):
        return str(Path(path).parent), "parquet"
    return path, "parquet"


def _training(settings: _Settings, config: dict, output_dir: str) -> dict:
    recipe = str(settings.raw("recipe"))
    gpus = _summary_gpus(settings)
    gpus = int(config["resources"]["finetune"]["gpus"]) if gpus is None else gpus
    training = {
        "recipe": recipe,
        "gpus": gpus,
        "epochs": settings.int("epochs"),
        "batch_size": settings.int("batch_size"),
        "gradient_accumulation_steps": int(settings.defaults["gradient_accumulation_steps"]),
        "learning_rate": settings.float("learning_rate"),
        "lora_rank": settings.int("lora_rank"),
        "lora_alpha": settings.float("lora_alpha") if settings.raw("lora_alpha") is not None else 2 * settings.int("lora_rank"),
        "lora_dropout": float(settings.defaults["lora_dropout"]),
        "lora_attn_modules": list(settings.defaults["lora_attn_modules"]),
        "apply_lora_to_mlp": bool(settings.defaults["apply_lora_to_mlp"]),
        "weight_decay": float(settings.defaults["weight_decay"]),
        "warmup_steps": int(settings.defaults["warmup_steps"]),
        "validation": settings.bool("validation"),
        "validate_every_steps": int(settings.defaults["validate_every_steps"]),
        "packing": settings.bool("packing"),
        "max_seq_len": int(settings.defaults["max_seq_len"]),
        "seed": settings.int("seed"),
        "log_every_n_steps": int(settings.defaults["log_every_n_steps"]),
        "save_every_steps": int(settings.defaults["save_every_steps"]),
        "save_every_minutes": float(settings.defaults["save_every_minutes"]),
        "requeue_margin_minutes": float(settings.defaults["requeue_margin_minutes"]),
        "max_requeues": int(settings.defaults["max_requeues"]),
        "output_dir": output_dir,
    }
    return training


def _summary_gpus(settings: _Settings) -> int | None:
    """The GPU count the row or the summary's Configuration asks for, if any."""
    if "gpus" in settings.run.params or "gpus" in settings.experiment.config:
        return settings.int("gpus")
    return None


def _recipe_warning(recipe: str, gpus: int) -> tuple[str, str | None]:
    """The torchtune recipe to run, and a warning when the summary's recipe was mapped."""
    if recipe in RECIPES:
        if recipe == RECIPES[0] and gpus > 1:
            return RECIPES[1], f"recipe {recipe} with {gpus} GPUs: using {RECIPES[1]}"
        return recipe, None
    chosen = RECIPES[1] if gpus > 1 else RECIPES[0]
    return chosen, f"recipe {recipe!r} is not a standard torchtune LoRA recipe: using {chosen}"


def plan_experiment(experiment: Experiment, config: dict, registry: dict[str, str]) -> ExperimentPlan:
    """Every run's setup and evaluations; raises :class:`SummaryError` on any bad value."""
    base = experiment.directory
    models_base = Path(config["models_dir"]) if config.get("models_dir") else base
    output_base = (
        resolve_path(experiment.config["checkpoint_dir"], base)
        if experiment.config.get("checkpoint_dir")
        else resolve_path(config["output_dir_base"] or "ck-outputs", base)
    )
    directories = run_directories(experiment, registry)
    warnings: list[str] = []
    if experiment.stated_directory and resolve_path(experiment.stated_directory, base) != str(base):
        warnings.append(
            f"{experiment.path}: Quick Reference names experiment directory {experiment.stated_directory!r}; using {base}, the folder holding the summary"
        )
    tasks = {task.name: task for task in experiment.tasks}
    evaluation_defaults = config["evaluation"]
    plans = []
    resolved: dict[tuple[str, Path], str] = {}
    specs: dict[str, dict] = {}

    def resolve(value: str, folder: Path) -> str:
        """resolve_path, once per path (a 1,000-run summary names a handful of paths)."""
        if (value, folder) not in resolved:
            resolved[value, folder] = resolve_path(value, folder)
        return resolved[value, folder]

    for run in experiment.runs:
        run_dir = directories[run.name]
        settings = _Settings(experiment, run, config["training"])
        where = (experiment.path, run.line)
        if run.model not in specs:  # a 1,000-run summary names a handful of models, the config ~40 entries
            specs[run.model] = model_spec(run.model, config["models"], where)
        spec = specs[run.model]
        dataset, dataset_format = _dataset(experiment, run, base, resolve)
        system_prompt = settings.raw("system_prompt")
        setup = {
            "experiment": experiment.name,
            "run_name": run.name,
            "run_dir": run_dir,
            "type": run.type,
            "model": run.model,
            "model_path": resolve(experiment.models[run.model], models_base),
            "dataset": dataset,
            "dataset_format": dataset_format,
            "system_prompt": "" if system_prompt is None else str(system_prompt),
            "parameters": {key: value for key, value in run.params.items()},
        }
        if spec.get("system_turn") is False and setup["system_prompt"]:
            raise SummaryError(
                *settings.where("system_prompt"),
                f"model {run.model!r} has no system turn in its chat format (config 'models' entry {spec['match']!r}): remove the System prompt or put it into the inputs",
            )
        if run.type == "fine-tuned":
            training = _training(settings, config, str(Path(output_base) / f"ck-out-{run_dir}"))
            training["recipe"], warning = _recipe_warning(training["recipe"], training["gpus"])
            if warning:
                warnings.append(f"{experiment.path}, line {run.line}: {warning}")
            if training["validation"] and training["recipe"] != RECIPES[0]:
                warnings.append(
                    f"{experiment.path}, line {settings.where('validation')[1]}: validation during training is computed by snaketune's single-device recipe only; {training['recipe']} trains without it"
                )
            if training["packing"]:
                warnings.append(
                    f"{experiment.path}, line {settings.where('packing')[1]}: dataset packing needs an integer tokenizer.max_seq_len, which makes torchtune 0.6.1 mask the final EOS label (the model may not learn to stop)"
                )
            training["train_split"] = config["training"]["train_split"]
            training["validation_split"] = config["training"]["validation_split"]
            setup["training"] = training
        evaluations = _evaluations(experiment, run, settings, tasks, setup)
        setup["evaluation"] = {
            "test_split": evaluation_defaults["test_split"],
            "max_tokens": int(settings.raw("max_tokens") or evaluation_defaults["max_tokens"]),
            "temperature": float(settings.raw("temperature") or evaluation_defaults["temperature"]),
            "scorer": str(settings.raw("scorer") or "match"),
            "batch_size": int(evaluation_defaults["batch_size"]),
            "tasks": {
                name: {
                    "script": BUILTIN_TASK if tasks[name].script == BUILTIN_TASK else resolve(tasks[name].script, base),
                    "checkpoints": [e.checkpoint for e in evaluations if e.task == name],
                }
                for name in dict.fromkeys(e.task for e in evaluations)
            },
        }
        if config["wandb"].get("project"):
            setup["wandb"] = {
                "project": config["wandb"]["project"],
                "entity": config["wandb"].get("entity", ""),
                "group": experiment.name,
                "name": run_dir,
            }
        if spec.get("chat_template"):
            setup["evaluation"]["chat_template"] = spec["chat_template"]
        setup["torchtune"] = {key: value for key, value in spec.items() if key not in PLANNING_ONLY_KEYS}
        setup["resources"] = stage_resources(config, _summary_gpus(settings))
        if run.type == "fine-tuned":
            warning = fit_warning(run.model, spec, setup["training"]["gpus"], setup["resources"]["finetune"])
            if warning:
                warnings.append(f"{experiment.path}, line {run.line}: run {run.name!r}: {warning}")
        if evaluations and spec.get("prompt_parity") != "verified":
            warnings.append(
                f"{experiment.path}: model {run.model}: evaluation prompts are not verified to match training prompts for this family"
                " (torchtune's prompt format vs the checkpoint's chat template); the scaffold job compares them on the model's files"
                " (`snaketune parity <experiment>`)"
            )
        setup["environment"] = dict(config["environment"])
        setup["table"] = table_values(experiment, run, setup)
        plans.append(RunPlan(run.name, run_dir, run.type, run_key(run), setup, evaluations))
    return ExperimentPlan(experiment, plans, list(dict.fromkeys(warnings)))


def stage_resources(config: dict, gpus: int | None) -> dict:
    """Per-stage resources of a run: config's ``resources``, with the summary's GPU count.

    ``GPUs: 0`` in a summary makes the whole run a CPU run (training and evaluation).
    """
    resources = {stage: dict(values) for stage, values in config["resources"].items()}
    if gpus is not None:
        resources["finetune"]["gpus"] = gpus
        if gpus == 0:
            resources["evaluate"]["gpus"] = 0
    return resources


def _evaluations(experiment: Experiment, run: Run, settings: _Settings, tasks: dict, setup: dict) -> list[Evaluation]:
    evaluations = []
    for task in tasks:
        if experiment.eval_matrix and (run.name, task) not in experiment.eval_matrix:
            continue
        if run.type == "control":
            evaluations.append(Evaluation(task, "base"))
            continue
        phrase = experiment.eval_epochs or experiment.eval_matrix.get((run.name, task)) or experiment.eval_sentence
        epochs = int(settings.raw("epochs"))
        for checkpoint in checkpoints_to_evaluate(phrase, epochs, (experiment.path, run.line)):
            if checkpoint == BEST and not setup["training"]["validation"]:
                raise SummaryError(
                    experiment.path,
                    run.line,
                    f"run {run.name!r} evaluates its best epoch by validation loss ({task}), which needs validation during training:"
                    " add '- **Validation during training:** Yes' to '## Configuration'",
                )
            evaluations.append(Evaluation(task, checkpoint))
    return evaluations
