"""Retrieval metrics (through ir-measures), latency percentiles and answer scores.

Runs are ranked lists of page keys ("<doc_id>:<page>"), qrels map each query to its relevant
page keys with a graded relevance (1 = relevant; ViDoRe v3 also uses 2).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

import ir_measures
import numpy as np
from ir_measures import RR, R, nDCG

Qrels = Mapping[str, Mapping[str, int]]  # query id -> {page key: relevance}
Run = Mapping[str, Sequence[str]]  # query id -> page keys, best first

# The figures `pagerag eval` reports, named as ir-measures names them (as in the ViDoRe and
# BEIR leaderboards: nDCG@5 is ViDoRe's headline figure).
MEASURES = {
    "ndcg@5": nDCG @ 5,
    "ndcg@10": nDCG @ 10,
    "recall@1": R @ 1,
    "recall@5": R @ 5,
    "recall@10": R @ 10,
    "mrr@10": RR @ 10,
}


def retrieval_metrics(qrels: Qrels, run: Run) -> dict[str, float]:
    """Mean of each measure over every query in `qrels` (a query without results scores 0).

    Scores handed to ir-measures are minus the rank, not the search scores: trec_eval re-sorts
    by score and breaks ties by document id, which would reorder equal RRF or BM25 scores;
    the rank is what a user sees, so it is what gets measured.
    """
    if not qrels:
        raise ValueError("no queries with relevance judgements to evaluate")
    judgements = [
        ir_measures.Qrel(qid, key, int(rel))
        for qid, pages in qrels.items()
        for key, rel in pages.items()
    ]
    scored = [
        ir_measures.ScoredDoc(qid, key, -float(rank))
        for qid, keys in run.items()
        if qid in qrels
        for rank, key in enumerate(_unique(keys), 1)
    ]
    per_query: dict[str, dict[str, float]] = {name: {} for name in MEASURES}
    names = {measure: name for name, measure in MEASURES.items()}
    for metric in ir_measures.iter_calc(list(MEASURES.values()), judgements, scored):
        per_query[names[metric.measure]][metric.query_id] = metric.value
    # Average over every judged query ourselves: a query the engine answered with nothing
    # counts as 0 everywhere, whatever the backend does with queries missing from the run.
    return {
        name: float(sum(values.get(qid, 0.0) for qid in qrels) / len(qrels))
        for name, values in per_query.items()
    }


def first_relevant_rank(relevant: Mapping[str, int], keys: Sequence[str]) -> int | None:
    """1-based rank of the first relevant page in `keys`, None when none was retrieved."""
    for rank, key in enumerate(_unique(keys), 1):
        if relevant.get(key, 0) > 0:
            return rank
    return None


def latency_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p95 and mean of per-query latencies, in milliseconds."""
    if not seconds:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "mean_ms": 0.0}
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "mean_ms": float(ms.mean()),
    }


# -- answers --------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """Case-, width- and space-insensitive form, page labels like [1] removed.

    NFKC folds full-width digits and punctuation (as in CJK documents) to their usual form.
    """
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(r"\[\d+(?:\s*[,;]\s*\d+)*\]", " ", text)  # the generator's page citations
    text = " ".join(text.lower().split())
    return text.strip(" .,;:!?\"'")


def exact_match(prediction: str, golds: Iterable[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def contains_answer(prediction: str, golds: Iterable[str]) -> float:
    """1.0 when a normalised gold answer occurs inside the normalised prediction.

    Generators answer in sentences ("The total was 632 [1]."), where exact match is 0 even
    when the figure is right; this shows whether it is there.
    """
    pred = normalize_answer(prediction)
    return float(any(normalize_answer(g) and normalize_answer(g) in pred for g in golds))


def anls(prediction: str, golds: Iterable[str], threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity of one answer (DocVQA's metric).

    max over golds of 1 - distance / max(len) when that normalised distance is below
    `threshold`, else 0 (Biten et al., 2019).
    """
    pred = normalize_answer(prediction)
    best = 0.0
    for gold in golds:
        ref = normalize_answer(gold)
        longest = max(len(pred), len(ref))
        if longest == 0:
            best = max(best, 1.0)
            continue
        distance = levenshtein(pred, ref) / longest
        if distance < threshold:
            best = max(best, 1.0 - distance)
    return best


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _unique(keys: Iterable[str]) -> list[str]:
    # The same page twice in a run (it cannot happen with one point per page, but a run
    # built by hand can) would count twice; trec_eval rejects duplicates anyway.
    return list(dict.fromkeys(keys))
