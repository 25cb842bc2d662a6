"""The in-memory knowledge base: pydantic models for what the YAML holds, and the index over it.

The models define the shape of a paper entry and of the taxonomy (types, required fields, no
unknown fields); ``moekb.validate`` adds what a schema cannot say (vocabularies, identifier syntax,
cross-entry uniqueness). Every other module reads these objects and never parses YAML.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints

Text = Annotated[str, StringConstraints(strict=True, min_length=1, pattern=r"\S")]
Strict = ConfigDict(extra="forbid", strict=True, frozen=True)


Count = Annotated[int, Field(strict=True, ge=0)]
Billions = Annotated[float, Field(ge=0)]


class Method(BaseModel):
    """What an entry's method is, each field only as the paper (or its model card) states it."""

    model_config = Strict

    name: Text = Field(description='The short name people use, e.g. "LIMoE", "MoE-LLaVA".')
    routing: Optional[Text] = Field(None, description="How tokens reach experts: a routing id (taxonomy/vocabularies.yaml).")
    experts: Optional[Count] = Field(None, description="Routed experts per MoE layer, in the configuration the paper leads with.")
    top_k: Optional[Count] = Field(None, description="Experts each token is sent to.")
    shared_experts: Optional[Count] = Field(None, description="Always-on experts beside the routed ones.")
    placement: list[Text] = Field(default_factory=list, description="Where the experts sit: placement ids (taxonomy/vocabularies.yaml).")
    params_total: Optional[Billions] = Field(None, description="Total parameters, in billions.")
    params_active: Optional[Billions] = Field(None, description="Parameters active per token, in billions.")
    upcycled: Optional[bool] = Field(None, description="Whether the experts start as copies of a trained dense FFN.")
    base_models: list[Text] = Field(default_factory=list, description="The pretrained models it starts from.")
    weights: list[Text] = Field(default_factory=list, description="Released checkpoints: Hugging Face ids (org/name) or URLs.")


class Paper(BaseModel):
    """One ``papers/<id>.yaml`` entry."""

    model_config = Strict

    id: Text = Field(description="Lowercase slug, equal to the file name: <family name><year><word>.")
    title: Text = Field(description="The title exactly as on the arXiv abstract page or the publisher's.")
    authors: list[Text] = Field(min_length=1, description="All authors, full names, in order.")
    year: int = Field(description="Year of the venue if published, else of the first arXiv version.")
    kind: Optional[Text] = Field(None, description="survey or benchmark (taxonomy/vocabularies.yaml paper_kinds); omitted for a method.")
    perspective: Optional[Text] = Field(None, description="engine, learner, adapter, or foundations; required unless kind is survey.")
    subcategory: Optional[Text] = Field(None, description="A sub-category id of the perspective (taxonomy/perspectives.yaml); required unless kind is survey.")
    domain: Text = Field(description="Application domain id (taxonomy/vocabularies.yaml domains).")
    modalities: list[Text] = Field(min_length=1, description="Modality ids (taxonomy/vocabularies.yaml).")
    summary: Text = Field(description="2-4 sentences in the contributor's own words.")
    verified_from: list[Text] = Field(
        min_length=1, description="The pages (URLs) where title, authors, year, ids and venue were checked."
    )
    arxiv: Optional[Text] = Field(None, description='arXiv identifier as a quoted string, e.g. "2206.02770".')
    doi: Optional[Text] = Field(None, description="DOI without the https://doi.org/ prefix.")
    url: Optional[Text] = Field(None, description="Landing page (http/https), when there is no arXiv id or DOI.")
    venue: Optional[Text] = Field(None, description="Venue id or alias (taxonomy/vocabularies.yaml).")
    code: Optional[Text] = Field(None, description="Official code repository (http/https).")
    gaps: list[Text] = Field(default_factory=list, description="Research-gap ids (taxonomy/gaps.yaml).")
    method: Optional[Method] = Field(None, description="The method's facts, for entries that propose a method or model.")
    cites: list[Text] = Field(default_factory=list, description="Ids of other entries this paper cites, as its reference list shows.")
    references_from: Optional[Text] = Field(None, description="The page (URL) where the reference list behind `cites` was read.")
    bibtex_type: Optional[Text] = Field(None, description="BibTeX entry type (taxonomy/vocabularies.yaml entry_kinds).")
    added: Optional[dt.date] = Field(None, description="Date the entry was added (YYYY-MM-DD).")
    notes: Optional[Text] = Field(None, description="What could not be checked, name clashes, caveats.")

    _path: str = PrivateAttr(default="")

    @property
    def path(self) -> str:
        """The file the entry was read from, relative to the project root."""
        return self._path

    @property
    def is_survey(self) -> bool:
        return self.kind == "survey"

    @property
    def citations_checked(self) -> bool:
        """Whether ``cites`` comes from a reference list that was read; if not, "cites nothing" is unknown."""
        return self.references_from is not None

    @property
    def arxiv_url(self) -> str | None:
        return f"https://arxiv.org/abs/{self.arxiv}" if self.arxiv else None

    @property
    def arxiv_pdf_url(self) -> str | None:
        return f"https://arxiv.org/pdf/{self.arxiv}" if self.arxiv else None

    @property
    def doi_url(self) -> str | None:
        return f"https://doi.org/{self.doi}" if self.doi else None


class Subcategory(BaseModel):
    model_config = Strict
    id: Text
    name: Text
    description: Text
    source: Optional[Text] = None
    reference_impl: Optional[Text] = None
    notebook: Optional[Text] = None


class Perspective(BaseModel):
    model_config = Strict
    id: Text
    name: Text
    definition: Text
    description: Text
    background: bool = False
    reference_impl: Optional[Text] = None
    notebook: Optional[Text] = None
    subcategories: list[Subcategory] = Field(min_length=1)


class Gap(BaseModel):
    model_config = Strict
    id: Text
    name: Text
    description: Text


class Term(BaseModel):
    model_config = Strict
    id: Text
    name: Text
    aliases: list[Text] = Field(default_factory=list)


class Vocabularies(BaseModel):
    model_config = Strict
    modalities: list[Term] = Field(min_length=1)
    domains: list[Term] = Field(min_length=1)
    paper_kinds: list[Term] = Field(min_length=1)
    routings: list[Term] = Field(min_length=1)
    placements: list[Term] = Field(min_length=1)
    venues: list[Term] = Field(min_length=1)
    entry_kinds: list[Term] = Field(min_length=1)

    @cached_property
    def venue_ids(self) -> dict[str, str]:
        """Every accepted spelling (id or alias, casefolded) mapped to the canonical id."""
        names = {}
        for venue in self.venues:
            for spelling in [venue.id, *venue.aliases]:
                names[spelling.casefold()] = venue.id
        return names


@dataclass(frozen=True)
class Taxonomy:
    perspectives: list[Perspective]
    gaps: list[Gap]
    vocabularies: Vocabularies

    @cached_property
    def perspective(self) -> dict[str, Perspective]:
        return {p.id: p for p in self.perspectives}

    @cached_property
    def subcategory(self) -> dict[str, tuple[Perspective, Subcategory]]:
        return {s.id: (p, s) for p in self.perspectives for s in p.subcategories}

    @cached_property
    def gap(self) -> dict[str, Gap]:
        return {g.id: g for g in self.gaps}

    @cached_property
    def modality(self) -> dict[str, Term]:
        return {m.id: m for m in self.vocabularies.modalities}

    @cached_property
    def venue(self) -> dict[str, Term]:
        return {v.id: v for v in self.vocabularies.venues}

    @cached_property
    def domain(self) -> dict[str, Term]:
        return {d.id: d for d in self.vocabularies.domains}

    @cached_property
    def paper_kind(self) -> dict[str, Term]:
        return {k.id: k for k in self.vocabularies.paper_kinds}

    @cached_property
    def routing(self) -> dict[str, Term]:
        return {r.id: r for r in self.vocabularies.routings}

    @cached_property
    def placement(self) -> dict[str, Term]:
        return {p.id: p for p in self.vocabularies.placements}


@dataclass(frozen=True)
class KnowledgeBase:
    """Method papers and surveys sorted by id, the taxonomy, and the notebooks to render (name -> JSON text).

    Surveys are kept apart: they have no perspective, stay out of the counts and of the citation graph,
    and are listed on a page of their own."""

    taxonomy: Taxonomy
    papers: list[Paper]
    notebooks: dict[str, str] = field(default_factory=dict)
    surveys: list[Paper] = field(default_factory=list)

    @cached_property
    def paper(self) -> dict[str, Paper]:
        return {p.id: p for p in self.papers}

    @cached_property
    def cited_by(self) -> dict[str, list[str]]:
        """For each id, the ids of the entries that cite it, sorted."""
        index: dict[str, list[str]] = {p.id: [] for p in self.papers}
        for paper in self.papers:
            for target in paper.cites:
                if target in index:
                    index[target].append(paper.id)
        return {k: sorted(v) for k, v in index.items()}

    @cached_property
    def by_perspective(self) -> dict[str, list[Paper]]:
        """Papers of each perspective id, in id order: one pass, not one scan per page that asks."""
        return self._grouped("perspective")

    @cached_property
    def by_subcategory(self) -> dict[str, list[Paper]]:
        return self._grouped("subcategory")

    def _grouped(self, field_name: str) -> dict[str, list[Paper]]:
        index: dict[str, list[Paper]] = {}
        for paper in self.papers:
            index.setdefault(getattr(paper, field_name), []).append(paper)
        return index

    def in_perspective(self, perspective_id: str) -> list[Paper]:
        return list(self.by_perspective.get(perspective_id, ()))  # a copy: callers may sort it in place

    def in_subcategory(self, subcategory_id: str) -> list[Paper]:
        return list(self.by_subcategory.get(subcategory_id, ()))
