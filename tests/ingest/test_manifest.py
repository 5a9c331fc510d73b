from pathlib import Path

from ingest.manifest import Manifest


def test_document_lifecycle_and_sources(tmp_path: Path) -> None:
    m = Manifest(tmp_path / "m.sqlite3")
    m.begin("abc", title="T", pages=3, size=10, kind="pdf", tags=("b", "a"))
    assert m.pending() == ["abc"]
    assert m.documents() == []  # pending documents are not listed
    m.finish("abc")
    assert m.link("/x/a.pdf", "a.pdf", "abc") is None
    assert m.link("/y/copy.pdf", "copy.pdf", "abc") is None
    [info] = m.documents()
    assert (info.doc_id, info.pages, info.source, info.sources, info.tags) == (
        "abc",
        3,
        "a.pdf",
        ("a.pdf", "copy.pdf"),
        ("a", "b"),
    )
    # The same path now holds other bytes: the link moves and reports the old document.
    m.begin("def", title="T2", pages=1, size=5, kind="pdf", tags=())
    m.finish("def")
    assert m.link("/x/a.pdf", "a.pdf", "def") == "abc"
    assert not m.is_orphan("abc")  # still reachable as copy.pdf
    assert m.link("/y/copy.pdf", "copy.pdf", "def") == "abc"
    assert m.is_orphan("abc")
    m.remove_document("abc")
    assert m.document("abc") is None
    assert m.resolve("de") == ["def"]


def test_failures_are_recorded_and_cleared_on_success(tmp_path: Path) -> None:
    m = Manifest(tmp_path / "m.sqlite3")
    m.record_failure("/x/bad.pdf", "bad.pdf", "the file is empty")
    assert [f["error"] for f in m.failures()] == ["the file is empty"]
    m.begin("abc", title="T", pages=1, size=1, kind="pdf", tags=())
    m.finish("abc")
    m.link("/x/bad.pdf", "bad.pdf", "abc")
    assert m.failures() == []


def test_state_survives_reopen(tmp_path: Path) -> None:
    m = Manifest(tmp_path / "m.sqlite3")
    m.begin("abc", title="T", pages=1, size=1, kind="pdf", tags=())
    m.close()
    assert Manifest(tmp_path / "m.sqlite3").pending() == ["abc"]
