"""synthetic -> train -> load -> rank, on real files; refusal of damaged bundles."""

from __future__ import annotations

import json
import shutil

import pytest
from xsell.ranking.bundle import atomic_bundle_dir, read_manifest
from xsell.ranking.ranker import Ranker
from xsell.ranking.types import CartLine, Filters, RankRequest, Strategy

from xsell.errors import BundleError


@pytest.fixture(scope="module")
def ranker(bundle_dir):
    return Ranker.load(bundle_dir)


def _popular_anchors(data, n=40):
    purchases = data.events[data.events["event_type"] == "purchase"]
    stock = set(data.catalog.loc[data.catalog["in_stock"], "item_id"])
    return [i for i in purchases["item_id"].value_counts().index if i in stock][:n]


def test_planted_complements_rank_above_other_categories(ranker, dataset, truth):
    cat_of = dict(zip(dataset.catalog["item_id"], dataset.catalog["category"]))
    complement = truth["complement_of"]
    n_cats = dataset.catalog["category"].nunique()
    hits, total = 0, 0
    for anchor in _popular_anchors(dataset):
        res = ranker.rank(RankRequest(cart=(CartLine(anchor),), strategy=Strategy.CROSS_SELL, limit=10))
        partner = complement.get(cat_of[anchor])
        assert res.cross_sell and not res.fallback
        for item in res.cross_sell:
            assert item.category != cat_of[anchor]
            total += 1
            hits += item.category == partner
    # chance is about 1 / (n_cats - 1) of the list; the planted partner must dominate it
    assert hits / total > 4.0 / (n_cats - 1)


def test_up_sell_is_pricier_and_same_category(ranker, dataset):
    cat_of = dict(zip(dataset.catalog["item_id"], dataset.catalog["category"]))
    arts = ranker.arts
    n_lists = 0
    for anchor in _popular_anchors(dataset, 25):
        res = ranker.rank(RankRequest(cart=(CartLine(anchor),), strategy=Strategy.UP_SELL, limit=5,
                                      filters=Filters(uplift_min=1.2, uplift_max=3.0)))
        a_price = arts.price[arts.items.get(anchor)]
        for item in res.up_sell:
            assert item.category == cat_of[anchor]
            assert 1.2 <= item.price_uplift <= 3.0 + 1e-9
            assert item.price_uplift == pytest.approx(arts.price[arts.items.get(item.item_id)] / a_price, rel=1e-6)
        n_lists += bool(res.up_sell)
    assert n_lists >= 10


@pytest.mark.parametrize("uplift_min", [0.5, 1.0])
def test_an_uplift_min_at_or_below_one_admits_cheaper_items_only_as_fill(ranker, dataset, uplift_min):
    """What the proto says of Filters.uplift_min <= 1: the ranked up-sells are still
    strictly pricier than the anchor (retrieval proposes nothing else, and the model was
    trained on nothing else); an item at or below the anchor's price can only come from
    the popular fill of a short list, inside the band."""
    cheaper = 0
    for anchor in _popular_anchors(dataset, 25):
        res = ranker.rank(RankRequest(cart=(CartLine(anchor),), strategy=Strategy.UP_SELL, limit=10,
                                      filters=Filters(uplift_min=uplift_min)))  # fmt: skip
        for item in res.up_sell:
            assert item.price_uplift >= uplift_min - 1e-9
            if item.price_uplift <= 1.0:
                assert item.sources == ("popular",)
                cheaper += 1
        default = ranker.rank(RankRequest(cart=(CartLine(anchor),), strategy=Strategy.UP_SELL, limit=10))
        assert all(i.price_uplift > 1.0 for i in default.up_sell)
    if uplift_min < 1.0:  # the synthetic shop's categories are small enough to need the fill
        assert cheaper > 0


def test_scores_are_sorted_and_explanations_add_up(ranker, dataset):
    anchor = _popular_anchors(dataset, 1)[0]
    res = ranker.rank(RankRequest(cart=(CartLine(anchor),), limit=8, explain=True))
    for items in (res.cross_sell, res.up_sell):
        scores = [i.score for i in items]
        assert scores == sorted(scores, reverse=True)
    explained = [i for i in res.cross_sell if "popular" not in i.sources or i.reasons]
    assert explained and all(i.reasons for i in explained)
    for item in explained:
        assert all(r.contribution > 0 and r.text and r.feature in ranker.feature_names for r in item.reasons)


def test_retrieval_only_ranks_the_same_candidates(bundle_dir, dataset):
    anchor = _popular_anchors(dataset, 1)[0]
    ranker = Ranker.load(bundle_dir)
    probe = RankRequest(cart=(CartLine(anchor),), strategy=Strategy.CROSS_SELL)
    candidates = set(ranker.candidate_ids(probe)[0])
    req = probe.with_(limit=min(100, len(candidates)))
    full = ranker.rank(req)
    assert not full.fallback
    plain = Ranker.load(bundle_dir, retrieval_only=True).rank(req)
    assert {i.item_id for i in full.cross_sell} <= candidates
    assert {i.item_id for i in plain.cross_sell} <= candidates
    if len(candidates) <= 100:
        assert {i.item_id for i in full.cross_sell} == {i.item_id for i in plain.cross_sell}
    assert [i.item_id for i in full.cross_sell] != [i.item_id for i in plain.cross_sell]


def test_manifest_records_what_the_server_needs(bundle_dir):
    manifest = read_manifest(bundle_dir)
    assert manifest["feature_names"] and manifest["version"] and manifest["data_fingerprint"]
    assert {"model_cross_sell.txt", "model_up_sell.txt", "ann.idx", "cleaning_report.json"} <= set(manifest["files"])
    assert manifest["metrics"]["cross_sell_valid_ndcg@10"] > 0


@pytest.mark.parametrize("victim", ["model_cross_sell.txt", "ann.idx", "user_counts.npz", "items.json"])
def test_tampered_file_is_refused(bundle_dir, tmp_path, victim):
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    data = bytearray((copy / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / victim).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=victim):
        Ranker.load(copy)


def test_truncated_file_is_refused(bundle_dir, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    path = copy / "ann.idx"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(BundleError, match="ann.idx"):
        Ranker.load(copy)


def test_wrong_feature_list_is_refused(bundle_dir, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["feature_names"] = list(reversed(manifest["feature_names"]))
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="differ"):
        Ranker.load(copy)
    manifest["feature_names"] = manifest["feature_names"] + ["feature_from_the_future"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="feature_from_the_future"):
        Ranker.load(copy)


def test_missing_manifest_means_not_a_bundle(bundle_dir, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest"):
        Ranker.load(copy)


def test_failed_write_leaves_nothing_behind(tmp_path):
    out = tmp_path / "bundle"
    with pytest.raises(RuntimeError), atomic_bundle_dir(out) as tmp:
        (tmp / "half.bin").write_bytes(b"x" * 100)
        raise RuntimeError("disk full")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_bundle_is_not_overwritten_by_default(bundle_dir):
    with pytest.raises(BundleError, match="overwrite"), atomic_bundle_dir(bundle_dir):
        pass
    assert read_manifest(bundle_dir)


def test_the_ranking_core_imports_no_grpc():
    import subprocess
    import sys

    code = "import sys, xsell.ranking, xsell.retrieval; print('grpc' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_truncated_model_text_is_refused_before_lightgbm_sees_it(bundle_dir, tmp_path):
    from xsell.ranking.bundle import check_model_text

    model = (bundle_dir / "model_cross_sell.txt").read_bytes()
    check_model_text(bundle_dir / "model_cross_sell.txt")  # the whole file passes
    for fraction in (0.05, 0.3, 0.6, 0.9, 0.999):
        cut = tmp_path / f"cut-{fraction}.txt"
        cut.write_bytes(model[: int(len(model) * fraction)])
        with pytest.raises(BundleError, match=cut.name):
            check_model_text(cut)
    # a tree removed from the middle: the header's sizes no longer add up
    start = model.index(b"\nTree=1\n")
    end = model.index(b"\nTree=2\n")
    (tmp_path / "gap.txt").write_bytes(model[:start] + model[end:])
    with pytest.raises(BundleError, match="header says"):
        check_model_text(tmp_path / "gap.txt")


def test_bundle_directory_is_readable_by_others(bundle_dir):
    assert (bundle_dir.stat().st_mode & 0o755) == 0o755
