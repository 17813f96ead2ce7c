"""Kill the whole workflow at named points while the experiment is being changed; `--unlock` +
rerun must reach exactly the uninterrupted result (tests/crash.py). The full sweep over every
job start and end is `make crash-sweep` (tests/test_crash_sweep.py)."""

from __future__ import annotations

import pytest
from crash import assert_converged

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    "change, point",
    [
        # the scaffold jobs have rendered the new epochs, the first training has just started:
        # the state that once skipped a training for good
        ("epochs raised", "finetune:before-training"),
        # the retraining has saved epoch 1 of 3: the resumed result must be bit-identical
        ("epochs raised", "recipe:after-epoch-1"),
        # a re-evaluation's log is in place, its sidecar record is not
        ("max tokens changed", "evaluate:after-log"),
        # the new run's manifest is written, its job has not ended
        ("row added", "finetune:after-manifest"),
    ],
)
def test_interrupted_change_converges_to_the_uninterrupted_result(crash_experiment, change, point):
    assert_converged(crash_experiment, change, point)
