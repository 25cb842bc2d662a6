"""How long does the knowledge base take to validate, generate and build as it grows?

For the real corpus (``papers/``) and synthetic corpora of N papers (``moekb synth``; default
N = 500 and 2000), this measures, all in one run:

* validation  ``load_knowledge_base`` (parse every YAML file, check every rule), in a fresh process;
* generation  ``render_site`` (every page and export, in memory), in the same fresh process;
* full build  ``mkdocs build`` of the whole site from that corpus (``MOEKB_PAPERS=<dir>``; the hook
              validates and generates again), in a copy of the project so that the repository's
              ``docs/generated/`` is never touched;
* reference   ``mkdocs build`` of a plain mkdocs-material site (the same ``theme:`` block, its
              default search plugin, nothing else) with as many one-sentence pages as the corpus has
              papers, outside the navigation (and, with ``--nav-reference``, also all listed in it);

then the built site's largest HTML page and its search index. ``rest/reference`` sets the build
minus validation and generation (measured separately, in their own process) against the reference:
how the pages themselves compare with bare pages, once the work the reference does not do is taken
out; it is computed, not measured. Times are wall-clock seconds with
the CPU seconds of the process (and its children) in brackets: the machine is shared, so CPU time
is the steadier figure, and the ratios are given for both. ``t(N2)/t(N1)`` shows how each cost grows:
about N2/N1 when linear. An untimed build of the real corpus comes first, so that no timed build
pays for compiling Python bytecode or a cold disk cache.

    python benchmarks/site_build.py                       # real corpus, N = 500 and 2000
    python benchmarks/site_build.py --sizes 1000 --no-real
    python benchmarks/site_build.py --nav-reference       # also the reference with every page in the nav
    python benchmarks/site_build.py --quick               # N = 100 only (a smoke test)
    python benchmarks/site_build.py --repeat 5            # fastest of 5 builds each (default 3)
    python benchmarks/site_build.py --sites /dev/shm      # built sites in memory: disk noise left out
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MKDOCS = [sys.executable, "-m", "mkdocs"]
PAGE_LIMIT = 2 * 1024 * 1024  # bytes: every page must stay under this
NOT_COPIED = {"docs", "site", "build", ".venv", ".git", ".cache", "mkdocs.yml", "__pycache__"}


@dataclass
class Timing:
    wall: float
    cpu: float

    def __str__(self) -> str:
        return f"{self.wall:6.2f} ({self.cpu:5.2f})"

    def ratio(self, other: "Timing") -> str:
        return f"{self.wall / other.wall:5.2f}x ({self.cpu / other.cpu:4.2f}x)"


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_timed(command: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> Timing:
    """Run a command to completion; its wall time and the CPU time of it and its children."""
    cpu, start = children_cpu(), time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env={**os.environ, "NO_MKDOCS_2_WARNING": "1", **(env or {})},
                            capture_output=True, text=True)
    timing = Timing(time.perf_counter() - start, children_cpu() - cpu)
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stderr[-4000:]}")
    return timing


def measure_generator(papers: Path) -> dict:
    """Validation and generation, timed inside this (fresh) process; printed as JSON for the parent."""
    from moekb.build import CollectorPause, implementation_sources
    from moekb.load import load_knowledge_base
    from moekb.schema import paper_schema
    from moekb.site import render_site

    with CollectorPause():  # as moekb.build.generate and the mkdocs hook run them
        wall, cpu = time.perf_counter(), time.process_time()
        kb = load_knowledge_base(ROOT, papers)
        validated = (time.perf_counter() - wall, time.process_time() - cpu)
        wall, cpu = time.perf_counter(), time.process_time()
        files = render_site(kb, implementations=implementation_sources(ROOT, kb), schema=paper_schema(kb.taxonomy))
        generated = (time.perf_counter() - wall, time.process_time() - cpu)
    return {"papers": len(kb.papers), "validate": validated, "generate": generated, "files": len(files)}


def project_copy(target: Path) -> Path:
    """The project as mkdocs sees it, with its own docs/ (so docs/generated/ is written there)."""
    target.mkdir(parents=True)
    shutil.copy(ROOT / "mkdocs.yml", target / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", target / "docs", ignore=shutil.ignore_patterns("generated", ".generated-*"))
    for entry in ROOT.iterdir():
        if entry.name not in NOT_COPIED and not entry.name.endswith(".egg-info"):
            (target / entry.name).symlink_to(entry)
    return target


def reference_project(target: Path, pages: int, *, in_nav: bool) -> Path:
    """A plain mkdocs-material site: the project's theme block, ``pages`` one-sentence pages."""
    yaml = YAML(typ="rt")
    theme = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["theme"]
    names = [f"pages/page{i:05d}.md" for i in range(pages)]
    config = {"site_name": "reference", "site_url": "http://127.0.0.1:8000/", "theme": theme,
              "nav": [{"Home": "index.md"}, *([{"Pages": names}] if in_nav else [])]}
    (target / "docs" / "pages").mkdir(parents=True)
    with (target / "mkdocs.yml").open("w", encoding="utf-8") as handle:
        yaml.dump(config, handle)
    (target / "docs" / "index.md").write_text("# Reference\n\nA plain mkdocs-material site.\n", encoding="utf-8")
    for i, name in enumerate(names):
        (target / "docs" / name).write_text(f"# Page {i}\n\nA short page, number {i}, with one sentence.\n",
                                            encoding="utf-8")
    return target


def largest_pages(site: Path) -> tuple[int, str, int]:
    """(size of the largest HTML page, its path, how many pages exceed PAGE_LIMIT)."""
    sizes = [(p.stat().st_size, p.relative_to(site).as_posix()) for p in site.rglob("*.html")]
    size, name = max(sizes)
    return size, name, sum(1 for s, _ in sizes if s > PAGE_LIMIT)


def mb(size: int) -> str:
    return f"{size / 1024 / 1024:.2f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[500, 2000], help="synthetic corpus sizes")
    parser.add_argument("--no-real", action="store_true", help="skip the real corpus (papers/)")
    parser.add_argument("--quick", action="store_true", help="N = 100 only, no real corpus")
    parser.add_argument("--nav-reference", action="store_true",
                        help="also build the reference with every page listed in the navigation (slow)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sites", type=Path, default=None,
                        help="write the built sites here (e.g. /dev/shm, to take a slow or busy disk out of the "
                             "comparison); default: the work folder")
    parser.add_argument("--repeat", type=int, default=3,
                        help="time each build (ours and the plain reference, interleaved) this often; report the fastest")
    parser.add_argument("--keep", type=Path, default=None, help="keep the corpora and built sites in this folder")
    parser.add_argument("--measure-generator", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_generator:
        print(json.dumps(measure_generator(args.measure_generator)))
        return 0
    if args.quick:
        args.sizes, args.no_real = [100], True

    from moekb.synth import write_synthetic_corpus

    work = Path(args.keep or tempfile.mkdtemp(prefix="moekb-bench-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    project = project_copy(work / f"project-{os.getpid()}")
    corpora = [] if args.no_real else [("real", ROOT / "papers")]
    for n in args.sizes:
        corpora.append((f"synthetic {n}", write_synthetic_corpus(work / f"papers-{n}", n, args.seed, root=ROOT,
                                                                 force=True)))
    print(f"moekb site build benchmark; work folder {work}; python {sys.version.split()[0]}; "
          f"{os.cpu_count()} CPUs; load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)

    def build(papers: Path, site: Path) -> Timing:
        return run_timed([*MKDOCS, "build", "-q", "-d", str(site)], cwd=project, env={"MOEKB_PAPERS": str(papers)})

    build(corpora[0][1], work / "warm-up-site")  # bytecode and disk caches; not timed
    shutil.rmtree(work / "warm-up-site")

    rows = []
    for label, papers in corpora:
        print(f"  {label}: validation and generation ...", flush=True)
        runs = [json.loads(subprocess.run([sys.executable, __file__, "--measure-generator", str(papers)],
                                          capture_output=True, text=True, check=True).stdout)
                for _ in range(args.repeat)]
        gen = min(runs, key=lambda r: r["validate"][0] + r["generate"][0])
        validate, generate = Timing(*gen["validate"]), Timing(*gen["generate"])
        sites = Path(args.sites or work).resolve()
        site = sites / f"moekb-site-{os.getpid()}-{label.replace(' ', '-')}"
        plain_site = sites / f"moekb-reference-site-{os.getpid()}-{gen['papers']}"
        ref_dir = work / f"reference-{gen['papers']}-plain"
        shutil.rmtree(ref_dir, ignore_errors=True)
        reference_project(ref_dir, gen["papers"], in_nav=False)
        fulls, plains = [], []
        runs = {"ours": (site, fulls, lambda: build(papers, site)),
                "reference": (plain_site, plains, lambda: run_timed([*MKDOCS, "build", "-q", "-d", str(plain_site)],
                                                                    cwd=ref_dir))}
        for attempt in range(args.repeat):
            # Interleaved, so that both see the same load on a shared machine, and each goes first
            # every other time: on a disk, deleting a site slows the writes that follow it.
            print(f"  {label}: mkdocs build and plain reference, run {attempt + 1} of {args.repeat} ...", flush=True)
            for name in (("ours", "reference") if attempt % 2 == 0 else ("reference", "ours")):
                folder, timings, run = runs[name]
                shutil.rmtree(folder, ignore_errors=True)
                timings.append(run())
        full, references = min(fulls, key=lambda t: t.wall), {False: min(plains, key=lambda t: t.wall)}
        size, page, over = largest_pages(site)
        index = (site / "search" / "search_index.json").stat().st_size
        if args.nav_reference:  # slow (a minute at 2000 pages): once
            print(f"  {label}: reference with every page in the nav ...", flush=True)
            nav_dir = work / f"reference-{gen['papers']}-nav"
            shutil.rmtree(nav_dir, ignore_errors=True)
            reference_project(nav_dir, gen["papers"], in_nav=True)
            shutil.rmtree(plain_site, ignore_errors=True)
            references[True] = run_timed([*MKDOCS, "build", "-q", "-d", str(plain_site)], cwd=nav_dir)
            if not args.keep:
                shutil.rmtree(nav_dir)
        shutil.rmtree(plain_site, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(site)
            shutil.rmtree(ref_dir)
        rows.append((label, gen["papers"], validate, generate, full, references, size, page, over, index))

    print(f"\nSeconds: wall (CPU), the fastest of {args.repeat} runs. Reference: plain mkdocs-material, one bare page "
          "per paper, outside the nav"
          + ("; nav: the same with every page in the nav." if args.nav_reference else "."))
    header = (f"{'corpus':<16} {'papers':>6} | {'validate':>14} {'generate':>14} {'val+gen':>14} | "
              f"{'mkdocs build':>14} {'reference':>14} {'build/reference':>17} {'rest/reference':>15}"
              + (f" | {'ref. in nav':>14} {'build/ref. nav':>17}" if args.nav_reference else "")
              + f" | {'largest page':>12} {'pages>2MB':>9} {'search index':>12}")
    print(header)
    print("-" * len(header))
    for label, n, validate, generate, full, refs, size, page, over, index in rows:
        both = Timing(validate.wall + generate.wall, validate.cpu + generate.cpu)
        rest = Timing(full.wall - both.wall, full.cpu - both.cpu)
        line = (f"{label:<16} {n:>6} | {validate!s:>14} {generate!s:>14} {both!s:>14} | "
                f"{full!s:>14} {refs[False]!s:>14} {full.ratio(refs[False]):>17} {rest.ratio(refs[False]):>15}")
        if args.nav_reference:
            line += f" | {refs[True]!s:>14} {full.ratio(refs[True]):>17}"
        print(line + f" | {mb(size):>12} {over:>9} {mb(index):>12}")
    print("\nLargest page per corpus: " + "; ".join(f"{label}: {page}" for label, *_, page, _, _ in rows))
    synthetic = [row for row in rows if row[0].startswith("synthetic")]
    if len(synthetic) >= 2:
        (small, n1, v1, g1, f1, r1, *_), (big, n2, v2, g2, f2, r2, *_) = synthetic[0], synthetic[-1]
        print(f"\nGrowth from {n1} to {n2} papers (x{n2 / n1:.1f} papers; linear cost grows about as much), "
              f"wall (CPU): validate {v2.ratio(v1)}, generate {g2.ratio(g1)}, mkdocs build {f2.ratio(f1)}, "
              f"reference {r2[False].ratio(r1[False])}")
    if not args.keep:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
