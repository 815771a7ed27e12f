"""LightGBM LambdaRank: training on query groups, and single-threaded scoring."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import lightgbm as lgb
import numpy as np


@dataclass(frozen=True)
class ModelConfig:
    """LambdaRank settings. Defaults are for a few thousand queries of ~200 candidates."""

    num_leaves: int = 31
    # 0.1, not 0.05: on Ta-Feng's validation queries the same NDCG@10 (cross-sell 0.2676 vs
    # 0.2679, up-sell 0.5567 vs 0.5575) with 88 + 42 trees instead of 202 + 191, which
    # halves the model's share of a request (benchmarks/bench_rank.py)
    learning_rate: float = 0.1
    max_rounds: int = 400  # upper bound; early stopping on held-out queries picks the count
    early_stopping_rounds: int = 40
    # 50: 200 gained on up-sell before the test period (+0.0054 / +0.0037 / +0.0048 NDCG@10,
    # two query seeds and a second trainer seed) and lost in it (3 trainer seeds: up-sell
    # -0.0028, new to shopper -0.0020, cross-sell +0.0000), with twice the trees; not kept
    # (benchmarks/EXPERIMENTS.md, "LambdaRank settings")
    min_data_in_leaf: int = 50
    feature_fraction: float = 0.9
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    truncation_level: int = 20  # LambdaRank looks at pairs involving the top 20
    eval_at: int = 10
    # One thread: measured here, 2 OpenMP threads ran 5x slower whenever the other core
    # was busy (busy-waiting), and only ~15% faster when it was idle.
    threads: int = 1
    seed: int = 0


def _params(cfg: ModelConfig) -> dict:
    return {
        "objective": "lambdarank",
        "metric": "ndcg",
        "eval_at": [cfg.eval_at],
        "num_leaves": cfg.num_leaves,
        "learning_rate": cfg.learning_rate,
        "min_data_in_leaf": cfg.min_data_in_leaf,
        "feature_fraction": cfg.feature_fraction,
        "bagging_fraction": cfg.bagging_fraction,
        "bagging_freq": 1,
        "lambda_l2": cfg.lambda_l2,
        "lambdarank_truncation_level": cfg.truncation_level,
        "num_threads": cfg.threads,
        "seed": cfg.seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
    }


def lambdarank_datasets(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    groups_valid: np.ndarray,
    feature_names: list[str],
    cfg: ModelConfig = ModelConfig(),
) -> tuple[lgb.Dataset, lgb.Dataset]:
    """The binned training and validation sets. Once they are built LightGBM keeps no
    reference to the float rows, so a caller that drops its own frees them before the
    long part, the boosting (on Ta-Feng ~0.6 GB of training peak)."""
    params = _params(cfg)
    train = lgb.Dataset(x, y, group=groups, feature_name=feature_names, params=params, free_raw_data=True)
    valid = lgb.Dataset(x_valid, y_valid, group=groups_valid, reference=train, params=params)
    return train.construct(), valid.construct()


def train_lambdarank(train: lgb.Dataset, valid: lgb.Dataset, cfg: ModelConfig = ModelConfig()) -> tuple[lgb.Booster, dict]:
    """Fit a LambdaRank booster with early stopping on the validation queries
    (datasets from `lambdarank_datasets` with the same `cfg`)."""
    evals: dict = {}
    booster = lgb.train(
        _params(cfg),
        train,
        num_boost_round=cfg.max_rounds,
        valid_sets=[valid],
        valid_names=["valid"],
        callbacks=[lgb.early_stopping(cfg.early_stopping_rounds, verbose=False), lgb.record_evaluation(evals)],
    )
    curve = evals["valid"][f"ndcg@{cfg.eval_at}"]
    best = booster.best_iteration or len(curve)
    info = {"best_iteration": best, f"valid_ndcg@{cfg.eval_at}": float(curve[best - 1]), "params": asdict(cfg)}
    return booster, info


def predict(booster: lgb.Booster, x: np.ndarray) -> np.ndarray:
    # One thread: a request is a few hundred rows; threads cost more than they save
    # and stall when the other core is busy serving.
    return booster.predict(x, num_threads=1)


def contributions(booster: lgb.Booster, x: np.ndarray) -> np.ndarray:
    """Per-feature additive contributions (SHAP values); last column is the bias."""
    return booster.predict(x, pred_contrib=True, num_threads=1)
