"""Generic exact-match task: the run's dataset test split, scored case-sensitively.

Used by the demo and by any task whose script is ``snaketune`` in the summary. Like the
user's own task scripts, it reads the run from ``-T config_path=<setup_finetune.yaml>``, so
the evaluation sees the same dataset and system prompt as training, and sends the system turn
whenever training has one (snaketune.prompts: token-identical prompts for Llama 3.x and Qwen2.5).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import ChatMessageSystem, ChatMessageUser
from inspect_ai.scorer import includes, match
from inspect_ai.solver import generate

from snaketune.prompts import task_messages

MESSAGE_TYPES = {"system": ChatMessageSystem, "user": ChatMessageUser}

SCORERS = {
    "match": lambda: match(location="exact", ignore_case=False),
    "exact": lambda: match(location="exact", ignore_case=False),
    "match_ignore_case": lambda: match(location="exact", ignore_case=True),
    "includes": lambda: includes(ignore_case=False),
}


def _rows(dataset: str, dataset_format: str, split: str) -> list[dict]:
    if dataset_format == "json":
        return json.loads(Path(dataset).read_text())[split]
    import pyarrow.parquet as pq

    return pq.read_table(Path(dataset) / f"{split}.parquet").to_pylist()


@task
def exact_match(config_path: str, split: str = "") -> Task:
    setup = yaml.safe_load(Path(config_path).read_text())
    evaluation = setup["evaluation"]
    samples = []
    for index, row in enumerate(_rows(setup["dataset"], setup["dataset_format"], split or evaluation["test_split"])):
        messages = [MESSAGE_TYPES[message["role"]](content=message["content"]) for message in task_messages(setup, str(row["input"]))]
        samples.append(Sample(id=index, input=messages, target=str(row["output"])))
    scorer = str(evaluation.get("scorer", "match")).lower()
    if scorer not in SCORERS:
        raise ValueError(f"{config_path}: scorer {scorer!r} is not one of {sorted(SCORERS)}")
    return Task(dataset=MemoryDataset(samples, name=Path(setup["dataset"]).stem), solver=[generate()], scorer=SCORERS[scorer]())
