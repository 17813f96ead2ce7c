"""`make crash-sweep`: a kill at every job start and end (and at every save and record in
between) while the experiment is changed, each compared with the uninterrupted result
(tests/crash.py). About 25 minutes on 2 cores; not part of `make test`, which runs four of them
(test_crash_e2e.py)."""

from __future__ import annotations

import pytest
from crash import assert_converged

pytestmark = [pytest.mark.e2e, pytest.mark.sweep]

JOB_BOUNDS = [f"{job}:{bound}" for job in ("scaffold", "evaluate", "report") for bound in ("start", "end")]
TRAINING = [
    "finetune:start",
    "finetune:before-training",
    "recipe:step-3",
    "recipe:after-epoch-0",
    "recipe:after-epoch-1",
    "finetune:before-manifest",
    "finetune:after-manifest",
    "finetune:end",
]
EVALUATION = ["evaluate:after-log", "evaluate:after-sidecar"]
POINTS = {
    "epochs raised": JOB_BOUNDS + TRAINING + ["recipe:after-epoch-2"] + EVALUATION,
    "row added": JOB_BOUNDS + TRAINING + EVALUATION,
    "max tokens changed": JOB_BOUNDS + EVALUATION,
}


@pytest.mark.parametrize("change, point", [(change, point) for change, points in POINTS.items() for point in points])
def test_every_kill_point_converges(crash_experiment, change, point):
    assert_converged(crash_experiment, change, point)
