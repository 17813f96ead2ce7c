"""Train/eval prompt parity, token by token, against the families' real chat-template behaviour.

The model directories hold the published config.json and tokenizer files with the official chat
templates (tests/data/chat_templates): the real Llama 3 tokenizer, a Qwen2.5-format tokenizer of the
real size. Training tokens come from the run's rendered torchtune components, evaluation tokens from
inspect's hf provider code (snaketune.prompts.check). No weights are needed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from snaketune import hub_models, prompts, scaffold
from snaketune.parse import read_summary
from snaketune.plan import plan_experiment

DATA = Path(__file__).parent / "data"
TEMPLATES = DATA / "chat_templates"
PREAMBLE = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"

SUMMARY = """# Experiment: parity

## All Runs
| Run Name | Model | LoRA Rank | Type |
|----------|-------|-----------|------|
| run | {model} | 8 | Fine-tuned |

## Resources

### Models
- **{model}**: `{path}`

### Dataset
- **Path:** `{dataset}`

### Evaluation Tasks
| Task Name | Script | Dataset | Description |
|-----------|--------|---------|-------------|
| wordcase | {script} | words (test) | exact match |

## Configuration
- **Epochs:** 1
- **GPUs:** 0
- **System prompt:** {system}
"""


def tokenizer_dir(root: Path, name: str, tokenizer: str, template: str) -> Path:
    hub = root / name
    hub.mkdir(parents=True)
    shutil.copyfile(DATA / "models" / name / "config.json", hub / "config.json")
    getattr(hub_models, f"write_{tokenizer}_tokenizer")(hub, template)
    return hub


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return tokenizer_dir(
        tmp_path_factory.mktemp("hub"), "Llama-3.2-1B-Instruct", "llama3", (TEMPLATES / "Llama-3.2-Instruct.jinja").read_text()
    )


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    return tokenizer_dir(
        tmp_path_factory.mktemp("hub"), "Qwen2.5-0.5B-Instruct", "qwen2_5", (TEMPLATES / "Qwen2.5-Instruct.jinja").read_text()
    )


def scaffolded(tmp_path: Path, config: dict, model: str, model_dir: Path, script: str = "snaketune", system: str = '""') -> Path:
    """A one-run experiment for the model, its files written as the scaffold job writes them;
    returns the run's setup_finetune.yaml."""
    dataset = tmp_path / "words.json"
    dataset.write_text(json.dumps({split: [{"input": "apple", "output": "Apple"}] for split in ("train", "validation", "test")}))
    summary = tmp_path / "experiment_summary.md"
    summary.write_text(SUMMARY.format(model=model, path=model_dir, dataset=dataset, script=script, system=system))
    run = plan_experiment(read_summary(summary), config, {}).runs[0]
    scaffold.write_run_files(run.setup, tmp_path / run.run_dir)
    return tmp_path / run.run_dir / "setup_finetune.yaml"


def official_prompt_ids(model_dir: Path, messages: list[dict]) -> list[int]:
    """What the checkpoint's own chat template gives, tokenized as apply_chat_template(tokenize=True) does."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, date_string="26 Jul 2024")
    return text, tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("system", ['""', '"Answer with the word, capitalized."'])
def test_llama3_evaluation_prompts_are_token_identical_to_training(llama_dir, config, tmp_path, system):
    setup_path = scaffolded(tmp_path, config, "Llama-3.2-1B-Instruct", llama_dir, system=system)
    setup = yaml.safe_load(setup_path.read_text())
    parity = prompts.check(setup_path, "wordcase")
    assert parity.identical, parity.message()

    # The real template's behaviour: the same tokens, plus its date preamble in the system turn.
    messages = prompts.task_messages(setup, "apple")
    official_text, _ = official_prompt_ids(llama_dir, messages)
    from inspect_ai.model import ChatMessageSystem, ChatMessageUser

    chat = [ChatMessageSystem(content=messages[0]["content"]), ChatMessageUser(content="apple")]
    ids, tokenizer = prompts._eval_tokens(setup, llama_dir, chat)  # noqa: SLF001 (inspect's own code path)
    assert tokenizer.decode(ids) == official_text.replace(PREAMBLE, "")
    assert ids.count(128000) == 1 and ids[0] == 128000  # one <|begin_of_text|>
    assert parity.eval_prompt_tokens == len(ids)


def test_llama3_official_template_as_inspect_used_it_differs(llama_dir, config, tmp_path):
    """What the fix fixes: inspect's defaults (the checkpoint's template, special tokens on)."""
    from inspect_ai.model import ChatMessageSystem, ChatMessageUser

    setup = yaml.safe_load(scaffolded(tmp_path, config, "Llama-3.2-1B-Instruct", llama_dir).read_text())
    chat = [ChatMessageSystem(content=""), ChatMessageUser(content="apple")]
    fixed, tokenizer = prompts._eval_tokens(setup, llama_dir, chat)  # noqa: SLF001
    official_text, official = official_prompt_ids(llama_dir, prompts.task_messages(setup, "apple"))
    assert "Cutting Knowledge Date" in official_text and len(official) > len(fixed)
    assert tokenizer(official_text)["input_ids"][:2] == [128000, 128000]  # inspect's add_special_tokens default


@pytest.mark.parametrize("system", ['""', '"You are terse."'])
def test_qwen2_5_evaluation_prompts_are_token_identical_to_training(qwen_dir, config, tmp_path, system):
    setup_path = scaffolded(tmp_path, config, "Qwen2.5-0.5B-Instruct", qwen_dir, system=system)
    setup = yaml.safe_load(setup_path.read_text())
    parity = prompts.check(setup_path, "wordcase")
    assert parity.identical, parity.message()
    official_text, official = official_prompt_ids(qwen_dir, prompts.task_messages(setup, "apple"))
    assert parity.eval_prompt_tokens == len(official)  # the real template, unchanged, gives training's tokens
    assert "You are Qwen" not in official_text


def test_a_task_without_system_message_is_flagged_for_qwen2_5(qwen_dir, config, tmp_path):
    """Qwen2.5's template then inserts its default system prompt, which training never had."""
    script = tmp_path / "my_task.py"
    script.write_text(
        "import json, yaml\n"
        "from inspect_ai import Task, task\n"
        "from inspect_ai.dataset import Sample\n"
        "from inspect_ai.scorer import match\n"
        "@task\n"
        "def my_task(config_path: str) -> Task:\n"
        "    setup = yaml.safe_load(open(config_path))\n"
        "    rows = json.load(open(setup['dataset']))['test']\n"
        "    return Task(dataset=[Sample(input=r['input'], target=r['output']) for r in rows], scorer=match())\n"
    )
    parity = prompts.check(scaffolded(tmp_path, config, "Qwen2.5-0.5B-Instruct", qwen_dir, script=f"`{script}`"), "wordcase")
    assert not parity.identical
    assert "You are Qwen" in parity.eval_text and "You are Qwen" not in parity.train_text
    assert "the task's system message None is not training's ''" in parity.message()
    assert "run 'run', task 'wordcase'" in parity.message()


def test_cache_key_follows_the_files_and_settings(qwen_dir, config, tmp_path):
    setup = yaml.safe_load(scaffolded(tmp_path, config, "Qwen2.5-0.5B-Instruct", qwen_dir).read_text())
    key = prompts.cache_key(setup, "wordcase")
    assert key == prompts.cache_key(setup, "wordcase")
    assert key != prompts.cache_key(dict(setup, system_prompt="other"), "wordcase")
    assert prompts.cache_key(dict(setup, model_path=str(tmp_path / "absent")), "wordcase") is None


# ------------------------------------------------------------- the workflow: scaffold, driver, command


# The demo's ChatML with a preamble in the system turn, as the Llama 3.x template has one.
PREAMBLE_TEMPLATE = (
    "{{ '<|im_start|>system\\nToday is Monday.' }}"
    "{%- if messages[0]['role'] == 'system' -%}{{ messages[0]['content'] }}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- for message in messages if message['role'] != 'system' -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


@pytest.fixture
def preamble_model(demo_assets, tmp_path) -> Path:
    """The demo's base model with a chat template that adds a system-turn preamble training lacks."""
    model = tmp_path / "models" / "tiny-llama-preamble"
    shutil.copytree(demo_assets / "models" / "tiny-llama-base", model)
    config_path = model / "tokenizer_config.json"
    config_path.write_text(json.dumps(dict(json.loads(config_path.read_text()), chat_template=PREAMBLE_TEMPLATE)))
    return model


@pytest.mark.e2e
def test_scaffold_job_flags_a_mismatching_chat_template_and_the_driver_reports_it(preamble_model, demo_assets, tmp_path):
    from e2e_helpers import row, snakemake, write_summary

    experiment = tmp_path / "experiment"
    summary = write_summary(experiment, demo_assets, [row("fast", 16, "1e-3")])
    summary.write_text(summary.read_text().replace(str(demo_assets / "models" / "tiny-llama-base"), str(preamble_model)))
    snakemake(summary, "scaffold", "--cores", "1")
    log = (experiment / "fast" / "logs" / "scaffold.log").read_text()
    assert "WARNING: run " in log and "differs from the training prompt" in log
    [finding] = [json.loads(p.read_text()) for p in (experiment / ".snaketune" / "parity").glob("*.json")]
    assert finding["identical"] is False and "Today is Monday" in finding["eval_text"]

    planned = snakemake(summary, "-n")
    assert "task 'wordcase': the evaluation prompt differs from the training prompt" in planned.stdout + planned.stderr

    command = subprocess.run([sys.executable, "-m", "snaketune", "parity", str(experiment)], capture_output=True, text=True)
    assert command.returncode == 1, command.stderr
    assert "1 checked, 1 with evaluation prompts that differ from training" in command.stdout


@pytest.mark.e2e
def test_the_demo_model_passes_the_parity_command(demo_assets, tmp_path):
    from e2e_helpers import row, snakemake, write_summary

    summary = write_summary(tmp_path / "experiment", demo_assets, [row("fast", 16, "1e-3")])
    snakemake(summary, "scaffold", "--cores", "1")
    command = subprocess.run([sys.executable, "-m", "snaketune", "parity", str(summary)], capture_output=True, text=True)
    assert command.returncode == 0, command.stdout + command.stderr
    assert "evaluation prompt is token-identical to training" in command.stdout
    assert "1 checked, 0 with evaluation prompts that differ" in command.stdout
