"""The demo model build is deterministic: the same weights every build, so the same scores."""

from __future__ import annotations

import hashlib

import pytest

from snaketune.demo import MODEL_RELPATH, build_demo_assets


def weights_digest(experiment_dir):
    return hashlib.sha256((experiment_dir / MODEL_RELPATH / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.e2e
def test_a_second_build_gives_identical_weights(tmp_path, demo_assets):
    build_demo_assets(tmp_path)
    assert weights_digest(tmp_path) == weights_digest(demo_assets)
