"""The metric code on cases small enough to compute by hand."""

from __future__ import annotations

from math import log2

import pytest

from rag.eval.metrics import (
    anls,
    contains_answer,
    exact_match,
    first_relevant_rank,
    latency_ms,
    levenshtein,
    normalize_answer,
    retrieval_metrics,
)


def test_three_queries_by_hand() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1, "c": 1}, "q3": {"d": 1}}
    run = {
        "q1": ["x", "a", "y"],  # the relevant page at rank 2
        "q2": ["b", "x", "y", "z", "w", "c"],  # ranks 1 and 6
        # q3 retrieved nothing: it still counts, as 0 everywhere
    }
    m = retrieval_metrics(qrels, run)
    ideal2 = 1 + 1 / log2(3)  # two relevant pages at ranks 1 and 2
    ndcg5 = [1 / log2(3), 1 / ideal2, 0.0]
    ndcg10 = [1 / log2(3), (1 + 1 / log2(7)) / ideal2, 0.0]
    assert m["ndcg@5"] == pytest.approx(sum(ndcg5) / 3, abs=1e-4)
    assert m["ndcg@10"] == pytest.approx(sum(ndcg10) / 3, abs=1e-4)
    assert m["recall@1"] == pytest.approx((0 + 0.5 + 0) / 3)
    assert m["recall@5"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["recall@10"] == pytest.approx((1 + 1 + 0) / 3)
    assert m["mrr@10"] == pytest.approx((0.5 + 1 + 0) / 3)


def test_graded_relevance_uses_linear_gains() -> None:
    # trec_eval's nDCG: gain = relevance; ViDoRe v3 grades pages 1 and 2.
    m = retrieval_metrics({"q": {"e": 2, "f": 1}}, {"q": ["f", "e"]})
    dcg = 1 + 2 / log2(3)
    ideal = 2 + 1 / log2(3)
    assert m["ndcg@5"] == pytest.approx(dcg / ideal, abs=1e-4)
    assert m["recall@1"] == pytest.approx(0.5) and m["mrr@10"] == 1.0


def test_rank_order_is_kept_and_beyond_the_cutoff_does_not_count() -> None:
    # Handed the same score, trec_eval would put "z" before "a" (ties go by document id,
    # descending); the rank the user saw is what counts.
    assert retrieval_metrics({"q": {"a": 1}}, {"q": ["a", "z"]})["mrr@10"] == 1.0
    late = {"q": [f"x{i}" for i in range(10)] + ["a"]}  # rank 11
    m = retrieval_metrics({"q": {"a": 1}}, late)
    assert m["mrr@10"] == 0.0 and m["recall@10"] == 0.0 and m["ndcg@10"] == 0.0
    # A page repeated in a run counts once (at its first rank).
    assert retrieval_metrics({"q": {"a": 1}}, {"q": ["x", "x", "a"]})["mrr@10"] == 0.5
    # Results for queries without judgements are ignored.
    assert retrieval_metrics({"q": {"a": 1}}, {"q": ["a"], "other": ["a"]})["recall@1"] == 1.0
    with pytest.raises(ValueError, match="no queries"):
        retrieval_metrics({}, {})


def test_first_relevant_rank() -> None:
    assert first_relevant_rank({"a": 1}, ["x", "a"]) == 2
    assert first_relevant_rank({"a": 1}, ["x"]) is None
    assert first_relevant_rank({"a": 0}, ["a"]) is None


def test_latency_percentiles() -> None:
    lat = latency_ms([0.001, 0.002, 0.003, 0.004])
    assert lat["p50_ms"] == pytest.approx(2.5)
    assert lat["p95_ms"] == pytest.approx(3.85)  # linear interpolation: 3 + 0.85 * 1
    assert lat["mean_ms"] == pytest.approx(2.5)
    assert latency_ms([]) == {"p50_ms": 0.0, "p95_ms": 0.0, "mean_ms": 0.0}


def test_answer_scores() -> None:
    assert levenshtein("kitten", "sitting") == 3 and levenshtein("", "abc") == 3
    assert normalize_answer("  The  Total is 632 [1, 2]. ") == "the total is 632"
    assert exact_match("Alouette.", ["alouette"]) == 1.0
    assert exact_match("４５０００元", ["45000元"]) == 1.0  # full-width digits fold (NFKC)
    assert exact_match("633", ["632", "six hundred"]) == 0.0
    assert anls("632", ["632"]) == 1.0
    assert anls("633", ["632"]) == pytest.approx(1 - 1 / 3)
    assert anls("abc", ["xyz"]) == 0.0  # distance 1.0 is above the 0.5 threshold
    assert anls("16h05", ["16 h 05", "16h05"]) == 1.0  # the best gold counts
    assert anls("The total is 632 [1].", ["632"]) == 0.0
    assert contains_answer("The total is 632 [1].", ["632"]) == 1.0
    assert contains_answer("No idea.", ["632"]) == 0.0
