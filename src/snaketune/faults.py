"""Named kill points for crash tests.

``SNAKETUNE_FAULT=<point>[,<point>…]`` makes the process that reaches one of the named points
SIGKILL its own process group there: what a power cut, an OOM kill or a ``kill -9`` of the
whole job leaves behind, at a moment the test chooses instead of one a timer happens to hit.
Under a local snakemake the group includes the driver (Snakemake starts local jobs in its own
process group), so the rerun starts from exactly that state. Never set in normal use.

Points (``tests/test_crash_e2e.py`` and ``make crash-sweep`` use them):
- ``<command>:start`` / ``<command>:end`` for every ``python -m snaketune <command>`` (the jobs:
  ``scaffold``, ``finetune``, ``evaluate``, ``report``): the job has started / has done its work
  and not exited;
- ``finetune:before-training``: the training lock is held, nothing trained yet;
- ``recipe:step-<N>``: optimizer step N is done and logged (mid-epoch);
- ``recipe:after-epoch-<N>``: epoch N's checkpoint and recipe state are saved;
- ``finetune:before-manifest`` / ``finetune:after-manifest``: every epoch is saved;
  the manifest is not written yet / is written, the job has not exited;
- ``evaluate:after-log`` / ``evaluate:after-sidecar``: the ``.eval`` log is renamed into place,
  its sidecar not yet written / written, the job has not exited.
"""

from __future__ import annotations

import os
import signal

ENV = "SNAKETUNE_FAULT"


def reached(point: str) -> None:
    """Kill this process group if ``SNAKETUNE_FAULT`` names ``point``."""
    wanted = os.environ.get(ENV)
    if wanted and point in wanted.split(","):
        print(f"snaketune: fault injection: SIGKILL of the process group at {point}", flush=True)
        os.killpg(os.getpgrp(), signal.SIGKILL)
