"""What a rerun plans from each on-disk state an interruption can leave.

Each state is synthesized from a small finished experiment (tests/crash.py) in seconds, without
training; the plan is read from `snakemake -n`. Real kills at named points are in
test_crash_e2e.py.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from crash import raise_epochs
from e2e_helpers import planned_jobs, snakemake

pytestmark = pytest.mark.e2e

RUN, CONTROL = "only", "tiny-llama_base"
LOG = f"{RUN}/eval/logs/wordcase_epoch_1.eval"
CONTROL_LOG = f"{CONTROL}/eval/logs/wordcase_base.eval"
MANIFEST = f"{RUN}/finetune_manifest.json"


def reasons(output: str) -> str:
    """The dry run's lines that say what runs and why."""
    return "\n".join(line for line in output.splitlines() if line.strip().startswith(("rule ", "reason:", "snaketune:", "output:")))


def edit_json(path: Path, **changes) -> None:
    record = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            record.pop(key, None)
        else:
            record[key] = value
    path.write_text(json.dumps(record))


def mark_incomplete(experiment: Path, output: str) -> None:
    """Snakemake's marker of a job that started and never finished (its process was killed)."""
    marker = experiment / ".snakemake" / "incomplete" / base64.urlsafe_b64encode(output.encode()).decode()
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"external_jobid": None}))


def no_sidecar(exp: Path) -> None:
    (exp / f"{LOG}.json").unlink()


def failed_sidecar(exp: Path) -> None:
    edit_json(exp / f"{CONTROL_LOG}.json", status="error", error="RuntimeError: boom")


def other_evaluation_settings(exp: Path) -> None:
    edit_json(exp / f"{LOG}.json", evaluation_digest="0" * 64)


def evaluated_another_training(exp: Path) -> None:
    edit_json(exp / f"{LOG}.json", training_digest="0" * 64)


def trained_with_other_settings(exp: Path) -> None:
    edit_json(exp / MANIFEST, training_digest="0" * 64)


def manifest_of_an_older_version(exp: Path) -> None:
    edit_json(exp / MANIFEST, training_digest=None)


def manifest_deleted_while_running(exp: Path) -> None:
    (exp / MANIFEST).unlink()
    mark_incomplete(exp, MANIFEST)


def half_written_epoch(exp: Path) -> None:
    manifest_deleted_while_running(exp)
    (exp / "ck-outputs" / f"ck-out-{RUN}" / "epoch_1" / "adapter_model.safetensors").unlink()


def evaluation_log_deleted(exp: Path) -> None:
    (exp / CONTROL_LOG).unlink()


def untouched(exp: Path) -> None:
    pass


STATES = {
    untouched: {},
    no_sidecar: {"evaluate": 1, "report": 1, "all": 1},
    failed_sidecar: {"evaluate": 1, "report": 1, "all": 1},
    other_evaluation_settings: {"evaluate": 1, "report": 1, "all": 1},
    evaluated_another_training: {"evaluate": 1, "report": 1, "all": 1},
    trained_with_other_settings: {"finetune": 1, "evaluate": 1, "report": 1, "all": 1},
    manifest_of_an_older_version: {"finetune": 1, "evaluate": 1, "report": 1, "all": 1},
    manifest_deleted_while_running: {"finetune": 1, "evaluate": 1, "report": 1, "all": 1},
    half_written_epoch: {"finetune": 1, "evaluate": 1, "report": 1, "all": 1},
    evaluation_log_deleted: {"evaluate": 1, "report": 1, "all": 1},
}


@pytest.mark.parametrize("state", STATES, ids=lambda state: state.__name__)
def test_rerun_plans_exactly_what_the_state_needs(crash_experiment, state):
    crash_experiment.restore(None)
    state(crash_experiment.path)
    plan = snakemake(crash_experiment.summary, "-n")
    assert planned_jobs(plan.stdout) == STATES[state], f"{state.__name__}:\n{reasons(plan.stdout + plan.stderr)}"
    if not STATES[state]:
        assert "Nothing to be done" in plan.stdout + plan.stderr


def test_scaffolded_but_not_trained_plans_the_training(crash_experiment):
    """Epochs raised, the scaffold jobs ran, the training did not: the training is redone."""
    crash_experiment.restore("epochs raised")
    snakemake(crash_experiment.summary, "scaffold", "--cores", "1")
    plan = planned_jobs(snakemake(crash_experiment.summary, "-n").stdout)
    assert plan == {"finetune": 1, "evaluate": 1, "report": 1, "all": 1}, plan
    assert raise_epochs  # the change restore() applied


def test_a_policy_key_alone_retrains_and_reevaluates_nothing(crash_experiment, tmp_path):
    crash_experiment.restore(None)
    policy = tmp_path / "policy.yaml"
    policy.write_text("training:\n  log_every_n_steps: 5\n  validation: true\n")
    plan = planned_jobs(snakemake(crash_experiment.summary, "-n", "--configfile", str(policy)).stdout)
    assert "finetune" not in plan and "evaluate" not in plan, plan
