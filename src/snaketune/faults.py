"""Named kill (and hold) points for crash tests.

``SNAKETUNE_FAULT=<entry>[,<entry>…]`` with an entry ``<point>[/<run_dir>][@<file>]``:
- ``<point>``: the process that reaches the point SIGKILLs its own process group there: what a
  power cut, an OOM kill or a ``kill -9`` of the whole job leaves behind, at a moment the test
  chooses instead of one a timer happens to hit. Under a local snakemake the group includes the
  driver (Snakemake starts local jobs in its own process group), so the rerun starts from
  exactly that state;
- ``/<run_dir>``: only in the jobs of that run;
- ``@<file>``: hold there instead (poll until ``<file>`` exists, then go on), so that a test
  decides how long a job lasts instead of the machine's speed. A training told to stop
  (SIGTERM/SIGINT: :func:`release_holds`) also goes on, as if the step it holds in had just
  ended: a hold that is never released stands for a long step that a preemption or a time
  limit interrupts.
The training runs in a process group of its own (the job wrapper forwards signals to it), so
a kill there also kills the wrapper's group (``SNAKETUNE_JOB_PGID``, set by the wrapper).
Never set in normal use.

Points (``tests/test_crash_e2e.py`` and ``make crash-sweep`` use them):
- ``<command>:start`` / ``<command>:end`` for every ``python -m snaketune <command>`` (the jobs:
  ``scaffold``, ``finetune``, ``evaluate``, ``report``): the job has started / has done its work
  and not exited;
- ``finetune:before-training``: the training lock is held, nothing trained yet;
- ``recipe:batch-<N>.<k>``: the k-th batch of optimizer step N has been through backward,
  step N is not taken yet (k < gradient accumulation: mid-accumulation);
- ``recipe:step-<N>``: optimizer step N is done, logged, and saved if a step state was due;
- ``recipe:step-state-written``: a step state's temporary file is written and synced, not yet
  renamed into place;
- ``recipe:after-epoch-<N>``: epoch N's checkpoint and recipe state are saved;
- ``finetune:before-manifest`` / ``finetune:after-manifest``: every epoch is saved;
  the manifest is not written yet / is written, the job has not exited;
- ``evaluate:after-log`` / ``evaluate:after-sidecar``: the ``.eval`` log is renamed into place,
  its sidecar not yet written / written, the job has not exited.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

ENV = "SNAKETUNE_FAULT"
# The job wrapper's process group, in the environment of the training it starts.
JOB_GROUP_ENV = "SNAKETUNE_JOB_PGID"
_released = False


def release_holds() -> None:
    """End every hold of this process now (a training that was told to stop); safe in a signal handler."""
    global _released
    _released = True


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
            while not os.path.exists(release) and not _released:
                time.sleep(0.2)
            return
        print(f"snaketune: fault injection: SIGKILL of the process group at {point}", flush=True)
        job_group = int(os.environ.get(JOB_GROUP_ENV) or 0)
        if job_group and job_group != os.getpgrp():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job_group, signal.SIGKILL)
        os.killpg(os.getpgrp(), signal.SIGKILL)
