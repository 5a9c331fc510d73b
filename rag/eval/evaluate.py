"""Run an `EvalDataset` through a `PageRAG` service: ingest, search every question, score.

The service decides everything a user would get (backend, mode, pooling, prefetch), so the
figures describe PageRAG as configured, not a separate re-implementation of its search.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from rag.eval.datasets import EvalDataset, page_key
from rag.eval.metrics import (
    anls,
    contains_answer,
    exact_match,
    first_relevant_rank,
    latency_ms,
    retrieval_metrics,
)

if TYPE_CHECKING:
    from ingest.runner import IngestProgress
    from rag.config import SearchMode
    from rag.service import PageRAG

QueryProgress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class EvalReport:
    dataset: str
    kind: str
    mode: str
    k: int
    backend: str
    retriever_model: str
    questions: int
    pages: int  # pages in the index searched
    ingest_seconds: float
    metrics: dict[str, float]  # ndcg@5, ndcg@10, recall@1/5/10, mrr@10
    latency: dict[str, float]  # p50_ms, p95_ms, mean_ms of one search, query embedding included
    answers: dict[str, Any] | None = None  # with --answers
    warnings: list[str] = field(default_factory=list)
    per_query: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    service: PageRAG,
    dataset: EvalDataset,
    *,
    mode: SearchMode,
    k: int = 10,
    answers: bool = False,
    on_ingest: Callable[[IngestProgress], None] | None = None,
    on_query: QueryProgress | None = None,
) -> EvalReport:
    """Ingest `dataset.root` (incrementally), search each question, compute the metrics."""
    notify = on_query or (lambda _stage, _done, _total: None)
    started = time.perf_counter()
    report = service.ingest([dataset.root], on_progress=on_ingest)
    warnings = [f"{f.source}: not ingested ({f.error})" for f in report.failed]
    for key, text in dataset.page_texts.items():
        doc_id, page = key.rsplit(":", 1)
        service.index.set_page_text(doc_id, int(page), text)
    if dataset.page_texts:
        service.index.flush()
    ingest_seconds = time.perf_counter() - started
    warnings += _missing_pages(service, dataset)

    if mode != "text":
        service.retriever  # noqa: B018 - load the model first: latency is per search, not load
    run: dict[str, list[str]] = {}
    seconds: list[float] = []
    per_query: list[dict[str, Any]] = []
    for done, query in enumerate(dataset.queries, 1):
        t0 = time.perf_counter()
        hits = service.search(query.text, k, mode=mode)
        seconds.append(time.perf_counter() - t0)
        keys = [page_key(h.doc_id, h.page) for h in hits]
        run[query.qid] = keys
        relevant = dataset.qrels[query.qid]
        per_query.append(
            {
                "id": query.qid,
                "question": query.text,
                "relevant": [dataset.labels.get(key, key) for key in relevant],
                "first_relevant_rank": first_relevant_rank(relevant, keys),
                "top": [f"{h.source} p.{h.page}" for h in hits[:3]],
            }
        )
        notify("search", done, len(dataset.queries))

    return EvalReport(
        dataset=dataset.name,
        kind=dataset.kind,
        mode=mode,
        k=k,
        backend=service.index.backend,
        retriever_model=service.settings.retriever_model,
        questions=len(dataset.queries),
        pages=service.index.count(),
        ingest_seconds=round(ingest_seconds, 3),
        metrics=retrieval_metrics(dataset.qrels, run),
        latency=latency_ms(seconds),
        answers=_score_answers(service, dataset, mode, notify) if answers else None,
        warnings=warnings,
        per_query=per_query,
    )


def _missing_pages(service: PageRAG, dataset: EvalDataset) -> list[str]:
    """Relevant pages that are not in the index: those questions cannot be answered."""
    stored: dict[str, set[int]] = {}
    missing = []
    for qid, pages in dataset.qrels.items():
        for key in pages:
            doc_id, page = key.rsplit(":", 1)
            if doc_id not in stored:
                stored[doc_id] = set(service.index.page_ids(doc_id))
            if int(page) not in stored[doc_id]:
                label = dataset.labels.get(key, key)
                missing.append(f"question {qid}: its page {label} is not in the index")
    return missing


def _score_answers(
    service: PageRAG, dataset: EvalDataset, mode: SearchMode, notify: QueryProgress
) -> dict[str, Any]:
    """Generate an answer to every question that has gold answers and score it."""
    graded = [q for q in dataset.queries if q.answers]
    rows: list[dict[str, Any]] = []
    for done, query in enumerate(graded, 1):
        answer = service.ask(query.text, mode=mode)
        rows.append(
            {
                "id": query.qid,
                "gold": list(query.answers),
                "answer": answer.text,
                "exact_match": exact_match(answer.text, query.answers),
                "anls": anls(answer.text, query.answers),
                "contains": contains_answer(answer.text, query.answers),
                "generation_seconds": answer.generation_seconds,
            }
        )
        notify("answer", done, len(graded))
    gen = [r["generation_seconds"] for r in rows]
    return {
        "questions": len(rows),
        "exact_match": _mean(r["exact_match"] for r in rows),
        "anls": _mean(r["anls"] for r in rows),
        "contains": _mean(r["contains"] for r in rows),
        "generation_seconds_mean": _mean(gen),
        "generation_seconds_p50": statistics.median(gen) if gen else 0.0,
        "per_question": rows,
    }


def _mean(values: Any) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else 0.0
