"""The render worker: a child process that opens and renders files for ingest/sandbox.py.

Protocol: one JSON message per line, requests on stdin, replies on stdout.
  {"op": "inspect", "path", "kind", "password", "limits"}   -> {"pages", "title"} | {"error"}
  {"op": "render", ..., "renderer", "dpi", "skip", "first", "out_dir"}
      -> {"pages": [the page numbers it will render, in order]} | {"error"}
      then per page {"page", "image", "width", "height", "text", "bytes"}
                  | {"page", "skipped": reason} | {"error"} (the whole file fails),
      and after each page but the last it waits for {"op": "next"} or {"op": "stop"}.
The lockstep keeps exactly one page in flight, so the parent always knows which page a hang
or crash belongs to and can stop at a budget without leaving images it will not index.
It runs with an address-space limit and in its own process group, so the parent can kill it
(and any pdftoppm it started) as a whole when a page hangs.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image

from ingest.ocr import OcrEngine, OcrOptions, engine, looks_blank, needs_ocr
from ingest.render import (
    MAX_TEXT_CHARS,
    PageError,
    PageSource,
    RenderError,
    RenderLimits,
    inspect,
)


def _limit_memory(megabytes: int) -> None:
    if megabytes > 0:
        limit = megabytes * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _reply(out: Any, message: dict[str, Any]) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def _handle(request: dict[str, Any], out: Any) -> None:
    path = Path(request["path"])
    kind = request["kind"]
    password = request.get("password")
    limits = RenderLimits(**request.get("limits", {}))
    if request["op"] == "inspect":
        _reply(out, asdict(inspect(path, kind, password, limits)))
        return
    ocr = OcrOptions(**request["ocr"]) if request.get("ocr") else None
    if request["op"] == "ocr":  # a stored page image (`pagerag ocr`)
        assert ocr is not None
        with Image.open(path) as image:
            image.load()
            _reply(out, {"text": read_text(image, ocr)})
        return
    out_dir = Path(request["out_dir"])
    with PageSource(
        path,
        kind,
        renderer=request["renderer"],
        dpi=request["dpi"],
        skip=set(request.get("skip", [])),
        first=request.get("first", 1),
        password=password,
        limits=limits,
    ) as source:
        _reply(out, {"pages": source.numbers})
        for i, number in enumerate(source.numbers):
            _reply(out, _render_one(source, number, out_dir, ocr))
            if i + 1 == len(source.numbers) or _next_command(sys.stdin) != "next":
                return


def image_path(out_dir: Path, number: int) -> Path:
    """Where page `number`'s image is written (the API serves it from the same name)."""
    return out_dir / f"p{number:04d}.png"


def _render_one(
    source: PageSource, number: int, out_dir: Path, ocr: OcrOptions | None
) -> dict[str, Any]:
    try:
        page = source.render(number)
    except PageError as exc:
        return {"page": number, "skipped": str(exc)}
    except MemoryError:  # one huge page; the next may be fine (the limit is per process)
        return {
            "page": number,
            "skipped": f"page {number} ran out of memory while rendering "
            "(PAGERAG_RENDER_MEMORY_MB)",
        }
    except Exception as exc:  # a renderer bug on this page; the other pages may be fine
        return {"page": number, "skipped": f"page {number}: rendering failed ({exc!r})"}
    text, origin = page.text, "pdf"
    if ocr is not None and needs_ocr(text, ocr.min_chars) and not looks_blank(page.image):
        try:
            text, origin = read_text(page.image, ocr), "ocr"
        except Exception as exc:  # the page is still indexed, for visual search
            print(f"page {number}: OCR failed ({exc!r})", file=sys.stderr)
    target = image_path(out_dir, number)
    tmp = target.with_suffix(".tmp")
    page.image.save(tmp, format="PNG", compress_level=3)
    os.replace(tmp, target)  # never a half-written page image
    return {
        "page": number,
        "image": str(target),
        "width": page.image.width,
        "height": page.image.height,
        "text": text,
        "text_origin": origin,
        "bytes": target.stat().st_size,
    }


_ENGINES: dict[str, OcrEngine] = {}  # loaded once per worker: RapidOCR's models take ~1 s


def read_text(image: Image.Image, ocr: OcrOptions) -> str:
    if ocr.engine not in _ENGINES:
        _ENGINES[ocr.engine] = engine(ocr.engine)
    return _ENGINES[ocr.engine].read(image, ocr.timeout)[:MAX_TEXT_CHARS]


def _next_command(stdin: Any) -> str:
    line = stdin.readline()
    return json.loads(line).get("op", "stop") if line.strip() else "stop"


def main() -> None:
    _limit_memory(int(os.environ.get("PAGERAG_WORKER_MEMORY_MB", "0")))
    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints from libraries must not corrupt the protocol
    while line := sys.stdin.readline():
        request = json.loads(line)
        try:
            _handle(request, out)
        except RenderError as exc:
            _reply(out, {"error": str(exc)})
        except MemoryError:
            _reply(out, {"error": "rendering ran out of memory (PAGERAG_RENDER_MEMORY_MB)"})
        except Exception as exc:  # a renderer bug is this file's failure, not the worker's
            _reply(out, {"error": f"rendering failed ({type(exc).__name__}: {exc})"})


if __name__ == "__main__":
    main()
