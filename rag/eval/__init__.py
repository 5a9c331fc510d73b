"""Retrieval evaluation: datasets (questions.jsonl, ViDoRe), metrics (ir-measures), a runner.

`pagerag eval` (rag/cli.py) is the command line; `evaluate(service, dataset, mode=...)` the API.
"""

from __future__ import annotations

from rag.eval.datasets import (
    DatasetError,
    EvalDataset,
    EvalQuery,
    load_questions,
    load_vidore,
    open_dataset,
    page_key,
)
from rag.eval.evaluate import EvalReport, evaluate
from rag.eval.metrics import MEASURES, anls, exact_match, latency_ms, retrieval_metrics

__all__ = [
    "MEASURES",
    "DatasetError",
    "EvalDataset",
    "EvalQuery",
    "EvalReport",
    "anls",
    "evaluate",
    "exact_match",
    "latency_ms",
    "load_questions",
    "load_vidore",
    "open_dataset",
    "page_key",
    "retrieval_metrics",
]
