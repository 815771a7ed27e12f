"""Ranking stage: the shared feature table, LambdaRank training, the bundle and the `Ranker` core.

Imports no grpc: the server, the evaluator and the benchmarks all call `Ranker.rank`.
"""

from .ranker import Ranker
from .train import TrainConfig, train_bundle
from .types import CartLine, Filters, RankedItem, RankRequest, RankResult, Strategy

__all__ = ["CartLine", "Filters", "RankRequest", "RankResult", "RankedItem", "Ranker", "Strategy", "TrainConfig", "train_bundle"]
