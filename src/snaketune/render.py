"""Render a run's files from its plan: ``setup_finetune.yaml``, ``finetune.yaml``, ``.slurm``.

YAML is written with ``yaml.safe_dump`` and shell scripts with jinja2 whose every
interpolated value goes through ``shlex.quote`` (the ``q`` filter), so nothing from the
summary can change what a file means or what a script runs.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:  # jinja2 is imported where a script is rendered, not at DAG-build time
    import jinja2

TEMPLATES = Path(__file__).resolve().parents[2] / "workflow" / "templates"
# torchtune's single-device LoRA recipe with its resume fixed. `tune run` turns a custom
# recipe's path into the module it runs ("a/b.py" -> a.b), and a dotted name would lose its
# last part to os.path.splitext: so the module is given as a path.
RESUMABLE_RECIPE = "snaketune/resumable_recipe.py"
# setup["training"] keys copied into finetune.yaml: step-state saves (the recipe) and
# self-requeueing before a SLURM time limit (the finetune job). Policy, not training settings.
INTERRUPTION_KEYS = ("save_every_steps", "save_every_minutes", "requeue_margin_minutes", "max_requeues")
# setup["training"] keys copied into finetune.yaml for the recipe's validation loss (policy too:
# validating does not change what the training computes).
VALIDATION_KEYS = ("validation", "validate_every_steps")
# The finetune job's own sbatch options: SLURM may requeue it (preemption, or its own
# `scontrol requeue` before the time limit), and a requeued job appends to its output file.
FINETUNE_SBATCH_EXTRA = ("--requeue", "--open-mode=append")
# Tokenizer keys of a model mapping that name files inside the model directory (phi4_tokenizer names
# its files vocab_path and merges_path).
TOKENIZER_FILE_KEYS = ("path", "merges_file", "special_tokens_path", "vocab_path", "merges_path")
# Builders without an apply_lora_to_output argument: Gemma ties its output projection to the embedding.
NO_OUTPUT_LORA_BUILDERS = ("torchtune.models.gemma.", "torchtune.models.gemma2.")
# from_config: arguments of a component builder besides the Llama-style dimensions every one takes,
# as torchtune name -> (config.json name, its transformers default).
FROM_CONFIG_EXTRA_ARGS = {"torchtune.models.qwen2.lora_qwen2": {"tie_word_embeddings": ("tie_word_embeddings", False)}}


def read_model_config(model_path: str) -> dict | None:
    config = Path(model_path) / "config.json"
    return json.loads(config.read_text()) if config.is_file() else None


def _model_component(setup: dict) -> dict:
    training, spec = setup["training"], setup["torchtune"]
    component = {
        "_component_": spec["builder"],
        "lora_attn_modules": training["lora_attn_modules"],
        "apply_lora_to_mlp": training["apply_lora_to_mlp"],
        "apply_lora_to_output": False,
        "lora_rank": training["lora_rank"],
        "lora_alpha": training["lora_alpha"],
        "lora_dropout": training["lora_dropout"],
    }
    if spec["builder"].startswith(NO_OUTPUT_LORA_BUILDERS):
        del component["apply_lora_to_output"]
    if spec.get("from_config"):
        hf = read_model_config(setup["model_path"])
        if hf is None:
            raise FileNotFoundError(
                f"{setup['model_path']}/config.json is needed to size the {spec['builder']} model of run {setup['run_name']!r} and does not exist here"
            )
        component.update(
            vocab_size=hf["vocab_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            num_kv_heads=hf.get("num_key_value_heads", hf["num_attention_heads"]),
            embed_dim=hf["hidden_size"],
            max_seq_len=hf["max_position_embeddings"],
            intermediate_dim=hf["intermediate_size"],
            norm_eps=hf.get("rms_norm_eps", 1e-5),
            rope_base=int(hf.get("rope_theta", (hf.get("rope_parameters") or {}).get("rope_theta", 500000))),
        )
        for name, (hf_name, default) in FROM_CONFIG_EXTRA_ARGS.get(spec["builder"], {}).items():
            component[name] = hf.get(hf_name, default)
    return component


def _checkpoint_files(setup: dict) -> list[str]:
    """The model's weight files: when the model is here, the shards its ``model.safetensors.index.json``
    names (a hub repo may hold other ``*.safetensors`` too, e.g. Mistral's ``consolidated.safetensors``
    of the same weights under other names), else its ``*.safetensors``; elsewhere the config's list."""
    model_dir = Path(setup["model_path"])
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    if (model_dir / "model.safetensors").is_file():
        return ["model.safetensors"]
    on_disk = sorted(p.name for p in model_dir.glob("*.safetensors"))
    return on_disk or list(setup["torchtune"]["checkpoint_files"])


def _dataset_component(setup: dict, split: str) -> dict:
    training = setup["training"]
    dataset = {
        "_component_": "torchtune.datasets.instruct_dataset",
        "source": setup["dataset_format"],
        "column_map": {"input": "input", "output": "output"},
        "train_on_input": False,
        # Always a string: "" gives the empty system turn the chat templates also emit; None (no
        # system message) for families whose chat format has no system turn.
        "new_system_prompt": None if setup["torchtune"].get("system_turn") is False else setup["system_prompt"],
        "packed": training["packing"],
        "split": "train",
    }
    if setup["dataset_format"] == "json":
        dataset.update(data_files=setup["dataset"], field=split)
    else:
        dataset.update(data_files=str(Path(setup["dataset"]) / f"{split}.parquet"))
    return dataset


def finetune_config(setup: dict) -> dict:
    """The complete torchtune config of a fine-tuned run."""
    training, spec = setup["training"], setup["torchtune"]
    output_dir = training["output_dir"]
    on_gpu = training["gpus"] > 0
    tokenizer = dict(spec["tokenizer"])
    for key in TOKENIZER_FILE_KEYS:
        if key in tokenizer:
            tokenizer[key] = str(Path(setup["model_path"]) / tokenizer[key])
    # An integer max_seq_len makes torchtune 0.6.1 mask the final EOS label; packing needs one.
    tokenizer["max_seq_len"] = training["max_seq_len"] if training["packing"] else None
    config = {
        "output_dir": output_dir,
        "model": _model_component(setup),
        "tokenizer": tokenizer,
        "checkpointer": {
            "_component_": "torchtune.training.FullModelHFCheckpointer",
            "checkpoint_dir": setup["model_path"],
            "checkpoint_files": _checkpoint_files(setup),
            "recipe_checkpoint": None,
            "output_dir": output_dir,
            "model_type": spec["model_type"],
        },
        "resume_from_checkpoint": False,
        "save_adapter_weights_only": False,
        "dataset": _dataset_component(setup, training["train_split"]),
        "seed": training["seed"],
        "shuffle": True,
        "batch_size": training["batch_size"],
        "optimizer": {
            "_component_": "torch.optim.AdamW",
            "fused": on_gpu,
            "weight_decay": training["weight_decay"],
            "lr": training["learning_rate"],
        },
        "lr_scheduler": {
            "_component_": "torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup",
            "num_warmup_steps": training["warmup_steps"],
        },
        "loss": {"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss"},
        "epochs": training["epochs"],
        # Set by the finetune job from the data (resume restores the step counter only then).
        "max_steps_per_epoch": None,
        "gradient_accumulation_steps": training["gradient_accumulation_steps"],
        "clip_grad_norm": None,
        "compile": False,
        "device": "cuda" if on_gpu else "cpu",
        "dtype": "bf16" if on_gpu else "fp32",
        "enable_activation_checkpointing": on_gpu,
        "enable_activation_offloading": False,
        "metric_logger": {"_component_": "torchtune.training.metric_logging.DiskLogger", "log_dir": f"{output_dir}/logs"},
        "log_every_n_steps": training["log_every_n_steps"],
        # snaketune's own keys (its recipe and job wrapper read them; torchtune ignores them)
        **{key: training[key] for key in INTERRUPTION_KEYS},
        "validation": bool(training.get("validation")),
        "validate_every_steps": int(training.get("validate_every_steps") or 0),
        "log_peak_memory_stats": on_gpu,
        "profiler": {"_component_": "torchtune.training.setup_torch_profiler", "enabled": False},
    }
    if config["validation"]:
        # every sample of the split, unpacked (the recipe's own loader: in order, nothing dropped)
        config["dataset_val"] = {**_dataset_component(setup, training["validation_split"]), "packed": False}
    if "wandb" in setup:
        # offline: compute nodes often have no internet; `wandb sync` uploads the runs later.
        # The disk log stays (the report's loss curves read it).
        wandb = setup["wandb"]
        # the keywords of torchtune's WandBLogger; it writes <dir>/wandb/offline-run-<time>-<id>
        wandb_logger = {"project": wandb["project"], "group": wandb["group"], "name": wandb["name"], "mode": "offline", "dir": output_dir}
        if wandb.get("entity"):
            wandb_logger["entity"] = wandb["entity"]
        config["metric_logger"] = {
            "_component_": "snaketune.metric_logging.DiskAndWandBLogger",
            "log_dir": f"{output_dir}/logs",
            "wandb": wandb_logger,
        }
    return config


def tune_command(setup: dict, finetune_yaml: Path) -> list[str]:
    """The ``tune run`` command line of a run (distributed when it has several GPUs)."""
    training = setup["training"]
    command = ["tune", "run"]
    if training["recipe"] == "lora_finetune_distributed":
        return command + ["--nproc_per_node", str(training["gpus"]), training["recipe"], "--config", str(finetune_yaml)]
    return command + [RESUMABLE_RECIPE, "--config", str(finetune_yaml)]


def environment_lines(environment: dict) -> list[str]:
    lines = [f"module load {shlex.quote(module)}" for module in environment.get("modules", [])]
    if environment.get("conda_env"):
        lines += ['eval "$(conda shell.bash hook)"', f"conda activate {shlex.quote(environment['conda_env'])}"]
    venv = environment.get("venv") or (sys.prefix if sys.prefix != sys.base_prefix else "")
    if venv and not environment.get("conda_env"):
        lines.append(f"source {shlex.quote(str(Path(venv) / 'bin' / 'activate'))}")
    return lines + list(environment.get("setup_commands", []))


def _slurm_time(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def sbatch_options(resources: dict, job_name: str, output: str, comment: str) -> list[str]:
    """``#SBATCH`` options for a stage's resources (the same the Snakemake rule requests)."""
    options = [
        f"--job-name={job_name}",
        f"--output={output}",
        f"--time={_slurm_time(int(resources['time']))}",
        f"--mem={int(resources['mem_mb'])}M",
        "--nodes=1",
        "--ntasks=1",
        f"--cpus-per-task={int(resources['cpus'])}",
        f"--comment={comment}",
    ]
    if int(resources["gpus"]) > 0:
        options.append(f"--gpus={int(resources['gpus'])}")
    for key in ("partition", "account", "constraint", "qos"):
        if resources.get(key):
            options.append(f"--{key}={resources[key]}")
    return options


def _environment() -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
    )
    env.filters["q"] = lambda value: shlex.quote(str(value))
    env.filters["qjoin"] = lambda values: shlex.join(str(v) for v in values)
    return env


def render_script(template: str, **values) -> str:
    return _environment().get_template(template).render(**values)


def write_atomic(path: Path, text: str, mode: int | None = None) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, prefix=f".{path.name}.", suffix=".tmp") as handle:
        handle.write(text)
    # a temporary file is owner-only: give the file the mode a plain open() would (shared clusters)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(handle.name, (0o666 if mode is None else mode) & ~umask)
    os.replace(handle.name, path)


def dump_yaml(data: dict, header: str = "") -> str:
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
