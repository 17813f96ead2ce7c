"""Named kill (and hold) points for crash tests.

``SNAKETUNE_FAULT=<entry>[,<entry>…]`` with an entry ``<point>[/<run_dir>][@<file>]``:
- ``<point>``: the process that reaches the point SIGKILLs its own process group there: what a
  power cut, an OOM kill or a ``kill -9`` of the whole job leaves behind, at a moment the test
  chooses instead of one a timer happens to hit. Under a local snakemake the group includes the
  driver (Snakemake starts local jobs in its own process group), so the rerun starts from
  exactly that state;
- ``/<run_dir>``: only in the jobs of that run;
- ``@<file>``: hold there instead (poll until ``<file>`` exists, then go on), so that a test
  decides how long a job lasts instead of the machine's speed.
Never set in normal use.

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
import time

ENV = "SNAKETUNE_FAULT"


def reached(point: str, run_dir: str = "") -> None:
    """Kill this process group, or hold, if ``SNAKETUNE_FAULT`` names ``point`` (for ``run_dir``)."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    for entry in wanted.split(","):
        where, _, release = entry.partition("@")
        name, _, scope = where.partition("/")
        if name != point or (scope and scope != run_dir):
            continue
        if release:
            print(f"snaketune: fault injection: holding at {point} until {release} exists", flush=True)
            while not os.path.exists(release):
                time.sleep(0.2)
            return
        print(f"snaketune: fault injection: SIGKILL of the process group at {point}", flush=True)
        os.killpg(os.getpgrp(), signal.SIGKILL)
