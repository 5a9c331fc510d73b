"""A PDF of many pages that each take PDFium a while to draw: an ingestion that lasts long
enough to act on while it runs (delete, kill the server), built in milliseconds."""

from __future__ import annotations

from pathlib import Path

from tests.hostile import _stream, raw_pdf


def slow_pages_pdf(pages: int, strokes: int = 40_000, salt: str = "") -> bytes:
    """`pages` pages sharing one content stream of `strokes` lines (small once compressed);
    `salt` makes the bytes, and so the document id, differ."""
    ops = b"".join(
        b"%d %d m %d %d l S\n" % (i % 600, (i * 3) % 700, (i * 7) % 600, (i * 5) % 700)
        for i in range(2000)
    )
    content = 2 + pages + 1
    kids = b" ".join(b"%d 0 R" % (3 + i) for i in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages),
        *(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R"
            b" /Resources << >> >>" % content
            for _ in range(pages)
        ),
        _stream(ops * (strokes // 2000)),
        b"<< /Title (%s) >>" % salt.encode("ascii"),
    ]
    return raw_pdf(objects)


def write_slow_pdf(path: Path, pages: int, strokes: int = 40_000, salt: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(slow_pages_pdf(pages, strokes, salt or path.name))
    return path
