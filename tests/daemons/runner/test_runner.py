"""The runner does not start a job the queue gave up on (it waited past the queue's allowance:
the runner was down, or waited for the disk); the queue answers its messages with another job,
and a container started for the old one too would answer them twice."""

from __future__ import annotations

import json
import os

import pytest


def job_files(s) -> list[str]:
    d = s.state / "spool" / "runner" / "new"
    return sorted(os.listdir(d)) if d.exists() else []


@pytest.mark.podman
def test_a_job_the_queue_gave_up_is_not_started(system):
    s = system
    s.stop("runner")
    s.send("main", "hello")
    s.wait_for(lambda: job_files(s), 30, what="the job handed to the runner")
    with s.db() as con:
        (job,) = con.execute("select id from job where status = 'queued'").fetchone()
        # what the queue's give-up leaves (queue/turns.py: a job the runner never started)
        con.execute("update job set status = 'failed', error = 'the runner never started it' where id = ?", (job,))
    s.start("runner")
    s.barrier()  # the next message goes through the whole pipeline, a container and all
    started = [e for e in s.journal.of("runner", JOB=str(job)) if "not started" not in e["MESSAGE"]]
    assert started == [], [e["MESSAGE"] for e in started]
    assert [e for e in s.journal.of("runner", JOB=str(job))
            if "not started: the queue gave the job up (failed)" in e["MESSAGE"]]
    cur = s.state / "spool" / "runner" / "cur"  # the barrier's job may still be there (its agent warm)
    assert job_files(s) == [] and all(json.loads((cur / f).read_text())["body"]["job"] != job for f in os.listdir(cur))
    with s.db() as con:
        assert con.execute("select status from job where id = ?", (job,)).fetchone()[0] == "failed"
