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

from moekb import identifiers

Text = Annotated[str, StringConstraints(strict=True, min_length=1, pattern=r"\S")]
Strict = ConfigDict(extra="forbid", strict=True, frozen=True)


Count = Annotated[int, Field(strict=True, ge=0)]
Billions = Annotated[float, Field(ge=0)]


class Method(BaseModel):
    """What an entry's method is, each field only as the paper (or its model card) states it."""

    model_config = Strict

    name: Text = Field(title="Method", description='The short name people use, e.g. "LIMoE", "MoE-LLaVA".')
    routing: Optional[Text] = Field(None, title="Routing", description="How tokens reach experts: a routing id (taxonomy/vocabularies.yaml).")
    experts: Optional[Count] = Field(None, title="Experts", description="Routed experts per MoE layer, in the configuration the paper leads with.")
    top_k: Optional[Count] = Field(None, title="Top-k", description="Experts each token is sent to.")
    shared_experts: Optional[Count] = Field(None, title="Shared experts", description="Always-on experts beside the routed ones.")
    placement: list[Text] = Field(title="Placement", default_factory=list, description="Where the experts sit: placement ids (taxonomy/vocabularies.yaml).")
    params_total: Optional[Billions] = Field(None, title="Total params (B)", description="Total parameters, in billions.")
    params_active: Optional[Billions] = Field(None, title="Active params (B)", description="Parameters active per token, in billions.")
    upcycled: Optional[bool] = Field(None, title="Upcycled", description="Whether the experts start as copies of a trained dense FFN.")
    base_models: list[Text] = Field(title="Base models", default_factory=list, description="The pretrained models it starts from.")
    weights: list[Text] = Field(title="Weights", default_factory=list, description="Released checkpoints: Hugging Face ids (org/name) or URLs.")


class Paper(BaseModel):
    """One ``papers/<id>.yaml`` entry. Each field's description is the contributor guide's text for it
    (``moekb.fields.field_table`` writes the guide's table from these)."""

    model_config = Strict

    id: Text = Field(description="Lowercase slug equal to the file name: family name of the first author, year, one "
                                 "title word (`a-z`, `0-9`, `-`), e.g. `mustafa2022limoe`.")
    title: Text = Field(description="Exactly as on the arXiv abstract page (or the publisher's page if there is no "
                                    "arXiv version).")
    authors: list[Text] = Field(min_length=1, description="**All** authors, full names, in the order of the arXiv "
                                                          "abstract page. Never \"et al.\" or \"others\".")
    year: int = Field(description="The year of the venue if the paper was published, else the year of the first arXiv "
                                  "version; never before the year in its arXiv id.")
    kind: Optional[Text] = Field(None, description="`survey` or `benchmark` (list below); left out for a method paper. "
                                                   "A survey has no perspective, sub-category or method.")
    perspective: Optional[Text] = Field(None, description="`engine`, `learner`, `adapter` or `foundations`; required "
                                                          "unless the entry is a survey.")
    subcategory: Optional[Text] = Field(None, description="A sub-category **of that perspective** (table below); "
                                                          "required unless the entry is a survey.")
    domain: Text = Field(description="The application domain, from the list below (`general` for general-purpose "
                                     "models).")
    modalities: list[Text] = Field(min_length=1, description="The modalities the method takes as input, from the list "
                                                             "below, e.g. `[image, text]`.")
    summary: Text = Field(description="2-4 sentences **in your own words** (never copy a sentence of the abstract): what "
                                      "the experts do, and why it matters for multimodal learning.")
    verified_from: list[Text] = Field(min_length=1, description="The pages where you checked title, authors, year, ids "
                                                                "and venue, a primary page first: arXiv, OpenReview, "
                                                                "the publisher, the official repository or model card.")
    arxiv: Optional[Text] = Field(None, description="The bare arXiv id as a **quoted string**, no version, no URL: "
                                                    "`\"2206.02770\"`.")
    doi: Optional[Text] = Field(None, description="The bare DOI, without `https://doi.org/`, only if a source shows it.")
    url: Optional[Text] = Field(None, description="An http(s) landing page, when there is neither an arXiv id nor a DOI.")
    venue: Optional[Text] = Field(None, description="A venue id (or an alias) from the list below, only when a source "
                                                    "shows the paper was accepted there.")
    code: Optional[Text] = Field(None, description="The **official** code repository (linked from the paper, its "
                                                   "abstract page or project page).")
    gaps: list[Text] = Field(default_factory=list, description="Research gaps the paper addresses directly (list below).")
    method: Optional[Method] = Field(None, description="The method's facts, each only as the paper or its model card "
                                                       "states it (table below); for entries that propose a method.")
    cites: list[Text] = Field(default_factory=list, description="Ids of *other entries in moekb* that this paper cites, "
                                                                "as its reference list shows.")
    references_from: Optional[Text] = Field(None, description="Where you read the **whole** reference list behind "
                                                              "`cites`: its page (URL), or `code-index:<number>` for a "
                                                              "full-text copy in the research store's code index. "
                                                              "Without it the entry's citations show as not checked.")
    bibtex_type: Optional[Text] = Field(None, description="`article`, `inproceedings`, `misc`...; `moekb add` copies "
                                                          "it from the BibTeX.")
    added: Optional[dt.date] = Field(None, description="The date the entry was added (`moekb add` writes today's).")
    notes: Optional[Text] = Field(None, description="What you could not check, name clashes, anything a reviewer "
                                                    "should know.")

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
    def references_copy(self) -> str | None:
        """The stored copy's file number when the reference list was read in the code index, not on a page."""
        match = identifiers.STORE_COPY.match(self.references_from or "")
        return match["file"] if match else None

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
    implements: list[Text] = Field(default_factory=list)  # ids of the papers the reference implementation follows


class Perspective(BaseModel):
    model_config = Strict
    id: Text
    name: Text
    definition: Text
    description: Text
    background: bool = False
    reference_impl: Optional[Text] = None
    notebook: Optional[Text] = None
    implements: list[Text] = Field(default_factory=list)  # ids of the papers the reference implementation follows
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
    journal: bool = False  # venues only: a journal, whose papers are BibTeX @article


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

    # Each vocabulary by id: {id: term}.
    gap = cached_property(lambda self: by_id(self.gaps))
    modality = cached_property(lambda self: by_id(self.vocabularies.modalities))
    venue = cached_property(lambda self: by_id(self.vocabularies.venues))
    domain = cached_property(lambda self: by_id(self.vocabularies.domains))
    paper_kind = cached_property(lambda self: by_id(self.vocabularies.paper_kinds))
    routing = cached_property(lambda self: by_id(self.vocabularies.routings))
    placement = cached_property(lambda self: by_id(self.vocabularies.placements))

    @cached_property
    def journals(self) -> frozenset[str]:
        return frozenset(v.id for v in self.vocabularies.venues if v.journal)


def by_id(items: list) -> dict:
    return {item.id: item for item in items}


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
