"""OCR for pages without a usable text layer (scans, text drawn as images): the text feeds the
BM25 channel and the page payload, marked as coming from OCR.

Two engines that install from the registries and run on CPU: Tesseract (Debian's
`tesseract-ocr` with language packs), used where it is installed, and RapidOCR (PP-OCR models as
ONNX inside its wheel, so always there). The default `auto` picks Tesseract when it is present:
measured against the text layer it makes fewer errors on English and French, RapidOCR on Chinese
(docs/QUALITY.md "OCR"; `bench/ocr.py` measures both).

OCR runs in the render worker (ingest/worker.py), the separate, memory- and time-limited process
that already parses the PDF, so a hostile image meets the same limits as a hostile PDF.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from rag.errors import UserError

ENGINES = ("auto", "rapidocr", "tesseract")
# Tesseract's packs for the corpus's languages (English, French, Simplified Chinese); the ones
# installed are used.
TESSERACT_LANGS = ("eng", "fra", "chi_sim")


@dataclass(frozen=True)
class OcrOptions:
    """What the render worker needs to OCR a page (sent to it as JSON)."""

    engine: str = "rapidocr"
    min_chars: int = 20  # pages with fewer visible characters in their text layer get OCR
    timeout: float = 60.0  # seconds for one page (Tesseract's subprocess; the worker's own
    # page timeout bounds RapidOCR)


class OcrUnavailable(UserError):
    """The configured OCR engine is not installed."""


class OcrEngine(Protocol):
    name: str

    def read(self, image: Image.Image, timeout: float) -> str:
        """The text of the page image, lines in reading order."""
        ...


class RapidOcr:
    """RapidOCR (onnxruntime): detection, angle classification and recognition, one thread."""

    name = "rapidocr"
    _lock = threading.Lock()  # one model per process; onnxruntime sessions are not re-entrant
    _engine: Any = None

    def read(self, image: Image.Image, timeout: float) -> str:
        import numpy as np

        with self._lock:
            if RapidOcr._engine is None:
                try:
                    from rapidocr_onnxruntime import RapidOCR
                except ImportError as exc:  # pragma: no cover - it is a dependency
                    raise OcrUnavailable(
                        "PAGERAG_OCR_ENGINE=rapidocr needs the rapidocr-onnxruntime package"
                    ) from exc
                # Two intra-op threads: the worker is one of several processes on the machine.
                RapidOcr._engine = RapidOCR(intra_op_num_threads=2, inter_op_num_threads=1)
            # The worker's own time limit bounds a call (no in-process timeout in onnxruntime).
            result, _ = RapidOcr._engine(np.asarray(image.convert("RGB")))
        return _lines([(box, text) for box, text, _score in result or []])


class Tesseract:
    """Tesseract 5 through its command line (a subprocess, so `timeout` holds)."""

    name = "tesseract"

    def __init__(self) -> None:
        binary = shutil.which("tesseract")
        if binary is None:
            raise OcrUnavailable(
                "PAGERAG_OCR_ENGINE=tesseract needs the tesseract command: install "
                "tesseract-ocr (and tesseract-ocr-fra, tesseract-ocr-chi-sim for those "
                "languages), or use PAGERAG_OCR_ENGINE=rapidocr"
            )
        self.binary = binary
        listed = subprocess.run(
            [binary, "--list-langs"], capture_output=True, text=True, timeout=30, check=False
        ).stdout.split()
        self.langs = "+".join(lang for lang in TESSERACT_LANGS if lang in listed) or "eng"

    def read(self, image: Image.Image, timeout: float) -> str:
        with tempfile.TemporaryDirectory(prefix="pagerag-ocr-") as tmp:
            path = Path(tmp) / "page.png"
            image.convert("L").save(path)
            done = subprocess.run(
                [self.binary, str(path), "stdout", "-l", self.langs, "--psm", "3"],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        if done.returncode != 0:
            raise RuntimeError(f"tesseract failed: {done.stderr.strip()[:200]}")
        return "\n".join(line.strip() for line in done.stdout.splitlines() if line.strip())


def engine(name: str) -> OcrEngine:
    """`auto`: Tesseract where it is installed (fewer errors on English and French, the
    measured winner there), else RapidOCR (always installed; the better one on Chinese)."""
    if name == "auto":
        name = "tesseract" if shutil.which("tesseract") else "rapidocr"
    if name == "rapidocr":
        return RapidOcr()
    if name == "tesseract":
        return Tesseract()
    raise OcrUnavailable(f"unknown OCR engine {name!r}; use one of: {', '.join(ENGINES)}")


def needs_ocr(text: str, min_chars: int) -> bool:
    """A page whose text layer has fewer than `min_chars` visible characters."""
    return len("".join(text.split())) < min_chars


def looks_blank(image: Image.Image) -> bool:
    """No ink at all (every pixel near white, or one flat colour): nothing to read, and OCR
    would spend its seconds on it. Cheap: the extrema of a small greyscale copy."""
    small = image.convert("L")
    small.thumbnail((256, 256))
    low, high = small.getextrema()  # one (min, max) pair: the image is greyscale
    return float(high) - float(low) < 24  # type: ignore[arg-type]  # typed as int | tuple


def _lines(boxes: list[tuple[Any, str]]) -> str:
    """Detected text boxes in reading order: rows top to bottom (boxes whose vertical centres
    are within half a line of each other share a row), each row left to right."""
    items = []
    for box, text in boxes:
        ys = [p[1] for p in box]
        xs = [p[0] for p in box]
        items.append(((min(ys) + max(ys)) / 2, max(ys) - min(ys), min(xs), text.strip()))
    items.sort()
    rows: list[list[tuple[float, str]]] = []
    row_y = None
    for y, height, x, text in items:
        if not text:
            continue
        if row_y is None or y - row_y > max(height, 1) / 2:
            rows.append([])
            row_y = y
        rows[-1].append((x, text))
    return "\n".join(" ".join(t for _, t in sorted(row)) for row in rows)
