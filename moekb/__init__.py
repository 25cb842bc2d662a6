"""moekb: the knowledge base of multimodal Mixture-of-Experts research.

Data flows one way: YAML under ``taxonomy/`` and ``papers/`` is loaded and validated into a
:class:`~moekb.model.KnowledgeBase`; page writers, BibTeX, the citation graph and the command line
all read that object and never parse YAML themselves.
"""

__version__ = "0.1.0"
