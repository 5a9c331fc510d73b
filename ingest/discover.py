"""Find the files to ingest, recognise them by content, and hash them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

EXTENSIONS = {".pdf", ".png", ".jpg", ".jpeg"}
_CHUNK = 1 << 20


@dataclass(frozen=True)
class SourceFile:
    path: Path  # absolute, resolved
    source: str  # what users see: the path relative to the root it was found under


def discover(paths: Iterable[Path]) -> tuple[list[SourceFile], list[dict[str, str]]]:
    """Expand files and folders (recursively) into source files; missing paths become errors.

    Folders contribute files with a PDF or image extension; a file named explicitly is always
    taken, and its content decides later whether it can be read.
    """
    found: dict[Path, SourceFile] = {}
    errors: list[dict[str, str]] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            root = path.resolve()
            for file in sorted(root.rglob("*")):
                if file.is_file() and file.suffix.lower() in EXTENSIONS:
                    resolved = file.resolve()
                    found.setdefault(
                        resolved, SourceFile(resolved, file.relative_to(root).as_posix())
                    )
        elif path.is_file():
            resolved = path.resolve()
            found.setdefault(resolved, SourceFile(resolved, path.name))
        else:
            errors.append({"source": str(raw), "error": "no such file or folder"})
    return list(found.values()), errors


def sniff_kind(head: bytes) -> str | None:
    """'pdf', 'image' or None, from the first bytes of a file (never from its name)."""
    if head.lstrip(b"\x00\t\n\r ")[:5] == b"%PDF-" or b"%PDF-" in head[:1024]:
        return "pdf"
    if head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff"):
        return "image"
    return None


def describe_content(head: bytes) -> str:
    """A short guess at what a file that is neither PDF nor image is, for error messages."""
    if not head:
        return "the file is empty"
    text = head[:512].lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html")):
        return "the file is HTML, not a PDF or image"
    if text.startswith(b"pk\x03\x04"):
        return "the file is a ZIP archive (or an Office document), not a PDF or image"
    if b"\x00" not in head[:512]:
        return "the file is plain text, not a PDF or image"
    return "the file is not a PDF, PNG or JPEG (unrecognised content)"


def file_sha256(path: Path) -> tuple[str, bytes]:
    """SHA-256 of the file's bytes (the document id) and its first KiB (to sniff the kind)."""
    digest = hashlib.sha256()
    head = b""
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            if not head:
                head = chunk[:1024]
            digest.update(chunk)
    return digest.hexdigest(), head
