"""OCR engines on the real corpus, without any model download: pages that have a text layer are
rendered to images, read by each engine, and the OCR text is scored against the text layer
(character error rate, word recall), with the time per page.

    .venv/bin/python bench/ocr.py ../shared/corpus --dpi 144 --pages 36 --json docs/ocr.json

Timings are reported as a ratio to rendering the same page (measured in the same run), as
well as in seconds, since the machines here are shared.
"""

from __future__ import annotations

import argparse
import json
import re
import time
import unicodedata
from pathlib import Path
from typing import Any

import _common  # noqa: F401 - puts the project on sys.path
import pypdfium2 as pdfium
from _common import machine
from rapidfuzz.distance import Levenshtein

from ingest.ocr import ENGINES, engine

CJK = re.compile(r"[\u3400-\u9fff]")
FRENCH = re.compile(r"\b(le|la|les|des|du|est|une|pour|dans|sont)\b", re.IGNORECASE)


def language(text: str) -> str:
    if len(CJK.findall(text)) > 20:
        return "zh"
    return "fr" if len(FRENCH.findall(text)) > 15 else "en"


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(text.split())


def words(text: str, lang: str) -> list[str]:
    if lang == "zh":  # no spaces between words: score Chinese characters one by one
        return CJK.findall(text) + re.findall(r"[a-z0-9]{2,}", text)
    return re.findall(r"\w{2,}", text)


def score(reference: str, ocr: str, lang: str) -> tuple[float, float]:
    ref, hyp = normalise(reference), normalise(ocr)
    cer = Levenshtein.distance(ref, hyp) / max(len(ref), 1)
    wanted, found = words(ref, lang), set(words(hyp, lang))
    recall = sum(w in found for w in wanted) / max(len(wanted), 1)
    return min(cer, 1.0), recall


def pages(corpus: Path, dpi: int, limit: int) -> list[dict[str, Any]]:
    """Text-layer pages of the corpus, rendered, spread over documents and languages."""
    picked: list[dict[str, Any]] = []
    per_lang: dict[str, int] = {}
    for path in sorted(corpus.glob("*.pdf")):
        try:
            pdf = pdfium.PdfDocument(path)
        except pdfium.PdfiumError:
            continue
        for number in range(min(len(pdf), 2)):  # two pages a document at most
            page = pdf[number]
            textpage = page.get_textpage()
            text = textpage.get_text_bounded().replace("\r\n", "\n")
            textpage.close()
            if len("".join(text.split())) < 200:
                continue
            lang = language(text)
            if per_lang.get(lang, 0) >= limit // 2 and lang == "en":
                continue
            started = time.perf_counter()
            image = page.render(scale=dpi / 72).to_pil()
            render_s = time.perf_counter() - started
            per_lang[lang] = per_lang.get(lang, 0) + 1
            picked.append(
                {"source": f"{path.name}#{number + 1}", "lang": lang, "text": text,
                 "image": image, "render_s": render_s}
            )  # fmt: skip
        pdf.close()
    return picked[:limit] if len(picked) <= limit else _spread(picked, limit)


def _spread(items: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    keep = [p for p in items if p["lang"] != "en"]
    english = [p for p in items if p["lang"] == "en"]
    step = max(1, len(english) // max(limit - len(keep), 1))
    return keep + english[::step][: max(limit - len(keep), 0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--dpi", type=int, default=144)
    parser.add_argument("--pages", type=int, default=36)
    parser.add_argument("--engines", default=",".join(e for e in ENGINES if e != "auto"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    sample = pages(args.corpus, args.dpi, args.pages)
    langs = sorted({p["lang"] for p in sample})
    print(f"{len(sample)} pages at {args.dpi} dpi: " + ", ".join(
        f"{lang} {sum(p['lang'] == lang for p in sample)}" for lang in langs))  # fmt: skip
    results: dict[str, Any] = {"machine": machine(), "dpi": args.dpi, "pages": len(sample)}
    render_s = sum(p["render_s"] for p in sample)
    for name in args.engines.split(","):
        reader = engine(name)
        reader.read(sample[0]["image"], 120)  # load its models outside the timing
        rows = []
        for page in sample:
            started = time.perf_counter()
            text = reader.read(page["image"], 120)
            seconds = time.perf_counter() - started
            cer, recall = score(page["text"], text, page["lang"])
            rows.append({"source": page["source"], "lang": page["lang"], "cer": cer,
                         "word_recall": recall, "seconds": seconds})  # fmt: skip
        total = sum(r["seconds"] for r in rows)
        summary: dict[str, Any] = {
            "seconds_per_page": total / len(rows),
            "pages_per_second": len(rows) / total,
            "ratio_to_render": total / render_s,
        }
        for lang in [*langs, "all"]:
            chosen = [r for r in rows if lang in ("all", r["lang"])]
            summary[lang] = {
                "pages": len(chosen),
                "cer": sum(r["cer"] for r in chosen) / len(chosen),
                "word_recall": sum(r["word_recall"] for r in chosen) / len(chosen),
            }
        results[name] = {"summary": summary, "pages": rows}
        print(
            f"{name:10s} {summary['seconds_per_page']:.2f} s/page "
            f"({summary['ratio_to_render']:.0f}x rendering) | "
            + " | ".join(
                f"{lang}: CER {summary[lang]['cer']:.3f} recall {summary[lang]['word_recall']:.3f}"
                for lang in [*langs, "all"]
            )
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
