"""W&B for real: the wandb client logs offline runs of real trainings; `status` and `wandb-sync`
read them from our attempts record and wandb's own folders.

What is asserted about a run's contents is read with wandb's public CLI (`wandb leet inspect
--json`, its reader of ``.wandb`` files) and from the run's ``files/`` folder. Nothing contacts a
W&B server: the upload is replaced in the sync test, and the one real ``wandb sync`` runs without
an API key (it refuses before any connection).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from crash import small_dataset
from e2e_helpers import REPO, SNAKEMAKE, planned_jobs, row, snakemake, write_summary
from exactness import Settings, assert_same_training, train

from snaketune import cli, wandb_runs
from snaketune.finetune import ATTEMPTS
from snaketune.results import read_training_log

pytestmark = pytest.mark.e2e

WANDB = {"project": "snaketune-tests", "entity": "my-lab"}
WANDB_CLI = Path(sys.executable).parent / "wandb"


def inspect(run_directory: str) -> tuple[dict, list[dict]]:
    """An offline run as wandb's CLI reads it: its summary (state, config, latest metrics) and its records."""
    summary = subprocess.run(
        [str(WANDB_CLI), "leet", "inspect", "--summary", "--json", run_directory], capture_output=True, text=True, check=True
    )
    records = subprocess.run([str(WANDB_CLI), "leet", "inspect", "--json", run_directory], capture_output=True, text=True, check=True)
    return json.loads(summary.stdout), [json.loads(line) for line in records.stdout.splitlines()]


def status_json(summary: Path, configfile: Path) -> dict:
    command = [sys.executable, "-m", "snaketune", "status", str(summary), "--format", "json", "--configfile", str(configfile)]
    (run,) = json.loads(subprocess.run(command, capture_output=True, text=True, check=True, timeout=120).stdout)["runs"]
    return run


class Experiment:
    """One run (2 epochs x 5 steps) trained with W&B on: killed after epoch 0, then resumed."""

    def __init__(self, root: Path, assets: Path):
        dataset = small_dataset(assets, root / "data")
        self.summary = write_summary(root / "exp", assets, [row("only", 8, "1e-3")], epochs=2, name="wandb")
        self.summary.write_text(self.summary.read_text().replace(str(assets / "data" / "wordcase.json"), str(dataset)))
        self.configfile = root / "wandb.yaml"
        self.configfile.write_text(yaml.safe_dump({"wandb": WANDB}))
        self.checkpoints = root / "exp" / "ck-outputs" / "ck-out-only"
        self.run_dir = root / "exp" / "only"
        target = ["only/finetune_manifest.json", "--cores", "2", "--configfile", str(self.configfile)]
        killed = subprocess.run(
            [str(SNAKEMAKE), *target, "--config", f"experiment={self.summary}"],
            cwd=REPO,
            env=dict(os.environ, HF_HUB_OFFLINE="1", SNAKETUNE_FAULT="recipe:after-epoch-0"),
            capture_output=True,
            start_new_session=True,  # the fault kills the whole group: driver, job and training
            timeout=900,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        self.after_kill = status_json(self.summary, self.configfile)
        self.attempts_after_kill = self.attempts()
        snakemake(self.summary, "--unlock")
        snakemake(self.summary, *target)

    def attempts(self) -> list[dict]:
        return json.loads((self.checkpoints / ATTEMPTS).read_text())["attempts"]

    def sync(self, *args: str) -> int:
        return cli.main(["wandb-sync", str(self.summary), "--configfile", str(self.configfile), *args])


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, demo_assets) -> Experiment:
    return Experiment(tmp_path_factory.mktemp("wandb"), demo_assets)


def test_each_attempt_records_its_wandb_run_before_it_starts_and_its_end_after_it(experiment):
    (killed,) = experiment.attempts_after_kill
    assert killed["wandb"]["project"] == "snaketune-tests" and killed["wandb"]["entity"] == "my-lab"
    assert "finished" not in killed  # the kill took the job with it
    first, resumed = experiment.attempts()
    # the next attempt filled in how the killed one ended (from its metric log), nothing else
    assert {key: first[key] for key in killed} == killed and "finished" not in first
    assert first["stopped_by"] == "killed" and first["exit_code"] is None
    assert resumed["resumed_from"] == 0 and resumed["exit_code"] == 0 and resumed["finished"] >= resumed["started"]
    assert resumed["wandb"]["run_id"] != first["wandb"]["run_id"]
    for entry in (first, resumed):
        run_id = entry["wandb"]["run_id"]
        assert wandb_runs.offline_run_directory(experiment.checkpoints, run_id), f"wandb made no offline run {run_id}"
    manifest = json.loads((experiment.run_dir / "finetune_manifest.json").read_text())
    assert manifest["wandb_run_ids"] == [first["wandb"]["run_id"], resumed["wandb"]["run_id"]]


def test_the_finished_attempt_is_an_offline_run_of_the_training(experiment):
    entry = experiment.attempts()[-1]
    directory = str(wandb_runs.offline_run_directory(experiment.checkpoints, entry["wandb"]["run_id"]))
    summary, records = inspect(directory)
    assert (summary["run_id"], summary["project"], summary["entity"]) == (entry["wandb"]["run_id"], "snaketune-tests", "my-lab")
    assert summary["name"] == "only" and summary["state"] == "finished" and summary["exit_code"] == 0
    (run,) = [record["run"] for record in records if record["type"] == "run"]
    assert run["run_group"] == "e2e_wandb"  # the experiment
    # the config: the run's finetune.yaml as torchtune resolved it, with the job's overrides
    rendered = yaml.safe_load((experiment.run_dir / "finetune.yaml").read_text())
    assert summary["config"] == {**rendered, "max_steps_per_epoch": 5, "resume_from_checkpoint": True}
    saved = yaml.safe_load((Path(directory) / "files" / "torchtune_config.yaml").read_text())
    assert saved["output_dir"] == str(experiment.checkpoints) and saved["model"] == rendered["model"]
    # the history: every metric of every step this attempt logged (epoch 1: steps 6-10), as the disk log has it
    history = {record["history"]["item"]["global_step"]: record["history"]["item"] for record in records if record["type"] == "history"}
    assert sorted(history) == [6, 7, 8, 9, 10]
    disk = read_training_log(experiment.checkpoints / "logs").set_index("step")
    for step, item in history.items():
        logged = {key: value for key, value in disk.loc[step].items() if value == value}  # NaN: not logged at this step
        assert {key: item[key] for key in logged} == logged, f"step {step}"
    assert summary["summary"]["loss"] == disk.loc[10, "loss"]


def test_status_flags_the_killed_attempts_run_as_a_zombie_until_the_training_resumes(experiment):
    (killed,) = experiment.attempts_after_kill
    run_id = killed["wandb"]["run_id"]
    before = experiment.after_kill
    (listed,) = before["wandb_runs"]
    assert (listed["run_id"], listed["synced"], listed["finished"]) == (run_id, False, "")
    assert listed["url"] == f"https://wandb.ai/my-lab/snaketune-tests/runs/{run_id}"
    assert any(flag.startswith(f"W&B zombie: offline run {run_id}") for flag in before["flags"]), before["flags"]

    after = status_json(experiment.summary, experiment.configfile)
    assert [w["run_id"] for w in after["wandb_runs"]] == [entry["wandb"]["run_id"] for entry in experiment.attempts()]
    assert not after["flags"]
    text = subprocess.run(
        [sys.executable, "-m", "snaketune", "status", str(experiment.summary), "--configfile", str(experiment.configfile)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"{run_id} offline" in text and f"only: https://wandb.ai/my-lab/snaketune-tests/runs/{run_id}" in text
    assert "W&B: 2 offline run(s) not synced yet" in text


def test_a_refused_upload_is_reported_and_nothing_counts_as_synced(experiment, monkeypatch, tmp_path, capsys):
    # the real `wandb sync`, with no API key anywhere: it refuses before connecting (and the
    # base URL is a closed local port should one be found)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    assert experiment.sync() == 1
    assert "W&B run" in capsys.readouterr().err
    assert not any(w["synced"] for w in status_json(experiment.summary, experiment.configfile)["wandb_runs"])


def test_wandb_sync_uploads_every_ended_attempt_in_start_order_and_skips_a_running_training(experiment, monkeypatch, capsys):
    uploaded = []

    def upload(directory: Path) -> None:  # the network call; the rest is the real command
        uploaded.append(directory)
        run_id = directory.name.rsplit("-", 1)[1]
        (directory / f"run-{run_id}.wandb.synced").write_bytes(b"")  # what wandb leaves after an upload

    monkeypatch.setattr(wandb_runs, "upload", upload)
    expected = [wandb_runs.offline_run_directory(experiment.checkpoints, e["wandb"]["run_id"]) for e in experiment.attempts()]

    assert experiment.sync("--dry-run") == 0 and not uploaded
    assert capsys.readouterr().out.count("would sync") == 2

    # a training that runs (its job holds the lock) is left alone
    with open(experiment.checkpoints.with_name(".ck-out-only.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert experiment.sync() == 0
        fcntl.flock(lock, fcntl.LOCK_UN)
    assert not uploaded and "only: running" in capsys.readouterr().out

    assert experiment.sync() == 0
    assert uploaded == expected
    assert experiment.sync() == 0 and uploaded == expected  # synced runs are not uploaded again
    after = status_json(experiment.summary, experiment.configfile)
    assert [w["synced"] for w in after["wandb_runs"]] == [True, True]


def test_switching_wandb_on_or_off_retrains_and_reevaluates_nothing(crash_experiment, tmp_path):
    crash_experiment.restore(None)
    finished = {path: path.read_bytes() for path in crash_experiment.path.glob("*/finetune_manifest.json")}
    finished.update({path: path.read_bytes() for path in crash_experiment.path.glob("*/eval/logs/*.eval")})
    configfile = tmp_path / "wandb.yaml"
    configfile.write_text(yaml.safe_dump({"wandb": WANDB}))
    switched_on = planned_jobs(snakemake(crash_experiment.summary, "-n", "--configfile", str(configfile)).stdout)
    assert "finetune" not in switched_on and "evaluate" not in switched_on, switched_on
    snakemake(crash_experiment.summary, "--cores", "2", "--configfile", str(configfile))
    assert "DiskAndWandBLogger" in (crash_experiment.path / "only" / "finetune.yaml").read_text()  # the next training logs to W&B
    assert {path: path.read_bytes() for path in finished} == finished
    assert not list(crash_experiment.path.glob("ck-outputs/*/wandb"))
    switched_off = planned_jobs(snakemake(crash_experiment.summary, "-n").stdout)
    assert "finetune" not in switched_off and "evaluate" not in switched_off, switched_off


def test_a_training_that_switches_wandb_on_and_off_between_resumes_trains_identically(tmp_path, demo_assets, uninterrupted):
    settings = Settings()
    # on, off, on: the last attempt also ends its W&B run the normal way
    resumed = train(tmp_path, demo_assets, settings, kills=["recipe:after-epoch-0", "recipe:after-epoch-1"], wandb=[WANDB, None, WANDB])
    assert resumed.exit_codes == [-9, -9, 0]
    assert len(list((resumed.output_dir / "wandb").glob("offline-run-*"))) == 2
    assert_same_training(resumed, uninterrupted(settings), settings.epochs)
