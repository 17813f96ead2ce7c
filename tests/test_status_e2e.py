"""Real failures, diagnosed: `snaketune status`, the Status tables, run-experiment.log, OOM recovery."""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_helpers import REPO, SNAKEMAKE, planned_jobs, row, snakemake, write_summary

pytestmark = pytest.mark.e2e

NOTES = "\n## Notes\n\nKeep this paragraph | exactly as it is.\n"


def status(experiment: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snaketune", "status", str(experiment), *args], capture_output=True, text=True, check=True, timeout=120
    )


def status_json(experiment: Path) -> dict[str, dict]:
    return {run["run_name"]: run for run in json.loads(status(experiment, "--format", "json").stdout)["runs"]}


def test_failures_are_diagnosed_and_recorded(tmp_path, demo_assets):
    rows = [row("diverges", 8, "1e12"), row("misconfigured", 4, "1e-3"), row("healthy", 16, "1e-3")]
    summary = write_summary(tmp_path / "exp", demo_assets, rows)
    summary.write_text(summary.read_text() + "\n## Status\n\n(filled in by the workflow)\n" + NOTES)
    before_status = summary.read_text().split("## Status")[0]
    snakemake(summary, "scaffold", "--cores", "2")
    # an unknown torchtune key, as a hand edit of the rendered config would bring in
    config = tmp_path / "exp" / "rank4_lr1e-3" / "finetune.yaml"
    config.write_text(config.read_text().replace("  lora_dropout: 0.0\n", "  lora_dropout: 0.0\n  bogus_key: 1\n"))

    result = snakemake(summary, "--cores", "2", check=False)
    assert result.returncode != 0

    runs = status_json(tmp_path / "exp")
    diverged, misconfigured, healthy = runs["diverges"], runs["misconfigured"], runs["healthy"]
    assert diverged["state"] == "failed" and diverged["cause"] == "NaN loss"
    assert diverged["resumable"].startswith("no") and "learning rate" in diverged["action"]
    assert diverged["step"] is not None and diverged["step"] < diverged["total_steps"]  # stopped early, not trained on
    assert misconfigured["state"] == "failed" and misconfigured["cause"] == "config error"
    assert "bogus_key" in misconfigured["detail"]
    assert misconfigured["resumable"].startswith("no: nothing saved")
    assert misconfigured["action"].endswith(f"snakemake --config experiment={summary}")
    assert healthy["state"] == "completed" and healthy["progress"] == 1.0 and not healthy["flags"]
    assert healthy["evaluations"][0]["state"] == "completed" and healthy["latest_score"] is not None
    assert diverged["evaluations"][0]["state"] == "pending"

    text = status(tmp_path / "exp").stdout
    assert "rank8_lr1e12" in text and "NaN loss" in text and "do: lower the learning rate" in text
    assert "Fine-tuning: 2 failed, 1 completed" in text or "Fine-tuning: 1 completed, 2 failed" in text

    # onerror rewrote the Status tables (the summary had the section), nothing else
    written = summary.read_text()
    assert written.startswith(before_status) and written.endswith(NOTES)
    assert "| diverges | failed | - |" in written
    assert "| healthy | wordcase | 0 | completed | - |" in written
    log = (tmp_path / "exp" / "run-experiment.log").read_text()
    assert "] START_WORKFLOW: snakemake started (local)" in log and "Jobs to run: " in log
    assert "] FAILED: workflow stopped with failures" in log and "- rank8_lr1e12: failed (NaN loss" in log
    assert "] UPDATE_STATUS:" in log

    # writing the tables again changes nothing Snakemake looks at: only the failed runs are planned
    status(tmp_path / "exp", "--write")
    planned = planned_jobs(snakemake(summary, "-n").stdout)
    assert planned == {"finetune": 2, "evaluate": 2, "report": 1, "all": 1}


def long_samples(count: int) -> list[dict]:
    """Samples near the tiny model's 256-token context: memory then grows with the batch."""
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    rng = random.Random(0)
    samples = []
    for _ in range(count):
        text = " ".join(rng.choice(words) for _ in range(28))
        samples.append({"input": text, "output": text[:20].upper()})
    return samples


def test_out_of_memory_is_retried_with_half_the_batch(tmp_path, demo_assets):
    data = tmp_path / "long.json"
    data.write_text(json.dumps({"train": long_samples(256), "validation": long_samples(4), "test": long_samples(4)}))
    summary = write_summary(tmp_path / "exp", demo_assets, [row("big", 8, "1e-3")])
    text = summary.read_text().replace(str(demo_assets / "data" / "wordcase.json"), str(data))
    summary.write_text(text.replace("- **Batch size:** 8", "- **Batch size:** 128"))

    def limit_memory():
        # measured: batch 128 needs > 3.0 GB of address space here, batch 32 < 2.7 GB
        resource.setrlimit(resource.RLIMIT_AS, (2_900_000_000, 2_900_000_000))

    subprocess.run(
        [str(SNAKEMAKE), "big/finetune_manifest.json", "--cores", "2", "--set-threads", "finetune=1", "--config", f"experiment={summary}"],
        cwd=REPO,
        check=True,
        capture_output=True,
        preexec_fn=limit_memory,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        timeout=900,
    )

    manifest = json.loads((tmp_path / "exp" / "big" / "finetune_manifest.json").read_text())
    assert 1 <= manifest["oom_retries"] <= 3
    assert manifest["batch_size"] < 128
    assert manifest["batch_size"] * manifest["gradient_accumulation_steps"] == 128  # the same effective batch
    log = (tmp_path / "exp" / "big" / "logs" / "finetune.log").read_text()
    assert "out of memory with batch size 128: retry 1 of 3 with batch size 64 and gradient accumulation 2" in log
    run = status_json(tmp_path / "exp")["big"]
    assert run["state"] == "completed" and run["oom_retries"] == manifest["oom_retries"]
    assert "OOM recovered" in status(tmp_path / "exp").stdout
