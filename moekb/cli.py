"""The ``moekb`` command line: validate, build, stats, schema (and more as they land).

Every command exits 0 on success and 1 when the input has problems, printed as ``path:line:
message``. Nothing ever ends in a Python traceback: an unexpected failure is reported in one
line with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from moekb.add import add_arguments, cmd_add
from moekb.build import build, papers_dir_from_env
from moekb.identifiers import source_kind
from moekb.errors import MoekbError
from moekb.graph import citation_graph, cycle_warnings, summarise
from moekb.load import load_knowledge_base, load_taxonomy, project_root
from moekb.output import write_atomic
from moekb.schema import SCHEMA_PATH, paper_schema
from moekb.workers import available_cpus


def cmd_validate(args) -> int:
    root = project_root(args.root)
    kb = load_knowledge_base(root, args.papers or papers_dir_from_env(root))
    print(f"ok: {len(kb.papers)} papers, {len(kb.surveys)} surveys, {len(kb.taxonomy.subcategory)} sub-categories, "
          "no problems")
    return 0


def positive_int(text: str) -> int:
    value = int(text) if text.isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return value


def cmd_build(args) -> int:
    kb, written, removed = build(args.root, args.papers, jobs=args.jobs or available_cpus())
    for warning in cycle_warnings(citation_graph(kb, bare=True)):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"built the generated pages in docs/ from {len(kb.papers)} papers and {len(kb.surveys)} surveys: {written} files written, {removed} removed")
    return 0


def cmd_stats(args) -> int:
    root = project_root(args.root)
    kb = load_knowledge_base(root, args.papers or papers_dir_from_env(root))
    tax = kb.taxonomy

    def table(title: str, counts: Counter, ids: list[str], width: int = 28) -> None:
        print(f"\n{title}:")
        for ident in ids:
            print(f"  {ident:<{width}} {counts[ident]:>4}")

    print(f"{len(kb.papers)} papers and {len(kb.surveys)} surveys\n\nPapers per perspective and sub-category:")
    for perspective in tax.perspectives:
        print(f"  {perspective.id:<12} {len(kb.in_perspective(perspective.id)):>4}")
        for sub in perspective.subcategories:
            print(f"    {sub.id:<28} {len(kb.in_subcategory(sub.id)):>4}")
    gaps = Counter(g for p in kb.papers for g in p.gaps)
    domains = Counter(p.domain for p in kb.papers)
    table("Papers per research gap", gaps, [g.id for g in tax.gaps])
    table("Papers per domain", domains, [d.id for d in tax.vocabularies.domains])
    years = Counter(p.year for p in kb.papers)
    table("Papers per year", years, sorted(years), width=6)
    entries = [*kb.papers, *kb.surveys]
    checked = sum(1 for p in entries if p.citations_checked)
    in_copies = sum(1 for p in entries if p.references_copy)
    primary = sum(1 for p in entries if any(source_kind(u) == "primary" for u in p.verified_from))
    with_method = sum(1 for p in kb.papers if p.method)
    edges = sum(1 for p in kb.papers for c in p.cites if c in kb.paper)
    print(f"\nSources and citations: {primary} of {len(entries)} entries list a primary page; "
          f"{checked} ({checked / len(entries):.0%}) record where their reference list was read (references_from: "
          f"{checked - in_copies} on a page, {in_copies} in a stored full-text copy); "
          f"{with_method} of {len(kb.papers)} papers have method facts; {edges} citation edges.")
    multimodal = [p for p in kb.papers if not tax.perspective[p.perspective].background]
    thin = [s.id for p in tax.perspectives for s in p.subcategories if len(kb.in_subcategory(s.id)) < args.min_per_subcategory]
    thin_gaps = [g.id for g in tax.gaps if gaps[g.id] < args.min_per_gap]
    thin_domains = [d for d, n in domains.items() if n < args.min_per_domain]
    print(f"\nCoverage: {len(multimodal)} multimodal papers (minimum {args.min_multimodal}); "
          f"sub-categories under {args.min_per_subcategory}: {', '.join(thin) or 'none'}; "
          f"gaps under {args.min_per_gap}: {', '.join(thin_gaps) or 'none'}; "
          f"domains in use under {args.min_per_domain}: {', '.join(sorted(thin_domains)) or 'none'}")
    failed = thin or thin_gaps or thin_domains or len(multimodal) < args.min_multimodal
    return 1 if args.check and failed else 0


def cmd_schema(args) -> int:
    root = project_root(args.root)
    schema = paper_schema(load_taxonomy(root))
    text = json.dumps(schema, indent=2) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        target = root / (args.output or SCHEMA_PATH)
        write_atomic(target, text.encode("utf-8"))
        print(f"wrote {target.relative_to(root) if target.is_relative_to(root) else target}")
    return 0


def cmd_synth(args) -> int:
    from moekb.synth import write_synthetic_corpus  # only this command needs the generator

    target = write_synthetic_corpus(args.out, args.n, args.seed, root=args.root, force=args.force)
    print(f"wrote {args.n} synthetic papers to {target}; build from them with "
          f"MOEKB_PAPERS={target} mkdocs build (or moekb validate --papers {target})")
    return 0


def cmd_graph(args) -> int:

    root = project_root(args.root)
    kb = load_knowledge_base(root, args.papers or papers_dir_from_env(root))
    graph = citation_graph(kb)
    summary = summarise(graph, top=args.top)
    print(f"{summary.nodes} nodes (papers), {summary.edges} edges (citations within the knowledge base)")
    print(f"{summary.components} connected components; the largest has {summary.largest_component} papers; "
          f"{summary.isolated} papers neither cite nor are cited")
    print(f"{len(summary.cycles)} citation cycles")
    print(f"\nMost cited within the knowledge base (top {args.top}):")
    for paper_id, cited_by, rank in summary.most_cited:
        print(f"  {cited_by:>4}  pagerank {rank:.4f}  {paper_id}  {kb.paper[paper_id].title}")
    if not summary.most_cited:
        print("  (no citations recorded)")
    for warning in cycle_warnings(graph):
        print(warning, file=sys.stderr)
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="moekb", description=__doc__.split("\n")[0])
    top.add_argument("--root", type=Path, default=None, help="project folder (default: found from the working directory)")
    sub = top.add_subparsers(dest="command", required=True)

    def papers_option(p):
        p.add_argument("--papers", type=Path, default=None, help="papers folder (default: <root>/papers or $MOEKB_PAPERS)")
        return p

    papers_option(sub.add_parser("validate", help="check every entry and the taxonomy; print path:line: message")).set_defaults(func=cmd_validate)
    build_parser = papers_option(sub.add_parser("build", help="validate, then write the generated pages into docs/ (nothing is written on error)"))
    build_parser.add_argument("--jobs", "-j", type=positive_int, metavar="N",
                              help="render in N worker processes (default: every CPU this process may use)")
    build_parser.set_defaults(func=cmd_build)
    stats = papers_option(sub.add_parser("stats", help="papers per perspective, sub-category, gap and year"))
    stats.add_argument("--check", action="store_true", help="exit 1 when a coverage minimum is not met")
    stats.add_argument("--min-multimodal", type=int, default=200)
    stats.add_argument("--min-per-subcategory", type=int, default=5)
    stats.add_argument("--min-per-gap", type=int, default=8)
    stats.add_argument("--min-per-domain", type=int, default=3, help="for every domain that is in use")
    stats.set_defaults(func=cmd_stats)
    schema = sub.add_parser("schema", help=f"write the paper JSON Schema (default {SCHEMA_PATH}; '-' for stdout)")
    schema.add_argument("output", nargs="?", default=None)
    schema.set_defaults(func=cmd_schema)
    graph = papers_option(sub.add_parser("graph", help="the citation graph's headline figures: nodes, edges, components, most cited"))
    graph.add_argument("--top", type=int, default=10, help="how many of the most-cited papers to list")
    graph.set_defaults(func=cmd_graph)
    add_arguments(sub.add_parser("add", help="write a new papers/<id>.yaml from BibTeX (a file, or - for stdin) "
                                             "or from flags; never overwrites")).set_defaults(func=cmd_add)
    synth = sub.add_parser("synth", help="write N synthetic but valid papers into an empty folder (never papers/), for benchmarks")
    synth.add_argument("--n", type=int, required=True, help="number of papers")
    synth.add_argument("--out", type=Path, required=True, help="folder to write <id>.yaml files into")
    synth.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same files")
    synth.add_argument("--force", action="store_true", help="replace the *.yaml files of a non-empty folder")
    synth.set_defaults(func=cmd_synth)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except MoekbError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        print(f"{len(err.problems)} problem(s) found", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `moekb stats | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    except Exception as err:  # noqa: BLE001 - the promise is: never a traceback
        print(f"moekb: internal error: {type(err).__name__}: {err} (please report it)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
