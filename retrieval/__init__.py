"""Retrieval stage: id vocabularies, ALS embeddings, the Annoy index, co-occurrence rule sources."""

from .ann import AnnIndex, build_index
from .artifacts import Artifacts, RetrievalConfig, build_artifacts
from .candidates import CandidateConfig, Candidates
from .vocab import Vocabulary

__all__ = ["AnnIndex", "Artifacts", "CandidateConfig", "Candidates", "RetrievalConfig", "Vocabulary", "build_artifacts", "build_index"]
