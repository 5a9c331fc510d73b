"""The render worker: a child process that opens and renders files for ingest/sandbox.py.

Protocol: one JSON request per line on stdin, JSON replies one per line on stdout.
  {"op": "inspect", "path", "kind", "password", "limits"}   -> {"pages", "title"} | {"error"}
  {"op": "render", ..., "renderer", "dpi", "skip", "out_dir"} -> {"page", "image", "width",
      "height", "text"} per page, then {"done": true} | {"error", "page"}
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

from ingest.render import RenderError, RenderLimits, inspect, iter_pages


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
    out_dir = Path(request["out_dir"])
    pages = iter_pages(
        path,
        kind,
        renderer=request["renderer"],
        dpi=request["dpi"],
        skip=set(request.get("skip", [])),
        password=password,
        limits=limits,
    )
    for page in pages:
        image_path = out_dir / f"p{page.number:04d}.png"
        tmp = image_path.with_suffix(".tmp")
        page.image.save(tmp, format="PNG", compress_level=3)
        os.replace(tmp, image_path)  # never a half-written page image
        _reply(
            out,
            {
                "page": page.number,
                "image": str(image_path),
                "width": page.image.width,
                "height": page.image.height,
                "text": page.text,
            },
        )
    _reply(out, {"done": True})


def main() -> None:
    _limit_memory(int(os.environ.get("PAGERAG_WORKER_MEMORY_MB", "0")))
    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints from libraries must not corrupt the protocol
    for line in sys.stdin:
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
