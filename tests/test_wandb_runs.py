"""The W&B runs of a training as our records and wandb's own files tell them (snaketune.wandb_runs)."""

from __future__ import annotations

import json
from pathlib import Path

from snaketune import status as status_module
from snaketune.finetune import ATTEMPTS, finish_attempt, record_attempt
from snaketune.wandb_runs import (
    ID_CHARACTERS,
    LOGGER,
    WandbRun,
    attempt_environment,
    attempt_run,
    runs_to_sync,
    training_runs,
    zombie,
)

WANDB_LOGGER = {
    "_component_": LOGGER,
    "log_dir": "x/logs",
    "wandb": {"project": "sweeps", "group": "exp", "name": "run", "mode": "offline"},
}


def attempt(run_id: str | None, finished: bool, entity: str | None = "lab") -> dict:
    record = {"started": "2026-01-01 10:00:00", "wandb": {"run_id": run_id, "project": "sweeps", "entity": entity} if run_id else None}
    if finished:
        record.update(finished="2026-01-01 11:00:00", exit_code=0)
    return record


def offline_run(output_dir: Path, run_id: str, synced: bool = False) -> Path:
    """What wandb leaves for an offline run: its folder, and the marker `wandb sync` adds after an upload."""
    folder = output_dir / "wandb" / f"offline-run-20260101_100000-{run_id}"
    folder.mkdir(parents=True)
    (folder / f"run-{run_id}.wandb").write_bytes(b"")
    if synced:
        (folder / f"run-{run_id}.wandb.synced").write_bytes(b"")
    return folder


def test_an_attempt_gets_a_fresh_wandb_style_id_only_with_the_wandb_logger():
    assert attempt_run({"metric_logger": {"_component_": "torchtune.training.metric_logging.DiskLogger"}}, {}) is None
    first, second = attempt_run({"metric_logger": WANDB_LOGGER}, {}), attempt_run({"metric_logger": WANDB_LOGGER}, {})
    assert first["project"] == "sweeps" and first["entity"] is None  # the account's default entity, known only after the sync
    assert len(first["run_id"]) == 8 and set(first["run_id"]) <= set(ID_CHARACTERS)
    assert first["run_id"] != second["run_id"]


def test_the_entity_is_the_configs_else_wandbs_environment_variable():
    assert attempt_run({"metric_logger": WANDB_LOGGER}, {"WANDB_ENTITY": "env-lab"})["entity"] == "env-lab"
    configured = {**WANDB_LOGGER, "wandb": {**WANDB_LOGGER["wandb"], "entity": "my-lab"}}
    assert attempt_run({"metric_logger": configured}, {"WANDB_ENTITY": "env-lab"})["entity"] == "my-lab"


def test_the_attempts_tune_run_gets_the_run_id_and_nothing_else_changes():
    environment = {"PATH": "/bin"}
    assert attempt_environment(environment, {"run_id": "abc12345"}) == {"PATH": "/bin", "WANDB_RUN_ID": "abc12345"}
    assert attempt_environment(environment, None) is environment and environment == {"PATH": "/bin"}


def test_the_job_records_each_attempts_end_after_it(tmp_path):
    record_attempt(tmp_path, attempt("aaaa1111", finished=False))
    finish_attempt(tmp_path, 0)
    record_attempt(tmp_path, attempt("bbbb2222", finished=False))
    finish_attempt(tmp_path, -9)
    first, second = json.loads((tmp_path / ATTEMPTS).read_text())["attempts"]
    assert first["wandb"]["run_id"] == "aaaa1111" and first["exit_code"] == 0 and first["finished"]
    assert second["wandb"]["run_id"] == "bbbb2222" and second["exit_code"] == -9


def test_runs_come_from_the_record_and_wandbs_folders(tmp_path):
    synced = offline_run(tmp_path, "aaaa1111", synced=True)
    offline = offline_run(tmp_path, "cccc3333")
    attempts = [attempt("aaaa1111", True), attempt(None, True), attempt("bbbb2222", True), attempt("cccc3333", False, entity=None)]
    runs = training_runs(tmp_path, attempts)
    assert [(r.run_id, r.attempt, r.newest) for r in runs] == [("aaaa1111", 1, False), ("bbbb2222", 3, False), ("cccc3333", 4, True)]
    first, never_started, last = runs
    assert first.synced and first.directory == str(synced) and first.url == "https://wandb.ai/lab/sweeps/runs/aaaa1111"
    assert not never_started.directory and not never_started.synced  # e.g. killed before wandb.init
    assert not last.synced and last.directory == str(offline) and last.url == "" and last.finished == "" and last.exit_code is None


def run(attempt: int, newest: bool, finished: bool, directory: bool = True, synced: bool = False) -> WandbRun:
    return WandbRun(
        f"run{attempt}", attempt, newest, "started", "finished" if finished else "", None, "dir" if directory else "", synced, ""
    )


def test_a_zombie_is_the_newest_attempts_run_left_without_a_finish_record_and_without_a_job():
    dead = run(2, newest=True, finished=False)
    assert zombie([run(1, False, False), dead], "failed") is dead
    assert zombie([run(1, False, False), dead], "pending") is dead  # e.g. after its SLURM job was purged
    assert zombie([run(1, False, False), dead], "running") is None  # its job holds the training lock
    assert zombie([run(1, False, False), dead], "queued") is None  # SLURM requeued it
    assert zombie([run(1, False, False), dead], "completed") is None  # killed after its last save: nothing to resume
    assert zombie([run(1, False, False)], "failed") is None  # the newest attempt logged no W&B run: that one is not
    assert zombie([run(1, True, True)], "failed") is None
    assert zombie([run(1, True, False, directory=False)], "failed") is None  # wandb never started
    assert zombie([], "failed") is None


def test_sync_takes_every_ended_unsynced_run_in_start_order_and_none_of_a_running_training():
    killed, done, synced, newest = run(1, False, False), run(2, False, True), run(3, False, True, synced=True), run(4, True, True)
    assert runs_to_sync([killed, done, synced, newest], "completed") == [killed, done, newest]
    assert runs_to_sync([killed, done, newest], "running") == []
    assert runs_to_sync([killed, done, newest], "queued") == []
    assert runs_to_sync([run(1, True, False)], "failed") == []  # a zombie: not known to have ended
    assert runs_to_sync([run(1, True, False)], "completed") == [run(1, True, False)]  # its training finished after it
    assert runs_to_sync([run(1, False, True, directory=False)], "failed") == []


def test_status_shows_a_wandb_column_only_when_a_run_has_wandb_runs():
    linked = WandbRun("aaaa1111", 1, True, "s", "f", 0, "dir", False, "https://wandb.ai/lab/sweeps/runs/aaaa1111")
    runs = [status_module.RunStatus("r1", "r1", "fine-tuned", epochs=1), status_module.RunStatus("r2", "r2", "fine-tuned", epochs=1)]
    experiment = status_module.ExperimentStatus("exp", "exp/experiment_summary.md", runs, 0, False)
    assert "wandb" not in status_module.table_rows(experiment)[0]
    runs[1].wandb_runs = [linked]
    assert [row["wandb"] for row in status_module.table_rows(experiment)] == ["-", "aaaa1111 offline"]
    assert "[aaaa1111](https://wandb.ai/lab/sweeps/runs/aaaa1111) offline" in status_module.format_markdown(experiment)
    text = status_module.format_text(experiment)
    assert "r2: https://wandb.ai/lab/sweeps/runs/aaaa1111 (after its sync)" in text
    assert "W&B: 1 offline run(s) not synced yet" in text
    assert json.loads(status_module.format_json(experiment))["runs"][1]["wandb_runs"][0]["run_id"] == "aaaa1111"
