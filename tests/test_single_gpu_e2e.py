"""profiles/single-gpu: on a machine with one GPU, trainings run one at a time, evaluations beside them."""

from __future__ import annotations

import base64
import json
import re

import pytest
from e2e_helpers import row, snakemake, write_summary

pytestmark = pytest.mark.e2e

PROFILE = ("--profile", "profiles/single-gpu")


def job_interval(experiment, output: str) -> tuple[float, float]:
    """When Snakemake ran the job that made ``output`` (its own record in .snakemake/metadata)."""
    record = json.loads((experiment / ".snakemake" / "metadata" / base64.urlsafe_b64encode(output.encode()).decode()).read_text())
    return record["starttime"], record["endtime"]


def planned_resources(dry_run: str) -> dict[str, list[dict[str, str]]]:
    """Rule -> the resources of each of its jobs, from a dry run's job listing."""
    jobs: dict[str, list[dict[str, str]]] = {}
    rule = None
    for line in dry_run.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line):
            rule = match.group(1)
        elif rule and line.strip().startswith("resources:"):
            values = line.split(":", 1)[1].split(",")
            jobs.setdefault(rule, []).append(dict(value.strip().split("=", 1) for value in values))
            rule = None
    return jobs


def test_trainings_hold_the_gpu_and_evaluations_do_not(tmp_path, demo_assets):
    summary = write_summary(tmp_path, demo_assets, [row("fast", 16, "1e-3"), row("slow", 16, "1e-4"), row("base", "-", "-", "Control")])
    resources = planned_resources(snakemake(summary, *PROFILE, "-n").stdout)
    assert [job["gpu"] for job in resources["finetune"]] == ["1", "1"]
    assert [job["gpu"] for job in resources["evaluate"]] == ["0", "0", "0"]


def test_trainings_run_one_at_a_time(tmp_path, demo_assets):
    summary = write_summary(tmp_path, demo_assets, [row("fast", 16, "1e-3"), row("slow", 16, "1e-4")])
    # 8 cores: without the profile the two trainings (4 threads each) would run at once; the demo
    # trains on the CPU (GPUs: 0) and the profile still gives each training the one GPU token
    snakemake(summary, *PROFILE, "--cores", "8", "lr1e-3/finetune_manifest.json", "lr1e-4/finetune_manifest.json")
    first, second = sorted(job_interval(tmp_path, f"{run}/finetune_manifest.json") for run in ("lr1e-3", "lr1e-4"))
    assert first[1] <= second[0], f"trainings overlapped: {first} and {second}"
