"""Small, deterministic hostile files, written byte by byte (a correct xref unless broken on
purpose), so the tests need nothing but Python to make them."""

from __future__ import annotations

import zlib
from pathlib import Path


def raw_pdf(objects: list[bytes], *, root: int = 1) -> bytes:
    """A PDF whose object i+1 is objects[i], with a valid cross-reference table."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        root,
        xref,
    )
    return bytes(out)


def _stream(data: bytes, extra: bytes = b"") -> bytes:
    packed = zlib.compress(data, 9)
    return b"<< /Length %d /Filter /FlateDecode %s >>\nstream\n" % (len(packed), extra) + (
        packed + b"\nendstream"
    )


def one_page_pdf(
    mediabox: bytes = b"[0 0 612 792]",
    content: bytes = b"",
    resources: bytes = b"<< >>",
    extra_objects: list[bytes] | None = None,
) -> bytes:
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox %s /Contents 4 0 R /Resources %s >>"
        % (mediabox, resources),
        _stream(content),
    ]
    return raw_pdf(objects + (extra_objects or []))


def zero_pages_pdf() -> bytes:
    return raw_pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"])


def page_tree_loop_pdf() -> bytes:
    """The page tree's only kid is the tree itself."""
    return raw_pdf(
        [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [2 0 R] /Count 1 >>"]
    )


def slow_pdf(strokes: int = 200_000) -> bytes:
    """A page whose (well-compressed) content stream takes PDFium seconds to draw."""
    ops = b"".join(
        b"%d %d m %d %d l S\n" % (i % 600, i % 700, (i * 7) % 600, (i * 3) % 700)
        for i in range(2000)
    )
    return one_page_pdf(content=ops * (strokes // 2000))


def image_bomb_pdf(side: int = 40_000) -> bytes:
    """A page showing a side x side grey image that compresses to almost nothing."""
    raw = zlib.compressobj(9)
    row = bytes(side)
    packed = b"".join(raw.compress(row) for _ in range(side)) + raw.flush()
    image = (
        b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray "
        b"/BitsPerComponent 8 /Length %d /Filter /FlateDecode >>\nstream\n"
        % (side, side, len(packed))
        + packed
        + b"\nendstream"
    )
    return one_page_pdf(
        content=b"q 612 0 0 792 0 0 cm /Im1 Do Q",
        resources=b"<< /XObject << /Im1 5 0 R >> >>",
        extra_objects=[image],
    )


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def png_bytes(width: int, height: int) -> bytes:
    """A valid greyscale PNG of any size, built row by row so making it costs no memory."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    packer = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte + pixels
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
