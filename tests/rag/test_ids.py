"""Typed document ids are hex prefixes, never patterns: every place an id is accepted (REST
paths and filters, CLI arguments and options, the UI's delete, `SearchFilter`) tries wildcards,
regex characters and SQL quotes on a library whose ids share a prefix, and the documents
survive. The attack replayed: `DELETE /api/v1/documents/%25e333760026dc19` (a LIKE pattern)
deleted a document whose id merely contained that text."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from ingest.manifest import Manifest
from rag.cli import app as cli_app
from rag.ids import IdError, doc_prefix, job_id
from rag.server.app import create_app
from rag.service import PageRAG, PageRAGError
from rag.types import SearchFilter
from tests.pdfs import make_pdf
from ui import actions

API = "/api/v1"


def twin_pdfs(folder: Path) -> tuple[Path, Path]:
    """Two valid PDFs whose SHA-256 ids share their first four hex digits: the same pages,
    told apart by a comment after `%%EOF` (readers ignore it), found by trying nonces."""
    base = make_pdf(folder / "base.pdf", ["Twin"]).read_bytes()
    (folder / "base.pdf").unlink()
    seen: dict[str, bytes] = {}
    for nonce in range(1_000_000):
        data = base + f"\n%nonce {nonce}\n".encode()
        prefix = hashlib.sha256(data).hexdigest()[:4]
        if prefix in seen:
            first, second = folder / "twin-a.pdf", folder / "twin-b.pdf"
            first.write_bytes(seen[prefix])
            second.write_bytes(data)
            return first, second
        seen[prefix] = data
    raise AssertionError("no two nonces gave ids with a common prefix")


@dataclass
class Library:
    service: PageRAG
    twin_a: str  # ids of twin-a.pdf and twin-b.pdf: the same first four digits
    twin_b: str
    other: str  # other.pdf

    @property
    def ids(self) -> set[str]:
        return {self.twin_a, self.twin_b, self.other}

    def assert_intact(self) -> None:
        assert {d.doc_id for d in self.service.documents()} == self.ids
        assert self.service.index.count() == 3


@pytest.fixture(scope="module")
def library(
    tmp_path_factory: pytest.TempPathFactory, make_serving_service: Callable[..., PageRAG]
) -> Iterator[Library]:
    folder = tmp_path_factory.mktemp("ids-library")
    twin_pdfs(folder)
    make_pdf(folder / "other.pdf", ["Other"])
    svc = make_serving_service("ids")
    report = svc.ingest([folder])
    assert report.indexed_documents == 3 and not report.failed
    by_source = {d.source: d.doc_id for d in svc.documents()}
    yield Library(svc, by_source["twin-a.pdf"], by_source["twin-b.pdf"], by_source["other.pdf"])
    svc.close()


@pytest.fixture(scope="module")
def client(library: Library) -> Iterator[TestClient]:
    with TestClient(create_app(library.service, ui=False, warm_up=False)) as c:
        yield c


def attacks(lib: Library) -> list[str]:
    """Typed ids that are not hex: wildcards, regex and glob characters, SQL quotes, look-alike
    digits, each also wrapped around real parts of the library's ids."""
    inner = lib.other[1:16]  # in the middle of an id: LIKE '%' || inner matched it
    return [
        "%" + inner,
        "%",
        "%%%%",
        "____",
        "_" + lib.other[1:8],
        lib.other[:6] + "%",
        lib.twin_a[:4] + "_",
        "*",
        lib.other[:6] + "*",
        "????",
        lib.other[:5] + "?",
        "[0-9a-f]*",
        "[" + lib.other[:5],
        ".*",
        "^" + lib.other[:6],
        lib.other[:6] + "$",
        lib.other[:4] + "|" + lib.twin_a[:4],
        "' OR '1'='1",
        lib.other[:8] + "' --",
        '" OR ""="',
        "\\" + lib.other[:6],
        "\uff41\uff42\uff43\uff44",  # fullwidth a b c d
        "٠١٢٣٤",  # Arabic-Indic digits
        lib.other + "0",  # 65 digits
        "g" * 8,
        "ab",  # hex, but too short to pick one document
    ]


def test_doc_prefix_accepts_hex_only() -> None:
    assert doc_prefix(" ABCDEF12 ") == "abcdef12"
    fullwidth, arabic_digits = "\uff41\uff42\uff43\uff44", "\u0660\u0661\u0662\u0663"
    for bad in ["%abc", "ab_d", "abc*", "", "   ", fullwidth, arabic_digits, "a" * 65, "ab"]:
        with pytest.raises(IdError, match="document id"):
            doc_prefix(bad)
    with pytest.raises(IdError, match="at least 4 characters"):
        doc_prefix("abc")
    with pytest.raises(IdError) as info:
        doc_prefix("%" * 300)
    assert len(str(info.value)) < 200  # a huge input does not make a huge message
    assert job_id("A" * 32) == "a" * 32
    for bad in ["nope", "a" * 31, "%" * 32, "a" * 33]:
        with pytest.raises(IdError, match="job id"):
            job_id(bad)


def test_manifest_matches_prefixes_as_plain_text(tmp_path: Path) -> None:
    m = Manifest(tmp_path / "m.sqlite3")
    for doc in ("abc_", "abcd", "xabc", "a%bc"):
        m.begin(doc, title="T", pages=1, size=1, kind="pdf", tags=())
    assert m.resolve("%") == [] and m.resolve("_") == [] and m.resolve("%bc") == []
    assert m.resolve("abc_") == ["abc_"] and m.resolve("a%") == ["a%bc"]
    assert m.resolve("bc") == []  # inside an id is not a prefix
    assert m.resolve("abc") == ["abc_", "abcd"]


def test_search_filter_takes_hex_ids_only(library: Library) -> None:
    assert SearchFilter(doc_ids=(library.other.upper(),)).doc_ids == (library.other,)
    for bad in attacks(library)[:-1]:  # all but the short hex one
        with pytest.raises(IdError):
            SearchFilter(doc_ids=(bad,))


def test_api_refuses_non_hex_ids_everywhere(client: TestClient, library: Library) -> None:
    for bad in attacks(library):
        seg = quote(bad, safe="")
        for method, path in [
            ("DELETE", f"/documents/{seg}"),
            ("GET", f"/documents/{seg}"),
            ("GET", f"/documents/{seg}/pages/1/image"),
            ("GET", f"/documents/{seg}/pages/1/heatmap?query=x"),
        ]:
            response = client.request(method, API + path)
            assert response.status_code == 422, (method, path, response.text)
            assert "document id" in response.json()["detail"]
        for route, body in [("search", {"query": "twin"}), ("ask", {"question": "twin"})]:
            response = client.post(f"{API}/{route}", json={**body, "filter": {"doc_ids": [bad]}})
            assert response.status_code == 422, (route, bad, response.text)
            assert "document id" in response.text
    library.assert_intact()


def test_api_prefixes_match_only_at_the_start_and_once(
    client: TestClient, library: Library
) -> None:
    shared = library.twin_a[:4]
    for method in ("GET", "DELETE"):
        response = client.request(method, f"{API}/documents/{shared}")
        assert response.status_code == 404
        detail = response.json()["detail"]
        assert f"'{shared}' matches 2 documents" in detail and "give more characters" in detail
        assert "twin-a.pdf" in detail and "twin-b.pdf" in detail
    inside = library.other[1:13]  # hex, but not where the id starts
    assert client.delete(f"{API}/documents/{inside}").status_code == 404
    library.assert_intact()
    upper = client.get(f"{API}/documents/{library.other[:8].upper()}")
    assert upper.status_code == 200 and upper.json()["doc_id"] == library.other
    body = {"query": "twin", "top_k": 5, "filter": {"doc_ids": [library.twin_b[:10].upper()]}}
    hits = client.post(f"{API}/search", json=body).json()["hits"]
    assert hits and {h["doc_id"] for h in hits} == {library.twin_b}


def test_service_lists_the_candidates_of_an_ambiguous_prefix(library: Library) -> None:
    with pytest.raises(PageRAGError, match=r"matches 2 documents: .*twin-a\.pdf.*twin-b\.pdf"):
        library.service.delete(library.twin_a[:4])
    with pytest.raises(PageRAGError, match="not a document id"):
        library.service.delete("%" + library.other[1:16])
    library.assert_intact()


def test_cli_exits_2_for_non_hex_ids(library: Library, monkeypatch: pytest.MonkeyPatch) -> None:
    # Pointed at the library: were an id taken as a pattern, it would hit a real document.
    monkeypatch.setenv("PAGERAG_DATA_DIR", str(library.service.settings.data_dir))
    runner = CliRunner()
    for bad in attacks(library):
        for args in (
            ["docs", "delete", bad],
            ["search", "twin", "--doc", bad],
            ["ask", "twin", "--doc", library.other, "--doc", bad],
        ):
            result = runner.invoke(cli_app, args)
            assert result.exit_code == 2, (args, result.output)
            message = " ".join(result.stderr.replace("│", " ").split())  # unwrap rich's box
            assert "document id" in message, message
    library.assert_intact()


def test_ui_delete_refuses_non_hex_ids(library: Library) -> None:
    for bad in attacks(library):
        message = actions.delete(library.service, bad)
        assert not message.startswith("Deleted") and "document id" in message, message
    assert "matches 2 documents" in actions.delete(library.service, library.twin_a[:4])
    library.assert_intact()
