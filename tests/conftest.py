"""Shared fixtures. The tiny demo model is built once per test session (it takes ~a minute)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


@pytest.fixture(scope="session")
def demo_assets(tmp_path_factory) -> Path:
    """A folder holding the demo's built model (models/) and data (data/)."""
    from snaketune.demo import build_demo_assets

    cache = Path(os.environ.get("SNAKETUNE_TEST_ASSETS") or tmp_path_factory.mktemp("demo-assets")).absolute()
    build_demo_assets(cache)
    return cache


@pytest.fixture
def summary_file(tmp_path):
    """Write a summary text into a fresh experiment directory; returns its path."""

    def write(text: str, name: str = "experiment_summary.md") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture(scope="session")
def slurm_sandbox() -> Iterator:
    """The local Slurm cluster (scripts/slurm-sandbox), started once per session and stopped at its end."""
    from slurm_helpers import sandbox_session

    yield from sandbox_session()


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory, demo_assets):
    """The uninterrupted training of each :class:`exactness.Settings`, made once per session."""
    from exactness import train

    made = {}

    def reference(settings):
        if settings not in made:
            made[settings] = train(tmp_path_factory.mktemp("uninterrupted"), demo_assets, settings)
        return made[settings]

    return reference


@pytest.fixture(scope="session")
def crash_experiment(tmp_path_factory, demo_assets):
    """A small finished experiment to interrupt and change (tests/crash.py), made once per session."""
    from crash import CrashExperiment

    return CrashExperiment(tmp_path_factory.mktemp("crash"), demo_assets)
