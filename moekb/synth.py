"""A synthetic knowledge base: N valid paper entries for measuring how the build scales.

``moekb synth --n 2000 --out build/synth-2000`` writes entries shaped like the real ones (titles of
6-16 words, 2-12 authors, three-sentence summaries, 0-15 citations to earlier entries so the
citation graph is acyclic, arXiv identifiers unique and consistent with the year) and, once N is at
least the size of the largest vocabulary, uses every perspective, sub-category, modality, research
gap, venue and entry kind of the taxonomy. The same seed gives the same bytes. The entries are
made up, so they never go into the project's ``papers/``: the refusal is here, not left to care.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import textwrap
from pathlib import Path
from typing import Callable, TypeVar

from moekb.errors import MoekbError, Problem
from moekb.identifiers import normalized_title, unique
from moekb.load import load_taxonomy, project_root
from moekb.model import Taxonomy
from moekb.output import write_atomic

T = TypeVar("T")

FIRST_YEAR, LAST_YEAR = 2010, 2025  # fixed, not today's year, so a seed gives the same corpus on any day
MAX_CITES = 15

GIVEN = ["Wei", "Li", "Anna", "José", "Hannah", "Rahul", "Yuki", "Olga", "Kwame", "Sofia", "Mehmet", "Chloé",
         "Arjun", "Mei", "Lukas", "Fatima", "Dmitri", "Aisha", "Pedro", "Ingrid", "Tomás", "Nadia", "Jun", "Priya",
         "Emeka", "Sara", "Hiroshi", "Zoë", "Kai", "Leila", "Bjørn", "Ana", "Minh", "Grace", "Omar", "Elena"]
FAMILY = ["Zhang", "Wang", "Müller", "Smith", "Kumar", "Tanaka", "Ivanova", "Mensah", "García", "Yilmaz", "Dubois",
          "Patel", "Chen", "Schmidt", "Haddad", "Petrov", "Okafor", "Santos", "Larsen", "Nguyen", "Kowalski",
          "Rossi", "Kim", "Sato", "Hernández", "Novak", "Ali", "Johansson", "Liu", "Park", "Costa", "Fischer",
          "Ahmed", "O'Brien", "Lee", "Moreau", "Singh", "Yang", "Silva", "Andersen", "Huang", "Jensen"]
PREFIXES = ["Flex", "Omni", "Uni", "Sparse", "Dyn", "Hyper", "Meta", "Fuse", "Route", "Gate", "Tri", "Poly",
            "Deep", "Lite", "Mix", "Cross", "Multi", "Soft", "Any", "Pan"]
SUFFIXES = ["MoE", "Former", "Expert", "Mixer", "Router", "LLaVA", "CLIP", "Net", "Fusion", "Gate", "Bridge"]
ADJECTIVES = ["sparse", "multimodal", "efficient", "scalable", "robust", "adaptive", "modality-aware", "dynamic",
              "hierarchical", "conditional", "unified", "lightweight", "balanced", "continual", "interpretable",
              "token-level", "cross-modal", "heterogeneous", "frozen", "parameter-efficient", "load-balanced"]
NOUNS = ["experts", "routing", "mixture-of-experts", "vision-language models", "representations", "adapters",
         "transformers", "gating networks", "alignment", "fusion", "pre-training", "instruction tuning",
         "speech recognition", "retrieval", "video understanding", "medical imaging", "point clouds",
         "sensor streams", "graph reasoning", "molecule generation", "tokens", "capacity", "load balancing"]
CONNECTORS = ["for", "with", "via", "under", "beyond", "through", "across", "towards", "without"]
VERBS = ["routes", "assigns", "mixes", "decouples", "aligns", "sparsifies", "balances", "distils", "adapts",
         "prunes", "upcycles", "specialises", "calibrates", "merges"]
RESULTS = ["matches a dense baseline at a fraction of the compute", "improves accuracy on six benchmarks",
           "halves the training cost", "stays stable when a modality is missing", "reduces expert collapse",
           "transfers to unseen tasks without retraining", "keeps the number of active parameters constant",
           "outperforms prior sparse models on retrieval", "lowers inference latency on a single device"]


def covering(rng: random.Random, n: int, values: list[T], draw: Callable[[], T]) -> list[T]:
    """``n`` draws in which every one of ``values`` occurs at least once (when ``n`` allows)."""
    result = [draw() for _ in range(n)]
    for position, value in zip(rng.sample(range(n), min(n, len(values))), values):
        result[position] = value
    return result


def scalar(text: str) -> str:
    """A YAML double-quoted scalar: JSON's string syntax is a subset of it."""
    return json.dumps(text, ensure_ascii=False)


def folded(text: str, indent: str = "  ") -> str:
    """A ``>-`` block scalar, wrapped the way contributors write long prose."""
    return ">-\n" + "\n".join(indent + line for line in textwrap.wrap(text, 96))


class CorpusWriter:
    """Draws one corpus; every random choice goes through ``self.rng`` so a seed fixes the result."""

    def __init__(self, taxonomy: Taxonomy, seed: int):
        self.tax = taxonomy
        self.rng = random.Random(seed)
        self.titles: set[str] = set()
        self.ids: set[str] = set()
        self.arxiv_numbers: dict[str, int] = {}

    def words(self, choices: list[str], k: int) -> list[str]:
        return [self.rng.choice(choices) for _ in range(k)]

    def acronym(self) -> str:
        return self.rng.choice(PREFIXES) + self.rng.choice(SUFFIXES)

    def title(self, acronym: str) -> str:
        """6-16 words, unique as the validator compares titles."""
        while True:
            length = self.rng.randint(6, 16) - 1  # the acronym is the first word
            phrase = [self.rng.choice(ADJECTIVES), self.rng.choice(NOUNS)]
            while len(" ".join(phrase).split()) < length:
                phrase += [self.rng.choice(CONNECTORS), self.rng.choice(ADJECTIVES), self.rng.choice(NOUNS)]
            words = " ".join(phrase).split()[:length]
            while words[-1] in CONNECTORS:
                words[-1] = self.rng.choice(NOUNS).split()[-1]
            title = f"{acronym}: " + " ".join(words).capitalize()
            if normalized_title(title) not in self.titles:
                self.titles.add(normalized_title(title))
                return title

    def paper_id(self, family: str, year: int, acronym: str) -> str:
        base = "".join(ch for ch in f"{family}{year}{acronym}".lower() if ch.isascii() and ch.isalnum())
        return unique(base, self.ids)

    def arxiv(self, year: int) -> str:
        """A fresh identifier in a month of ``year``: 4 digits before 2015, 5 from 2015 (as arXiv)."""
        yymm = f"{year % 100:02d}{self.rng.randint(1, 12):02d}"
        number = self.arxiv_numbers.get(yymm, self.rng.randint(10, 500)) + self.rng.randint(1, 40)
        self.arxiv_numbers[yymm] = number
        return f"{yymm}.{number:05d}" if year >= 2015 else f"{yymm}.{number:04d}"

    def authors(self) -> list[str]:
        count = min(12, 2 + int(self.rng.expovariate(1 / 3)))
        names: dict[str, None] = {}
        while len(names) < count:
            names[f"{self.rng.choice(GIVEN)} {self.rng.choice(FAMILY)}"] = None
        return list(names)

    def summary(self, acronym: str, modalities: list[str]) -> str:
        names = " and ".join(self.tax.modality[m].name.lower() for m in modalities)
        return " ".join([
            f"{acronym} {self.rng.choice(VERBS)} {' '.join(self.words(ADJECTIVES, 2))} {self.rng.choice(NOUNS)} "
            f"so that each token of {names} reaches the experts that suit it.",
            f"A {self.rng.choice(ADJECTIVES)} router with {self.rng.choice([4, 8, 16, 32, 64])} experts and top-"
            f"{self.rng.choice([1, 2])} gating is trained jointly with an auxiliary loss on {self.rng.choice(NOUNS)}.",
            f"On the reported benchmarks it {self.rng.choice(RESULTS)}, and the authors release "
            f"{self.rng.choice(['code', 'weights', 'code and weights', 'nothing yet'])}.",
        ])

    def corpus(self, n: int) -> dict[str, str]:
        """``{file name: YAML text}`` for ``n`` entries."""
        rng, tax = self.rng, self.tax
        subcategories = list(tax.subcategory)
        modalities = list(tax.modality)
        domains = list(tax.domain)
        routings = list(tax.routing)
        placements = list(tax.placement)
        venues = [v.id for v in tax.vocabularies.venues]
        kinds = [k.id for k in tax.vocabularies.entry_kinds]
        gaps = [g.id for g in tax.gaps]
        years = sorted(rng.choices(range(FIRST_YEAR, LAST_YEAR + 1),
                                   weights=[1.25 ** (y - FIRST_YEAR) for y in range(FIRST_YEAR, LAST_YEAR + 1)], k=n))
        sub_of = covering(rng, n, subcategories, lambda: rng.choice(subcategories))
        first_modality = covering(rng, n, modalities, lambda: rng.choice(modalities))
        domain_of = covering(rng, n, domains, lambda: "general" if rng.random() < 0.6 else rng.choice(domains))
        venue_of = covering(rng, n, venues, lambda: rng.choice(venues) if rng.random() < 0.75 else None)
        kind_of = covering(rng, n, kinds, lambda: None)
        gap_of = covering(rng, n, gaps, lambda: None)
        # identifiers: mostly arXiv, some with a DOI too, some DOI-only or web-page-only
        id_kind = [rng.choices(["arxiv", "arxiv+doi", "doi", "url"], weights=[70, 15, 10, 5])[0] for _ in range(n)]

        files: dict[str, str] = {}
        earlier: list[str] = []  # ids in year order: citing only these keeps the graph acyclic
        for i in range(n):
            year, acronym = years[i], self.acronym()
            authors = self.authors()
            family = authors[0].split()[-1]
            ident = self.paper_id(family, year, acronym)
            perspective = tax.subcategory[sub_of[i]][0].id
            mods = list(dict.fromkeys([first_modality[i], *rng.sample(modalities, rng.randint(0, 2))]))
            paper_gaps = sorted({*([gap_of[i]] if gap_of[i] else []), *rng.sample(gaps, rng.choice([0, 0, 1, 1, 2]))})
            venue = venue_of[i]
            if id_kind[i] in {"doi", "url"} and venue is None:
                venue = rng.choice(venues)  # a paper without an arXiv id was published somewhere
            kind = kind_of[i] or (None if rng.random() < 0.3 else
                                  "misc" if venue is None else
                                  "article" if venue in tax.journals else "inproceedings")
            lines = [f"id: {ident}", f"title: {scalar(self.title(acronym))}", "authors:"]
            lines += [f"  - {scalar(a)}" for a in authors]
            lines += [f"year: {year}", f"perspective: {perspective}", f"subcategory: {sub_of[i]}",
                      f"domain: {domain_of[i]}",
                      f"modalities: [{', '.join(mods)}]", f"summary: {folded(self.summary(acronym, mods))}"]
            sources = []
            if "arxiv" in id_kind[i]:
                arxiv = self.arxiv(year if venue is None or year == FIRST_YEAR or rng.random() < 0.6 else year - 1)
                lines.append(f"arxiv: {scalar(arxiv)}")
                sources.append(f"https://arxiv.org/abs/{arxiv}")
            if "doi" in id_kind[i]:
                doi = f"10.{rng.randint(1000, 99999)}/{ident}.{year}"
                lines.append(f"doi: {scalar(doi)}")
                sources.append(f"https://doi.org/{doi}")
            if id_kind[i] == "url":
                url = f"https://proceedings.example.org/{year}/{ident}.html"
                lines.append(f"url: {url}")
                sources.append(url)
            if venue:
                lines.append(f"venue: {venue}")
            if rng.random() < 0.4:
                owner = "".join(ch for ch in family.lower() if ch.isascii() and ch.isalnum())
                code = f"https://github.com/{owner}-lab/{acronym.lower()}"
                lines.append(f"code: {code}")
                sources.append(code)
            if paper_gaps:
                lines.append(f"gaps: [{', '.join(paper_gaps)}]")
            if rng.random() < 0.8:  # most entries propose a method; its facts are partly stated
                experts = rng.choice([4, 8, 16, 32, 64])
                lines += ["method:", f"  name: {scalar(acronym)}", f"  routing: {rng.choice(routings)}"]
                if rng.random() < 0.7:
                    lines += [f"  experts: {experts}", f"  top_k: {rng.choice([1, 2, 2, 4])}"]
                lines.append(f"  placement: [{rng.choice(placements)}]")
                if rng.random() < 0.5:
                    total = round(rng.uniform(1, 200), 1)
                    lines += [f"  params_total: {total}", f"  params_active: {round(total / rng.choice([2, 4, 8]), 2)}"]
            cites = rng.sample(earlier[-300:], min(len(earlier), rng.randint(0, MAX_CITES), 300))
            if cites:
                lines.append("cites:")
                lines += [f"  - {c}" for c in sorted(cites)]
            if sources and rng.random() < 0.9:
                lines.append(f"references_from: {sources[0]}")
            if kind:
                lines.append(f"bibtex_type: {kind}")
            added = dt.date(LAST_YEAR, 1, 1) + dt.timedelta(days=rng.randint(0, 364))
            lines.append(f"added: {added.isoformat()}")
            lines.append("verified_from:")
            lines += [f"  - {u}" for u in sources]
            if rng.random() < 0.15:
                lines.append("notes: " + folded("Synthetic entry: the title, authors and summary were drawn at random "
                                                "from word lists; nothing here describes a real paper."))
            files[f"{ident}.yaml"] = "\n".join(lines) + "\n"
            earlier.append(ident)
        return files


def synthetic_corpus(taxonomy: Taxonomy, n: int, seed: int = 0) -> dict[str, str]:
    """``{file name: YAML text}`` of ``n`` valid synthetic entries; the same seed, the same text."""
    if n < 1:
        raise MoekbError(Problem("--n", 0, f"the number of papers must be at least 1, not {n}"))
    return CorpusWriter(taxonomy, seed).corpus(n)


def write_synthetic_corpus(out: Path, n: int, seed: int = 0, *, root: Path | None = None,
                           force: bool = False) -> Path:
    """Write the corpus into ``out`` (created if missing) and return it, resolved.

    Refuses the project's ``papers/`` (or a folder inside or above it) and a non-empty ``out``;
    with ``force``, the ``*.yaml`` files already in ``out`` are replaced so it holds exactly the
    new corpus (any other file is left alone, and the validator will name it)."""
    root = project_root(root)
    target = out.resolve()
    papers = (root / "papers").resolve()
    if target == papers or target.is_relative_to(papers) or papers.is_relative_to(target):
        raise MoekbError(Problem(str(out), 0, f"refusing to write synthetic papers into or above the project's "
                                              f"papers folder ({papers}): choose another folder, e.g. build/synth-{n}"))
    if target.exists() and not target.is_dir():
        raise MoekbError(Problem(str(out), 0, "exists and is not a folder"))
    if target.is_dir() and any(target.iterdir()) and not force:
        raise MoekbError(Problem(str(out), 0, "the folder is not empty: choose an empty one, or pass --force to "
                                              "replace the *.yaml files in it"))
    files = synthetic_corpus(load_taxonomy(root), n, seed)
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("*.yaml"):
        if old.name not in files:
            old.unlink()
    for name, text in files.items():
        write_atomic(target / name, text.encode("utf-8"))
    return target
