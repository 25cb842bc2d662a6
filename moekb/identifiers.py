"""Syntax of the identifiers a paper carries, and the normal forms used to find duplicates.

arXiv rules follow arxiv-browse's ``browse/domain/identifier.py``: new-style ``YYMM.NNNN`` until
2014-12 and ``YYMM.NNNNN`` from 2015-01 (month 01-12, an optional ``vN``), old-style
``archive(.SUB)/YYMMNNN``. DOIs use Crossref's recommended pattern.
"""

from __future__ import annotations

import functools
import re
import unicodedata

NEW_ARXIV = re.compile(r"^(?P<yy>\d{2})(?P<mm>\d{2})\.(?P<num>\d{4,5})(?P<version>v[1-9]\d*)?$")
OLD_ARXIV = re.compile(
    r"^(?P<archive>[a-z]+(-[a-z]+)?)(\.[A-Z]{2})?/(?P<yy>\d{2})(?P<mm>\d{2})\d{3}(?P<version>v[1-9]\d*)?$"
)
DOI = re.compile(r"^10\.\d{4,9}/[-._;()/:a-z0-9<>\[\]]+$", re.IGNORECASE)
URL = re.compile(r"^https?://[^\s/$.?#][^\s]*$", re.IGNORECASE)
SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
# A full-text copy of a paper in the research store's code index, which names its files by number
# only (no repository, no URL): where many reference lists could be read when no page showed them.
STORE_COPY = re.compile(r"^code-index:(?P<file>[1-9]\d{0,15})$")


def arxiv_problem(value: str) -> str | None:
    """Why ``value`` is not a valid arXiv identifier, or None when it is."""
    if value.lower().startswith(("http", "arxiv:")):
        return f"arxiv: write the bare identifier, not {value!r} (e.g. \"2206.02770\")"
    match = NEW_ARXIV.match(value)
    if match:
        yymm = int(match["yy"] + match["mm"])
        if not 1 <= int(match["mm"]) <= 12:
            return f"arxiv: {value!r} has month {match['mm']}, which is not 01-12"
        if int(match["yy"]) < 7:
            return f"arxiv: {value!r}: new-style identifiers start in April 2007 (0704)"
        digits = len(match["num"])
        if yymm >= 1501 and digits != 5:
            return f"arxiv: {value!r}: identifiers from 2015 (1501) on have a 5-digit number"
        if yymm < 1501 and digits != 4:
            return f"arxiv: {value!r}: identifiers before 2015 (1501) have a 4-digit number"
        return None
    match = OLD_ARXIV.match(value)
    if match:
        if not 1 <= int(match["mm"]) <= 12:
            return f"arxiv: {value!r} has month {match['mm']}, which is not 01-12"
        return None
    return (
        f"arxiv: {value!r} is not an arXiv identifier "
        "(expected YYMM.NNNNN, or an old-style id such as hep-th/9901001)"
    )


def arxiv_year(value: str) -> int:
    """The year of the first version, encoded in a valid identifier's YYMM."""
    match = NEW_ARXIV.match(value) or OLD_ARXIV.match(value)
    yy = int(match["yy"])
    return 1900 + yy if yy >= 90 else 2000 + yy


def unversioned_arxiv(value: str) -> str:
    return re.sub(r"v[1-9]\d*$", "", value.strip())


def doi_problem(value: str) -> str | None:
    if value.lower().startswith(("http", "doi:")):
        return f"doi: write the bare DOI, not {value!r} (e.g. \"10.1162/neco.1991.3.1.79\")"
    if not DOI.match(value):
        return f"doi: {value!r} is not a DOI (expected 10.NNNN/suffix)"
    return None


def url_problem(field: str, value: str) -> str | None:
    if not URL.match(value):
        return f"{field}: {value!r} is not an http(s) URL (only http:// and https:// links are allowed)"
    return None


def references_problem(value: str) -> str | None:
    """``references_from`` is the page the reference list was read on, or the stored copy it was read in."""
    if URL.match(value) or STORE_COPY.match(value):
        return None
    return (f"references_from: {value!r} is neither an http(s) URL nor a stored full-text copy "
            "(code-index:<file number>)")


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def weights_problem(value: str) -> str | None:
    if URL.match(value) or HUB_ID.match(value):
        return None
    return f"method.weights: {value!r} is neither a model-hub id (org/name) nor an http(s) URL"


# Where a fact can be read first-hand: the paper's own pages, its venue's, its official code or model card.
PRIMARY_HOSTS = (
    "arxiv.org", "export.arxiv.org", "ar5iv.labs.arxiv.org", "ar5iv.org", "openreview.net", "aclanthology.org",
    "openaccess.thecvf.com", "proceedings.mlr.press", "proceedings.neurips.cc", "papers.nips.cc", "neurips.cc",
    "iclr.cc", "icml.cc", "ojs.aaai.org", "ijcai.org", "www.ijcai.org", "doi.org", "ieeexplore.ieee.org",
    "dl.acm.org", "link.springer.com", "www.sciencedirect.com", "www.nature.com", "jmlr.org", "www.jmlr.org",
    "isca-archive.org", "www.isca-archive.org", "www.ecva.net", "ecva.net", "www.mdpi.com", "direct.mit.edu",
    "github.com", "huggingface.co", "www.computer.org", "papers.miccai.org", "conferences.miccai.org",
    "thecvf.com", "mlsys.org", "githubusercontent.com", "techscience.com", "aaai.org", "acm.org", "ieee.org",
    "springer.com", "sciencedirect.com", "nature.com", "mdpi.com",
)
# Pages that summarise a paper without being its source.
AGGREGATOR_PATHS = ("huggingface.co/papers",)
RETIRED_HOSTS = ("paperswithcode.com", "www.paperswithcode.com")


def host_of(url: str) -> str:
    match = re.match(r"^https?://([^/?#:]+)", url, re.IGNORECASE)
    return match[1].lower().rstrip(".") if match else ""


def source_kind(url: str) -> str:
    """See :func:`host_kind`; a Hugging Face paper page is an aggregator, its model cards are primary."""
    if any(url.split("://", 1)[-1].lower().startswith(path) for path in AGGREGATOR_PATHS):
        return "other"
    return host_kind(host_of(url))


@functools.lru_cache(maxsize=4096)
def host_kind(host: str) -> str:
    """``primary``, ``other``, ``retired``, or ``look-alike of <host>`` for a verified_from URL.

    A look-alike is a host one edit away from a primary host without being one ("arcxiv.org"): a
    typo, or a site that imitates the real one; either way not a source. (Two edits already reach
    real sites: mlanthology.org is two from aclanthology.org.)
    """
    bare = host.removeprefix("www.")
    if host in RETIRED_HOSTS:
        return "retired"
    # a primary host, one of its subdomains (eccv2024.ecva.net, preview.aclanthology.org), or a
    # project page on github.io
    if host.endswith(".github.io") or any(host == p or host.endswith("." + p) for p in PRIMARY_HOSTS):
        return "primary"
    for primary in PRIMARY_HOSTS:
        candidate = primary.removeprefix("www.")
        same_suffix = bare.rsplit(".", 1)[-1] == candidate.rsplit(".", 1)[-1]
        if same_suffix and abs(len(bare) - len(candidate)) <= 1 and _edit_distance(bare, candidate) == 1:
            return f"look-alike of {candidate}"
    return "other"


def _edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def normalized_title(title: str) -> str:
    """Casefolded letters and digits only, accents and LaTeX braces removed.

    "ST-MoE: Designing {Stable} ..." and "ST-MOE: DESIGNING STABLE ..." compare equal.
    """
    text = unicodedata.normalize("NFKD", title)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = re.sub(r"\\[a-zA-Z]+|[{}$]", "", text).casefold()
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text).split())


def unique(base: str, taken: set[str], *, separator: str = "", first: int = 2) -> str:
    """``base``, or ``base`` + separator + the first free number from ``first`` on; added to ``taken``."""
    name, n = base, first
    while name in taken:
        name, n = f"{base}{separator}{n}", n + 1
    taken.add(name)
    return name
