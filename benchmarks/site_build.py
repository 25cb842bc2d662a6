"""How long the site takes to generate and build as the knowledge base grows, against plain Material.

For the real corpus and synthetic corpora of N papers (``moekb synth``), in copies of the project so
that the repository's docs/ is never touched, this prints:

* validate + generate  ``moekb build`` (parse and check every entry, write every generated page), in a
                       fresh process;
* mkdocs               ``mkdocs build`` of the whole site (the hook generates again first);
* zensical             ``zensical build`` of the same generated pages;
* reference            ``mkdocs build`` of a plain mkdocs-material site with the same ``theme:`` block,
                       its search plugin and N one-sentence pages outside the navigation;

each the fastest of ``--repeat`` runs, as wall seconds and, in brackets, CPU seconds of the process
and its children (the steadier figure on a shared machine); the ratio is mkdocs / reference. Then
the weight of one paper page as a browser loads it (its HTML, the CSS and JavaScript it references)
against a page of the plain site.

    python benchmarks/site_build.py                  # real corpus, N = 500 and 2000
    python benchmarks/site_build.py --sizes 200 --repeat 1
    python benchmarks/site_build.py --sites /dev/shm # built sites in memory: disk noise left out
    python benchmarks/site_build.py --sizes 2000 --decompose   # where the mkdocs time goes

``--decompose`` also builds two copies of our site with mkdocs in which only the paper pages differ:
every paper page cut down to its head (title, byline, facts table) and summary, and every paper page
replaced by a one-sentence page like the plain site's. With the paper pages bare, what remains over
the plain build is the rest of our site (taxonomy, gap, graph and list pages, the code and notebook
pages, our Markdown extensions and navigation); the steps between show what each paper page's content
costs. (The hook leaves the rewritten pages alone: their inputs have not changed.)
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


def timed(command: list[str], cwd: Path, env: dict) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def fastest(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return min(runs)


def project_copy(folder: Path) -> Path:
    from moekb.site import GENERATED_FOLDERS

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "mkdocs.yml", folder / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", folder / "docs", ignore=shutil.ignore_patterns(*GENERATED_FOLDERS))
    for name in ("taxonomy", "moekb", "notebooks", "reference_impls", "papers"):
        (folder / name).symlink_to(ROOT / name)
    return folder


def reference_site(folder: Path, n: int) -> Path:
    """A plain mkdocs-material site: our theme block, the search plugin, n bare pages outside the nav."""
    config = YAML(typ="safe").load((ROOT / "mkdocs.yml").read_text(encoding="utf-8").replace("!ENV", "#"))
    (folder / "docs" / "pages").mkdir(parents=True, exist_ok=True)
    (folder / "docs" / "index.md").write_text("# Home\n\nA plain site.\n")
    for i in range(n):
        (folder / "docs" / "pages" / f"page{i}.md").write_text(f"# Page {i}\n\nOne sentence of text, page {i}.\n")
    yaml = YAML()
    with (folder / "mkdocs.yml").open("w") as handle:
        yaml.dump({"site_name": "reference", "theme": config["theme"], "plugins": ["search"],
                   "nav": [{"Home": "index.md"}], "validation": {"omitted_files": "ignore"}}, handle)
    return folder


def page_weight(site: Path, page: Path) -> int:
    """Bytes of the page's HTML plus the local CSS and JavaScript files it references."""
    html = page.read_text(encoding="utf-8")
    total = len(html.encode("utf-8"))
    for ref in set(re.findall(r'(?:href|src)="([^"#?]+\.(?:css|js))', html)):
        target = (page.parent / ref).resolve()
        if target.is_file():
            total += target.stat().st_size
    return total


def rewrite_paper_pages(folder: Path, keep: str) -> None:
    """Cut every paper page of a built copy of our project down to ``keep``: "facts" (title, byline,
    facts table, summary) or "bare" (one sentence, as the plain site's pages)."""
    for page in (folder / "docs" / "papers").glob("*/index.md"):
        text = page.read_text(encoding="utf-8")
        front_end = text.index("\n---\n", 4) + len("\n---\n")
        if keep == "bare":
            page.write_text(text[:front_end] + "\n# Page\n\nOne sentence of text.\n", encoding="utf-8")
            continue
        summary = re.search(r"## Summary\n\n<p>.*?</p>\n", text, re.S)
        if "</table>" not in text or not summary:
            raise SystemExit(f"{page}: no facts table or summary where the paper template puts them")
        page.write_text(text[: text.index("</table>") + len("</table>")] + "\n\n" + summary.group(0), encoding="utf-8")


def decompose(label: str, ours: Path, plain: float, full: float, repeat: int, env: dict) -> str:
    times = {}
    for keep in ("bare", "facts"):
        variant = ours.parent / f"ours-{keep}"
        shutil.copytree(ours, variant, symlinks=True, ignore=shutil.ignore_patterns("site"))
        rewrite_paper_pages(variant, keep)
        times[keep] = fastest([timed([str(BIN / "mkdocs"), "build", "-q"], variant, env) for _ in range(repeat)])[0]
    return (f"| {label} | {plain:.2f} | {times['bare']:.2f} ({times['bare'] / plain:.2f}x) | "
            f"{times['facts']:.2f} ({times['facts'] / plain:.2f}x) | {full:.2f} ({full / plain:.2f}x) |")


def measure(label: str, papers: Path | None, n: int, repeat: int, sites: Path, decompositions: list) -> None:
    work = Path(tempfile.mkdtemp(prefix="moekb-bench-", dir=sites))
    env = {**ENV, **({"MOEKB_PAPERS": str(papers)} if papers else {})}
    ours = project_copy(work / "ours")
    reference = reference_site(work / "reference", n)
    generate = fastest([timed([str(BIN / "moekb"), "build"], ours, env) for _ in range(repeat)])
    mkdocs, plain = [], []
    for i in range(repeat):  # taking turns, each site deleted just before its own build
        for runs, folder in ((mkdocs, ours), (plain, reference))[:: 1 if i % 2 == 0 else -1]:
            shutil.rmtree(folder / "site", ignore_errors=True)
            runs.append(timed([str(BIN / "mkdocs"), "build", "-q"], folder, env))
    zensical = fastest([timed([str(BIN / "zensical"), "build", "-f", "mkdocs.yml"], ours, env) for _ in range(repeat)])
    mkdocs, plain = fastest(mkdocs), fastest(plain)
    paper_page = next(p for p in sorted((ours / "site" / "papers").glob("*/index.html")))
    weight, reference_weight = page_weight(ours / "site", paper_page), page_weight(reference / "site", reference / "site" / "pages" / "page0" / "index.html")
    print(f"| {label} | {generate[0]:.2f} ({generate[1]:.2f}) | {mkdocs[0]:.2f} ({mkdocs[1]:.2f}) | "
          f"{zensical[0]:.2f} ({zensical[1]:.2f}) | {plain[0]:.2f} ({plain[1]:.2f}) | "
          f"{mkdocs[0] / plain[0]:.2f}x ({mkdocs[1] / plain[1]:.2f}x) | {weight / 1024:.0f} KB / {reference_weight / 1024:.0f} KB "
          f"= {weight / reference_weight:.2f}x |", flush=True)
    if decompositions is not None:  # measured now, printed after the main table
        decompositions.append(decompose(label, ours, plain[0], mkdocs[0], repeat, env))
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[500, 2000])
    parser.add_argument("--no-real", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sites", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--decompose", action="store_true",
                        help="also build our site with the paper pages cut down (where the mkdocs time goes)")
    args = parser.parse_args()
    from moekb.load import load_knowledge_base
    from moekb.synth import write_synthetic_corpus

    print("| papers | validate + generate | mkdocs | zensical | plain Material | mkdocs / plain | paper page weight (ours / plain) |")
    print("|---|---|---|---|---|---|---|")
    decompositions = [] if args.decompose else None
    corpora = []
    if not args.no_real:
        n = len(load_knowledge_base(ROOT).papers)
        measure(f"{n} (real)", None, n, args.repeat, args.sites, decompositions)
    for n in args.sizes:
        corpora.append(write_synthetic_corpus(Path(tempfile.mkdtemp(prefix=f"moekb-synth-{n}-")), n, root=ROOT, force=True))
        measure(str(n), corpora[-1], n, args.repeat, args.sites, decompositions)
    if decompositions:
        print("\nmkdocs build, wall seconds (x plain): our site with every paper page bare, with paper pages of facts and "
              "summary only, and whole\n")
        print("| papers | plain Material | ours, paper pages bare | ours, facts and summary only | ours, whole |")
        print("|---|---|---|---|---|")
        print("\n".join(decompositions))
    for corpus in corpora:
        shutil.rmtree(corpus, ignore_errors=True)


if __name__ == "__main__":
    main()
