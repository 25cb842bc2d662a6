"""Rendering in worker processes gives the same files, in the same order, as rendering here."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from moekb import workers
from moekb.load import load_knowledge_base
from moekb.site import render_site
from moekb.synth import write_synthetic_corpus

ROOT = Path(__file__).resolve().parents[2]


def pid_task() -> dict:
    return {"pid": os.getpid()}


@pytest.mark.skipif(not workers.can_fork(), reason="forked workers need Linux and a single-threaded process")
def test_tasks_run_in_other_processes_and_come_back_in_order():
    results = list(workers.run_tasks([pid_task, lambda: {"n": 1}, lambda: {"n": 2}, pid_task], jobs=2))
    assert [r.get("n") for r in results] == [None, 1, 2, None]
    assert {results[0]["pid"], results[3]["pid"]} != {os.getpid()}


def test_one_job_or_a_threaded_process_runs_the_tasks_here():
    assert list(workers.run_tasks([pid_task], jobs=1)) == [{"pid": os.getpid()}]
    release = threading.Event()
    thread = threading.Thread(target=release.wait)
    thread.start()
    try:  # a second thread (as under `mkdocs serve`): forking could deadlock, so no workers
        assert not workers.can_fork()
        assert list(workers.run_tasks([pid_task, pid_task], jobs=2)) == [{"pid": os.getpid()}] * 2
    finally:
        release.set()
        thread.join()


@pytest.mark.parametrize("corpus", ["real", "synthetic"])
def test_workers_render_the_same_site(corpus, tmp_path):
    papers = None
    if corpus == "synthetic":
        papers = tmp_path / "papers"
        write_synthetic_corpus(papers, 250, seed=3, root=ROOT)
    kb = load_knowledge_base(ROOT, papers)
    here = render_site(kb, jobs=1)
    in_workers = render_site(kb, jobs=3)
    assert list(in_workers) == list(here)  # same files, same order
    assert in_workers == here
    assert sum(name.startswith("papers/") and name.endswith("/index.md") for name in here) == len(kb.papers) + len(kb.surveys) + 1  # + the list
