"""The ranking core: load a bundle, answer RankRequests. No grpc, no pandas.

`Ranker.rank` is what the gRPC server, the evaluator and the benchmarks call.
A Ranker is immutable after `load`, so one instance serves many threads.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
from xsell.retrieval.artifacts import Artifacts
from xsell.retrieval.candidates import SOURCE_BIT, CandidateConfig, Candidates

from xsell.errors import BundleError

from . import model as lgbm
from .bundle import COMPILED_FILES, MODEL_FILES, check_model_text, read_manifest
from .compiled import load_predictor
from .explain import top_reasons
from .features import PairBatch, check_feature_names, feature_matrix
from .query import retrieve
from .rules import RequestScope, apply_diversity, hard_filter
from .types import RankedItem, RankRequest, RankResult, Strategy

log = logging.getLogger(__name__)
HISTORY_ANCHORS = 3  # recent purchases used as anchors when the cart gives none


class Ranker:
    def __init__(self, bundle_dir: Path, manifest: dict, arts: Artifacts, boosters: dict, *, retrieval_only=False,
                 predictors: dict | None = None):
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest
        self.version: str = manifest["version"]
        self.arts = arts
        self.feature_names: list[str] = list(manifest["feature_names"])
        self.features = check_feature_names(self.feature_names)
        self.boosters: dict[Strategy, lgb.Booster] = boosters
        # scoring: the lleaves-compiled model where the bundle has a usable one, else LightGBM
        self.predictors = predictors or {s: (lambda x, b=b: lgbm.predict(b, x)) for s, b in boosters.items()}
        self.candidate_config = CandidateConfig(**manifest.get("candidate_config", {}))
        self.retrieval_only = retrieval_only

    # ------------------------------------------------------------------ load
    @classmethod
    def load(cls, bundle_dir, *, warm: bool = True, retrieval_only: bool = False, verify: bool = True) -> Ranker:
        """Load and validate a whole bundle, or raise BundleError (nothing half-loaded)."""
        bundle_dir = Path(bundle_dir)
        manifest = read_manifest(bundle_dir, verify=verify)
        features = check_feature_names(manifest["feature_names"])
        try:
            arts = Artifacts.load(
                bundle_dir, search_k=manifest.get("retrieval_config", {}).get("search_k", 4000), warm=warm
            )
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise BundleError(f"cannot load retrieval artifacts: {exc}", path=str(bundle_dir)) from exc
        if len(arts.ann) != len(arts.items):
            raise BundleError(f"Annoy index has {len(arts.ann)} items, vocabulary {len(arts.items)}", path=str(bundle_dir))
        boosters = {}
        untrained = manifest.get("untrained_models") or {}
        for strategy in (Strategy.CROSS_SELL, Strategy.UP_SELL):
            if strategy.value in untrained:  # too little training data for it: retrieval order
                continue
            path = bundle_dir / MODEL_FILES[strategy.value]
            check_model_text(path)
            try:
                booster = lgb.Booster(model_file=str(path))
            except (lgb.basic.LightGBMError, OSError) as exc:
                raise BundleError(f"cannot load LightGBM model: {exc}", path=str(path)) from exc
            if booster.feature_name() != [f.name for f in features]:
                raise BundleError(
                    f"model features {booster.feature_name()} differ from the manifest's {manifest['feature_names']}",
                    path=str(path),
                )
            boosters[strategy] = booster
        predictors = {}
        for strategy, booster in boosters.items():
            compiled = bundle_dir / COMPILED_FILES[strategy.value]
            if compiled.is_file():
                predictors[strategy] = load_predictor(bundle_dir / MODEL_FILES[strategy.value], compiled)
            else:
                predictors[strategy] = lambda x, b=booster: lgbm.predict(b, x)
        return cls(bundle_dir, manifest, arts, boosters, retrieval_only=retrieval_only, predictors=predictors)

    def info(self) -> dict:
        m = self.manifest
        return {
            "version": self.version,
            "created": m.get("created", ""),
            "feature_names": self.feature_names,
            "metrics": {k: float(v) for k, v in m.get("metrics", {}).items() if isinstance(v, (int, float))},
            "data_fingerprint": m.get("data_fingerprint", ""),
            "num_items": len(self.arts.items),
            "num_users": len(self.arts.users),
            "bundle_path": str(self.bundle_dir),
        }

    # ------------------------------------------------------------------ rank
    def rank(self, request: RankRequest) -> RankResult:
        request.validated()
        timings = {"retrieval": 0.0, "features": 0.0, "model": 0.0, "rules": 0.0}
        ctx = self._context(request)
        result = RankResult([], [], self.version, unknown_item_ids=ctx["unknown"])
        reasons = [ctx["fallback_reason"]] if ctx["fallback_reason"] else []
        cross_n, up_n = request.limits()
        wanted = [(s, n) for s, n in ((Strategy.CROSS_SELL, cross_n), (Strategy.UP_SELL, up_n)) if n > 0]
        t0 = time.perf_counter()
        cands = {s: self._candidates(request, s, ctx) for s, _ in wanted}
        t1 = time.perf_counter()
        timings["retrieval"] = t1 - t0
        scored = {} if self.retrieval_only else {s: c for s, c in cands.items() if s in self.predictors}
        xs = self._feature_matrices(scored, ctx) if scored else {}
        timings["features"] = time.perf_counter() - t1
        for strategy, n in wanted:
            c, x = cands[strategy], xs.get(strategy)
            if strategy not in self.predictors and not self.retrieval_only:
                reasons.append(f"{strategy.value}: no model in this bundle (too little training data): retrieval order")
            t0 = time.perf_counter()
            scores = self.predictors[strategy](x) if x is not None else c.score.astype(np.float64)
            t1 = time.perf_counter()
            timings["model"] += t1 - t0
            items, filled = self._select(request, strategy, n, c, x, scores, ctx)
            timings["rules"] += time.perf_counter() - t1
            if filled:
                reasons.append(f"{strategy.value}: {filled} popular item(s) added, the model found too few")
            (result.cross_sell if strategy is Strategy.CROSS_SELL else result.up_sell).extend(items)
            ctx["shown"].update(it.item_id for it in items)
        result.fallback = bool(reasons)
        result.fallback_reason = "; ".join(reasons)
        result.timings = timings
        return result

    def candidate_ids(self, request: RankRequest) -> tuple[list[str], list[str]]:
        """(cross-sell, up-sell) candidate ids that reach the model, after the hard rules."""
        request.validated()
        ctx = self._context(request)
        out = []
        for strategy in (Strategy.CROSS_SELL, Strategy.UP_SELL):
            c = self._candidates(request, strategy, ctx)
            out.append(self.arts.items.ids[c.items].tolist())
        return out[0], out[1]

    # ------------------------------------------------------------- internals
    def _context(self, request: RankRequest) -> dict:
        arts = self.arts
        cart_ids = [line.item_id for line in request.cart]
        codes = arts.items.encode(cart_ids)
        unknown = [i for i, c in zip(cart_ids, codes) if c < 0]
        anchors = np.unique(codes[codes >= 0])
        user = arts.users.get(request.user_id) if request.user_id else -1
        fallback_reason = ""
        cart_items = anchors
        if len(anchors) == 0:
            if user >= 0:
                anchors = _recent_purchases(arts, user, HISTORY_ANCHORS)
                fallback_reason = "no known cart item: anchored on the shopper's recent purchases"
            if len(anchors) == 0:
                fallback_reason = "no known cart item and no purchase history: popular items"
        f = request.filters
        cats = arts.categories
        allowed = None
        if f.allowed_categories:
            allowed = _known(cats, f.allowed_categories).astype(np.int32)
        scope = RequestScope(
            cart_items=cart_items,
            cart_categories=np.unique(arts.item_category[anchors]) if len(anchors) else _NO_CATEGORIES,
            excluded_items=_known(arts.items, f.exclude_item_ids).astype(np.int64),
            allowed_categories=allowed,
            denied_categories=_known(cats, f.denied_categories).astype(np.int32),
            user=user,
        )
        return {"anchors": anchors, "user": user, "unknown": unknown, "scope": scope,
                "fallback_reason": fallback_reason, "ann_cache": {},
                "shown": set()}  # item ids already in a list of this answer

    def _candidates(self, request: RankRequest, strategy: Strategy, ctx: dict) -> Candidates:
        anchors = ctx["anchors"]
        if request.candidate_ids is not None:  # evaluation: a fixed candidate set
            items = self.arts.items.encode(request.candidate_ids)
            items = items[items >= 0]
            items = items[np.sort(np.unique(items, return_index=True)[1])]  # each once, first-seen order
            c = Candidates(items, np.full(len(items), anchors[0] if len(anchors) else -1, np.int64),
                           np.zeros(len(items), np.uint8), np.zeros(len(items), np.float32))  # fmt: skip
            return hard_filter(self.arts, c, strategy, ctx["scope"], request.filters)
        if len(anchors) == 0:
            return Candidates(*(np.empty(0, t) for t in (np.int64, np.int64, np.uint8, np.float32)))
        return retrieve(self.arts, strategy, anchors, ctx["user"], ctx["scope"], request.filters,
                        self.candidate_config, ctx["ann_cache"])

    def _feature_matrices(self, cands: dict[Strategy, Candidates], ctx: dict) -> dict[Strategy, np.ndarray]:
        """One feature matrix over every strategy's candidates (one pass of the feature
        table per request, not per strategy), split back into a view per strategy."""
        live = [(s, c) for s, c in cands.items() if len(c)]
        if not live:
            return {}
        cat = (lambda name: getattr(live[0][1], name)) if len(live) == 1 else (
            lambda name: np.concatenate([getattr(c, name) for _, c in live]))  # fmt: skip
        batch = PairBatch(self.arts, cat("items"), cat("anchors"), ctx["user"], cat("sources"), cat("score"),
                          len(ctx["anchors"]))  # fmt: skip
        x = feature_matrix(batch, self.features)
        out, lo = {}, 0
        for s, c in live:
            out[s] = x[lo : lo + len(c)]
            lo += len(c)
        return out

    def _select(self, request, strategy, n, c: Candidates, x, scores, ctx) -> tuple[list[RankedItem], int]:
        """The top n of the scored candidates under the diversity cap, explained, topped up."""
        arts = self.arts
        order = np.argsort(-scores, kind="stable")
        top = apply_diversity(order, arts.item_category[c.items], request.filters.max_per_category, n)
        reasons = [()] * len(top)
        if request.explain and x is not None and len(top):
            contrib = lgbm.contributions(self.boosters[strategy], x[top])
            reasons = [
                top_reasons(contrib[r], x[i], self.feature_names, arts, int(c.items[i]), int(c.anchors[i]),
                            strategy is Strategy.UP_SELL, sources=c.source_names(i))
                for r, i in enumerate(top)
            ]  # fmt: skip
        items = self._items(c.items[top], scores[top], strategy, c.anchors[top], [c.source_names(i) for i in top],
                            reasons)  # fmt: skip
        filled = 0
        if len(items) < n:
            items, filled = self._fill(items, request, strategy, n, ctx)
        return items, filled

    def _fill(self, items, request, strategy, n, ctx) -> tuple[list[RankedItem], int]:
        """Top up a short list with popular items that pass every rule."""
        arts = self.arts
        anchors = ctx["anchors"]
        if strategy is Strategy.UP_SELL and len(anchors):
            pool = np.concatenate([arts.popular_by_category[arts.item_category[a]] for a in anchors])
            pool_anchor = np.concatenate(
                [np.full(len(arts.popular_by_category[arts.item_category[a]]), a) for a in anchors]
            )
        elif strategy is Strategy.UP_SELL:
            # no anchor to be pricier than: popular items from the top price tier of their category
            pool = arts.popular_items[arts.price_pct[arts.popular_items] >= 0.75][:500]
            pool_anchor = np.full(len(pool), -1)
        else:
            pool = arts.popular_items[:500]
            pool_anchor = np.full(len(pool), -1)
        c = Candidates(pool.astype(np.int64), pool_anchor.astype(np.int64),
                       np.full(len(pool), SOURCE_BIT["popular"], np.uint8), np.zeros(len(pool), np.float32))  # fmt: skip
        unanchored_upsell = strategy is Strategy.UP_SELL and not len(anchors)
        c = hard_filter(arts, c, Strategy.CROSS_SELL if unanchored_upsell else strategy, _no_cat_exclusion(ctx["scope"])
                        if unanchored_upsell else ctx["scope"], request.filters)  # fmt: skip
        # nor one the other list already holds: without anchors both fall back to popular items
        seen = {it.item_id for it in items} | ctx["shown"]
        floor = min((it.score for it in items), default=0.0)
        added = []
        taken_per_cat: dict[str, int] = {}
        for it in items:
            taken_per_cat[it.category] = taken_per_cat.get(it.category, 0) + 1
        cap = request.filters.max_per_category
        for i in range(len(c)):
            if len(items) + len(added) >= n:
                break
            item_id = arts.items.ids[c.items[i]]
            cat = arts.categories.ids[arts.item_category[c.items[i]]]
            if item_id in seen or (cap and taken_per_cat.get(cat, 0) >= cap):
                continue
            seen.add(item_id)
            taken_per_cat[cat] = taken_per_cat.get(cat, 0) + 1
            added.append(i)
        popular = self._items(c.items[added], floor - 1.0 - np.arange(len(added)) * 1e-3, strategy, c.anchors[added],
                              [("popular",)] * len(added), [()] * len(added))  # fmt: skip
        return items + popular, len(added)

    def _items(self, items, scores, strategy, anchors, sources, reasons) -> list[RankedItem]:
        """RankedItems for index arrays (gathered per column: a handful of numpy calls per
        list, not per item)."""
        arts = self.arts
        items = np.asarray(items, dtype=np.int64)
        anchors = np.asarray(anchors, dtype=np.int64)
        has = anchors >= 0
        anchor_safe = np.where(has, anchors, 0)
        ref = arts.price[anchor_safe].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            uplift = np.where(has & (ref > 0), arts.price[items].astype(np.float64) / ref, 0.0)
        anchor_ids = np.where(has, arts.items.ids[anchor_safe], "")
        columns = zip(
            arts.items.ids[items].tolist(),
            np.asarray(scores, dtype=np.float64).tolist(),
            anchor_ids.tolist(),
            arts.catalog_price[items].astype(np.float64).tolist(),
            arts.categories.ids[arts.item_category[items]].tolist(),
            uplift.tolist(),
            sources,
            reasons,
        )
        return [
            RankedItem(item_id=i, score=sc, strategy=strategy, anchor_item_id=a, price=p, category=cat,
                       price_uplift=u, sources=src, reasons=rs)
            for i, sc, a, p, cat, u, src, rs in columns
        ]  # fmt: skip


_NO_CATEGORIES = np.empty(0, np.int32)


def _known(vocab, ids) -> np.ndarray:
    """Sorted indices of the ids the vocabulary knows (unknown ids cannot match anything)."""
    if not ids:
        return np.empty(0, np.int64)
    codes = vocab.encode(sorted(ids))
    return codes[codes >= 0]


def _recent_purchases(arts: Artifacts, user: int, n: int) -> np.ndarray:
    lo, hi = arts.user_last_day.indptr[user], arts.user_last_day.indptr[user + 1]
    items = arts.user_last_day.indices[lo:hi]
    order = np.argsort(-arts.user_last_day.data[lo:hi], kind="stable")[:n]
    return np.sort(items[order]).astype(np.int64)


def _no_cat_exclusion(scope: RequestScope) -> RequestScope:
    return RequestScope(scope.cart_items, np.empty(0, np.int32), scope.excluded_items,
                        scope.allowed_categories, scope.denied_categories, scope.user)  # fmt: skip


__all__ = ["Ranker"]
