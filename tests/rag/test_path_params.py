"""Every path parameter of every REST route, fuzzed: no value gives a 5xx, bad ones a 404 or
422, and nothing is deleted. The attack replayed: `/documents/{id}/pages/{300 digits}/image`
answered 500 "File name too long" (a file name was built from the number)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from rag.server.app import create_app
from rag.server.routes import router
from rag.service import PageRAG
from tests.serving import make_library

API = "/api/v1"

PAGES = [
    "0",
    "-1",
    "-0",
    "+1",
    "100001",
    "99999",
    "9" * 19,
    "9" * 20,
    "1" * 300,
    "9" * 5000,
    "1e9",
    "1.0",
    "0x10",
    "1_0",
    "abc",
    "NaN",
    "inf",
    "\u0661",  # Arabic-Indic one
    "\u00b2",  # superscript two
    " 1",
]
# (Plain "." and ".." are left out: the client resolves them away before sending.)
IDS = [
    "%",
    "%%",
    "_",
    "____",
    "*",
    "?",
    "[",
    "]",
    ".*",
    "'",
    '"',
    "' OR 1=1 --",
    "0",
    "-1",
    "null",
    "~",
    "\\",
    " ",
    "a" * 65,
    "a" * 300,
    "f" * 5000,
    "g" * 32,
    "\u00e9\u00e9\u00e9\u00e9",
    "\uff41\uff42\uff43\uff44",  # fullwidth a b c d
    "\u0660\u0661\u0662\u0663",  # Arabic-Indic digits
    "\x00abcd",
    "abcd\n",
]
# Sent as written (already encoded): slashes, dot segments, NUL, broken escapes.
RAW = ["%2F", "abcd%2Fef", "..%2F..%2Fetc", "%2e%2e", "%00", "%0a", "%zz", "%", "%25", "%20"]


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, make_serving_service: Callable[..., PageRAG]
) -> Iterator[PageRAG]:
    svc = make_serving_service("path-params")
    svc.ingest([make_library(tmp_path_factory.mktemp("path-params-library"))])
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def client(service: PageRAG) -> Iterator[TestClient]:
    with TestClient(create_app(service, ui=False, warm_up=False)) as c:
        yield c


def routes() -> list[tuple[str, str]]:
    """(method, path template) of every REST route that has path parameters."""
    found = [
        (method, route.path)
        for route in router.routes
        if isinstance(route, APIRoute) and "{" in route.path
        for method in sorted(set(route.methods or ()) - {"HEAD"})
    ]
    assert len(found) >= 5  # document get and delete, page image and heatmap, job
    return found


def valid(service: PageRAG) -> dict[str, str]:
    return {"doc_id": service.documents()[0].doc_id, "page": "1", "job_id": "0" * 32}


def _number(text: str) -> float | None:
    try:
        return float(unquote(text))
    except ValueError:
        return None


def fuzzed(param: str) -> list[str]:
    values = PAGES if param == "page" else IDS
    return [quote(v, safe="") for v in values] + RAW


def test_no_path_parameter_value_gives_a_server_error(client: TestClient, service: PageRAG) -> None:
    before = {d.doc_id for d in service.documents()}
    good = valid(service)
    tried = 0
    for method, template in routes():
        params = [p for p in good if "{" + p + "}" in template]
        for param in params:
            for value in fuzzed(param):
                path = template.format(**{**good, param: value})
                response = client.request(method, path, params={"query": "x"})
                tried += 1
                assert response.status_code < 500, (method, path, response.text)
                if response.status_code == 200:  # "+1", " 1", "1.0": page 1 written another way
                    assert param == "page" and _number(value) in (1, 2, 3), path
                else:
                    assert response.status_code in (404, 405, 422), (method, path, response.text)
    assert tried > 200
    assert {d.doc_id for d in service.documents()} == before


@pytest.mark.parametrize("kind", ["image", "heatmap"])
def test_a_huge_page_number_is_refused_before_any_file_name_is_built(
    client: TestClient, service: PageRAG, kind: str
) -> None:
    doc = service.documents()[0].doc_id
    for page in ("1" * 300, "100001", "0", "-1"):
        response = client.get(f"{API}/documents/{doc}/pages/{page}/{kind}?query=x")
        assert response.status_code == 422, (page, response.text)
    missing = client.get(f"{API}/documents/{doc}/pages/99999/{kind}?query=x")
    assert missing.status_code == 404 and "has no page 99999" in missing.text


def test_job_ids_are_hex(client: TestClient) -> None:
    for bad in ("nope", "%25", "_" * 32, "a" * 33, "..%2F..%2Fetc"):
        response = client.get(f"{API}/jobs/{bad}")
        assert response.status_code in (404, 422), (bad, response.text)
    assert client.get(f"{API}/jobs/nope").status_code == 422
    assert "job id" in client.get(f"{API}/jobs/nope").json()["detail"]
    unknown = client.get(f"{API}/jobs/{'A' * 32}")  # uppercase is lowered: just not known
    assert unknown.status_code == 404


def test_page_images_still_served(client: TestClient, service: PageRAG) -> None:
    doc = service.documents()[0].doc_id
    response = client.get(f"{API}/documents/{doc[:8].upper()}/pages/1/image")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert Path(service.settings.images_dir).is_dir()
