"""Find the files to ingest, recognise them by content, and hash them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rag.types import FileError

EXTENSIONS = {".pdf", ".png", ".jpg", ".jpeg"}
_CHUNK = 1 << 20


@dataclass(frozen=True)
class SourceFile:
    path: Path  # absolute, resolved
    source: str  # what users see: the path relative to the root it was found under


@dataclass(frozen=True)
class Shard:
    """Part `index` (1-based) of `count`: one ingestion worker's share of the files.

    A file belongs to the shard its source path hashes to, so workers given the same folder
    and `--shard 1/N` ... `--shard N/N` split it with no coordination: every file goes to
    exactly one worker, the same one on every run and every machine (SHA-256 of the path,
    not Python's per-process salted `hash()`).
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 1 <= I <= N")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """ "I/N" -> Shard(I, N); a ValueError that shows the expected form otherwise."""
        index, sep, count = text.strip().partition("/")
        if not sep or not index.strip().isdigit() or not count.strip().isdigit():
            raise ValueError(f"expected I/N, such as 1/4 (worker 1 of 4), got {text!r}")
        return cls(int(index), int(count))

    def owns(self, source: str) -> bool:
        return shard_of(source, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(source: str, count: int) -> int:
    """The 1-based shard (of `count`) a source path belongs to; stable everywhere."""
    digest = hashlib.sha256(source.replace("\\", "/").encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


def discover(paths: Iterable[Path]) -> tuple[list[SourceFile], list[FileError]]:
    """Expand files and folders (recursively) into source files; missing paths become errors.

    Folders contribute files with a PDF or image extension; a file named explicitly is always
    taken, and its content decides later whether it can be read.
    """
    found: dict[Path, SourceFile] = {}
    errors: list[FileError] = []
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
            errors.append(FileError(str(raw), "no such file or folder"))
    return list(found.values()), errors


def sniff_kind(head: bytes) -> str | None:
    """'pdf', 'image' or None, from the first bytes of a file (never from its name)."""
    if head.lstrip(b"\x00\t\n\r ")[:5] == b"%PDF-" or b"%PDF-" in head[:1024]:
        return "pdf"
    if head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff"):
        return "image"
    return None


def mislabelled(head: bytes, kind: str, suffix: str) -> str | None:
    """Why a file whose content contradicts its extension is refused, or None if it matches.

    A PNG called report.pdf is most likely a mistake upstream; saying so beats guessing."""
    named = {".pdf": "pdf", ".png": "image", ".jpg": "image", ".jpeg": "image"}.get(suffix.lower())
    if named is None or named == kind:
        return None
    if kind == "pdf":
        return f"the file is a PDF but is named {suffix}; rename it to .pdf"
    real = ".png" if head.startswith(b"\x89PNG") else ".jpg"
    return f"the file is a {real[1:].upper()} image, not a PDF; rename it to {real} to ingest it"


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
