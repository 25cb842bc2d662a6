"""Rendering in worker processes gives the same files, in the same order, as rendering here.

The test process itself may run other threads (the browser tests' server), in which case workers
rightly refuse to fork; so the checks that need workers run in a fresh interpreter, which asserts
that it could fork.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from moekb import workers
from moekb.synth import write_synthetic_corpus

ROOT = Path(__file__).resolve().parents[2]


def pid_task() -> dict:
    return {"pid": os.getpid()}


def in_fresh_interpreter(code: str) -> dict:
    """Run ``code`` (which prints one JSON value) in a new single-threaded Python."""
    prologue = "import json, os\nfrom moekb import workers\nassert workers.can_fork(), 'a fresh interpreter must be able to fork'\n"
    result = subprocess.run([sys.executable, "-c", prologue + textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.skipif(sys.platform != "linux", reason="workers fork on Linux only (elsewhere the tasks run in-process)")
def test_tasks_run_in_other_processes_and_come_back_in_order():
    out = in_fresh_interpreter("""
        pid = lambda: {"pid": os.getpid()}
        results = list(workers.run_tasks([pid, lambda: {"n": 1}, lambda: {"n": 2}, pid], jobs=2))
        print(json.dumps({"parent": os.getpid(), "results": results}))
    """)
    results = out["results"]
    assert [r.get("n") for r in results] == [None, 1, 2, None]
    assert out["parent"] not in {results[0]["pid"], results[3]["pid"]}


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


@pytest.mark.skipif(sys.platform != "linux", reason="workers fork on Linux only (elsewhere the tasks run in-process)")
@pytest.mark.parametrize("corpus", ["real", "synthetic"])
def test_workers_render_the_same_site(corpus, tmp_path):
    papers = None
    if corpus == "synthetic":
        papers = write_synthetic_corpus(tmp_path / "papers", 250, seed=3, root=ROOT)
    out = in_fresh_interpreter(f"""
        from pathlib import Path
        from moekb.load import load_knowledge_base
        from moekb.site import render_site
        papers = {str(papers) if papers else None!r}
        kb = load_knowledge_base(Path({str(ROOT)!r}), Path(papers) if papers else None)
        here = render_site(kb, jobs=1)
        in_workers = render_site(kb, jobs=3)
        pages = sum(name.startswith("papers/") and name.endswith("/index.md") for name in here)
        print(json.dumps({{"same_order": list(in_workers) == list(here), "same": in_workers == here, "pages": pages,
                          "entries": len(kb.papers) + len(kb.surveys)}}))
    """)
    assert out["same_order"] and out["same"]
    assert out["pages"] == out["entries"] + 1  # every entry's page, and the list of them all


@pytest.mark.skipif(sys.platform != "linux", reason="workers fork on Linux only (elsewhere the tasks run in-process)")
def test_a_task_failing_in_a_worker_fails_the_run_here():
    out = in_fresh_interpreter("""
        def failing():
            raise ValueError("a rendering bug")
        try:
            list(workers.run_tasks([lambda: {"a": 1}, failing, lambda: {"b": 2}], jobs=2))
        except ValueError as err:
            print(json.dumps({"raised": str(err), "tasks_left": len(workers._TASKS)}))
    """)
    assert out == {"raised": "a rendering bug", "tasks_left": 0}


@pytest.mark.skipif(sys.platform != "linux", reason="workers fork on Linux only (elsewhere the tasks run in-process)")
def test_a_build_failing_in_a_worker_leaves_the_previous_output(make_project):
    project = make_project({"lovelace2024test.yaml": (ROOT / "tests/kb/bad_entries/cites-self/lovelace2024test.yaml")
                            .read_text().replace("cites: [lovelace2024test]", "cites: []")})
    out = in_fresh_interpreter(f"""
        from pathlib import Path
        from moekb.build import build
        from moekb.site import SiteRenderer
        project = Path({str(project)!r})
        build(project, jobs=2)
        before = {{str(p): p.read_bytes() for p in (project / "docs").rglob("*") if p.is_file()}}
        paper = project / "papers" / "lovelace2024test.yaml"
        paper.write_text(paper.read_text().replace("A Test Entry", "Renamed"))
        def broken(self, paper):
            raise RuntimeError("a rendering bug in a worker")
        SiteRenderer.paper_page = broken  # inherited by the forked workers
        try:
            build(project, jobs=2)
        except RuntimeError as err:
            raised = str(err)
        after = {{str(p): p.read_bytes() for p in (project / "docs").rglob("*") if p.is_file()}}
        print(json.dumps({{"raised": raised, "unchanged": after == before, "files": len(before)}}))
    """)
    assert out["raised"] == "a rendering bug in a worker"
    assert out["unchanged"] and out["files"] > 0
