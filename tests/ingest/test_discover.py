from pathlib import Path

from ingest.discover import describe_content, discover, file_sha256, sniff_kind
from rag.types import FileError


def test_discover_recurses_and_keeps_relative_sources(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.PDF").write_bytes(b"%PDF-1.4")
    (tmp_path / "a" / "y.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "a" / "notes.txt").write_text("skip me")
    files, errors = discover([tmp_path / "a", tmp_path / "a" / "y.png", tmp_path / "missing"])
    assert sorted(f.source for f in files) == ["b/x.PDF", "y.png"]  # no duplicate for y.png
    assert errors == [FileError(str(tmp_path / "missing"), "no such file or folder")]
    assert all(f.path.is_absolute() for f in files)


def test_explicit_file_is_taken_whatever_its_extension(tmp_path: Path) -> None:
    odd = tmp_path / "report.dat"
    odd.write_bytes(b"%PDF-1.7\n")
    files, _ = discover([odd])
    assert [f.source for f in files] == ["report.dat"]


def test_sniff_by_content_not_name() -> None:
    assert sniff_kind(b"%PDF-1.7\n...") == "pdf"
    assert sniff_kind(b"\n\n%PDF-1.4") == "pdf"
    assert sniff_kind(b"\x89PNG\r\n\x1a\n....") == "image"
    assert sniff_kind(b"\xff\xd8\xff\xe0") == "image"
    assert sniff_kind(b"<!DOCTYPE html><html>") is None
    assert "HTML" in describe_content(b"<!DOCTYPE html><html>")
    assert "empty" in describe_content(b"")
    assert "plain text" in describe_content(b"hello world")


def test_sha256_matches_hashlib(tmp_path: Path) -> None:
    import hashlib

    data = b"x" * (3 << 20) + b"tail"
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    digest, head = file_sha256(path)
    assert digest == hashlib.sha256(data).hexdigest()
    assert head == data[:1024]
