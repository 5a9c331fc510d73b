"""Text and hybrid search on the labelled corpus questions, before and after OCR: the corpus is
ingested with OCR off, searched, then `fill_ocr` reads the pages without a text layer (what
`pagerag ocr` does) and the same questions are searched again.

    .venv/bin/python bench/ocr_quality.py ../shared/corpus --retriever /tmp/tiny-colqwen \
        --json docs/ocr_quality.json

The retriever only builds the index (a tiny random ColQwen2 is enough for text figures; hybrid
figures with it show the mechanics, not ColQwen2's quality). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import _common  # noqa: F401 - puts the project on sys.path
from _common import log, machine

from rag.config import Settings
from rag.eval.datasets import load_questions
from rag.eval.evaluate import evaluate
from rag.service import PageRAG

QUESTIONS = Path(__file__).resolve().parents[1] / "tests" / "data" / "corpus_questions.jsonl"


def run(corpus: Path, retriever: str, data: Path, engine: str) -> dict[str, Any]:
    base: dict[str, Any] = {
        "data_dir": data,
        "retriever_model": retriever,
        "device": "cpu",
        "render_dpi": 144,  # the default: OCR reads the ingested page images
        "max_visual_tokens": 64,
        "batch_size": 8,
    }
    dataset = load_questions(corpus, QUESTIONS)
    result: dict[str, Any] = {"machine": machine(), "questions": len(dataset.queries)}
    service = PageRAG(Settings(_env_file=None, **base, ocr_engine="off"))
    try:
        for mode in ("text", "hybrid"):
            log(f"before OCR: {mode}")
            report = evaluate(service, dataset, mode=mode)  # type: ignore[arg-type]
            result[f"before_{mode}"] = _summary(report)
    finally:
        service.close()
    service = PageRAG(Settings(_env_file=None, **base, ocr_engine=engine))
    try:
        started = time.perf_counter()
        ocr = service.fill_ocr(
            lambda done, total: log(f"OCR {done}/{total}") if done % 50 == 0 else None
        )
        seconds = time.perf_counter() - started
        result["ocr"] = {
            "engine": engine,
            "pages_checked": ocr.checked,
            "pages_read": ocr.read,
            "failed": [f"{f.source}: {f.error}" for f in ocr.failed],
            "seconds": round(seconds, 1),
        }
        for mode in ("text", "hybrid"):
            log(f"after OCR: {mode}")
            report = evaluate(service, dataset, mode=mode)  # type: ignore[arg-type]
            result[f"after_{mode}"] = _summary(report)
        result["ocr_pages"] = sorted(
            f"{h.source} p.{h.page}"
            for doc in service.documents()
            for n in service.index.page_ids(doc.doc_id)
            if (h := service.index.page(doc.doc_id, n)) is not None and h.text_origin == "ocr"
        )
    finally:
        service.close()
    return result


def _summary(report: Any) -> dict[str, Any]:
    missed = [q for q in report.per_query if not q["first_relevant_rank"]]
    return {
        "metrics": {k: round(v, 3) for k, v in report.metrics.items()},
        "missed_at_10": [f"{q['relevant'][0]}: {q['question']}" for q in missed],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--retriever", required=True, help="a ColQwen2 checkpoint directory")
    parser.add_argument("--engine", default="rapidocr")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pagerag-ocr-quality-") as tmp:
        result = run(args.corpus, args.retriever, Path(tmp), args.engine)
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
