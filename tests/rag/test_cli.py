"""The whole path through the CLI on the shared corpus of real PDFs, with the tiny model."""

from __future__ import annotations

import io
import json
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import Progress, TextColumn
from typer.testing import CliRunner

from ingest.runner import IngestProgress
from rag.cli import EXIT_CONFIG, EXIT_FAILED_FILES, EXIT_USAGE, app
from tests.pdfs import make_pdf

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def one_line(text: str) -> str:
    """`text` with rich's line breaks and click's box undone."""
    return " ".join(text.replace("│", " ").split())


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, tiny_colqwen_dir: Path) -> Iterator[Path]:
    data = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PAGERAG_DATA_DIR", str(data))
        mp.setenv("PAGERAG_RETRIEVER_MODEL", str(tiny_colqwen_dir))
        mp.setenv("PAGERAG_DEVICE", "cpu")
        mp.setenv("PAGERAG_MAX_VISUAL_TOKENS", "64")
        mp.setenv("PAGERAG_RENDER_DPI", "50")
        mp.setenv("PAGERAG_BATCH_SIZE", "8")
        yield data


@pytest.fixture(scope="module")
def first_run(env: Path, corpus: Path) -> dict:
    code, stdout, _ = invoke("ingest", str(corpus), "--json")
    assert code == EXIT_FAILED_FILES  # two files in the corpus cannot be read
    return json.loads(stdout)


def test_ingest_corpus(first_run: dict) -> None:
    assert first_run["indexed_documents"] == 49
    assert first_run["indexed_pages"] == 242
    assert first_run["skipped_documents"] == 1  # mcid_example.pdf == figure_structure.pdf
    failed = {f["source"]: f["error"] for f in first_run["failed"]}
    assert set(failed) == {"empty.pdf", "password-example.pdf"}
    assert "empty" in failed["empty.pdf"] and "encrypted" in failed["password-example.pdf"]
    # The copy is named, with the file it is stored as.
    dup = {"source": "mcid_example.pdf", "same_as": "figure_structure.pdf"}
    assert first_run["duplicates"] == [dup]


def test_docs_and_info_agree(first_run: dict) -> None:
    code, stdout, _ = invoke("docs", "list", "--json")
    docs = json.loads(stdout)
    assert code == 0 and len(docs) == 49 and sum(d["pages"] for d in docs) == 242
    [dup] = [d for d in docs if len(d["sources"]) == 2]
    assert sorted(dup["sources"]) == ["figure_structure.pdf", "mcid_example.pdf"]
    info = json.loads(invoke("info", "--json")[1])
    assert (info["documents"], info["pages"], info["backend"]) == (49, 242, "qdrant-edge")
    assert info["bytes_on_disk"] > 0 and info["pending_documents"] == 0


def test_second_run_skips_everything(first_run: dict, corpus: Path) -> None:
    code, stdout, _ = invoke("ingest", str(corpus), "--json")
    again = json.loads(stdout)
    assert code == EXIT_FAILED_FILES
    assert (again["indexed_documents"], again["indexed_pages"]) == (0, 0)
    assert again["skipped_documents"] == 50 and again["duplicates"] == []
    assert json.loads(invoke("info", "--json")[1])["pages"] == 242


def test_search_returns_ranked_pages_with_images(first_run: dict) -> None:
    code, stdout, _ = invoke(
        "search", "total handgun permits in November 2015", "-k", "4", "--json"
    )
    hits = json.loads(stdout)
    assert code == 0 and len(hits) == 4
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    for hit in hits:
        assert set(hit) == {"doc_id", "source", "page", "score", "image"}
        assert Path(hit["image"]).is_file()
    # Filter by document: every hit comes from it.
    doc = hits[0]["doc_id"]
    code, stdout, _ = invoke("search", "total", "--doc", doc[:10], "-k", "50", "--json")
    only = json.loads(stdout)
    assert only and {h["doc_id"] for h in only} == {doc}
    code, stdout, _ = invoke(
        "search", "total", "--source", "nics-background-checks-2015-11.pdf", "--json"
    )
    assert {h["source"] for h in json.loads(stdout)} == {"nics-background-checks-2015-11.pdf"}


def test_delete_removes_document_completely(first_run: dict) -> None:
    docs = json.loads(invoke("docs", "list", "--json")[1])
    victim = next(d for d in docs if d["source"] == "WARN-Report-for-7-1-2015-to-03-25-2016.pdf")
    hits = json.loads(
        invoke("search", "layoffs", "--doc", victim["doc_id"], "-k", "3", "--json")[1]
    )
    image_dir = Path(hits[0]["image"]).parent
    code, stdout, _ = invoke("docs", "delete", victim["doc_id"][:12])
    assert code == 0 and "deleted" in stdout
    assert not image_dir.exists()
    info = json.loads(invoke("info", "--json")[1])
    assert (info["documents"], info["pages"]) == (48, 242 - victim["pages"])
    code, _, stderr = invoke("search", "layoffs", "--doc", victim["doc_id"], "--json")
    assert code == EXIT_USAGE and "no document" in stderr


def test_bad_input_exits_non_zero_with_a_reason(env: Path) -> None:
    missing = env / "does-not-exist"
    code, stdout, stderr = invoke("ingest", str(missing), "--json")
    assert (code, stdout) == (EXIT_USAGE, "")
    assert one_line(stderr) == f"error: no such file or folder: {missing}"
    code, _, stderr = invoke("docs", "delete", "ffff")
    assert code == EXIT_USAGE and "no document" in stderr
    code, _, stderr = invoke("docs", "delete", "zzzz")  # not hex: bad usage
    assert code == EXIT_USAGE and "not a document id" in stderr
    code, _, stderr = invoke("search", "   ")
    assert code == EXIT_USAGE and "empty" in stderr


def test_model_mismatch_stops_with_reindex_hint(
    first_run: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAGERAG_RETRIEVER_MODEL", "vidore/colqwen2-v1.1")
    code, _, stderr = invoke("search", "anything")
    assert code == EXIT_CONFIG
    assert "re-index" in stderr and "vidore/colqwen2-v1.1" in stderr


def test_missing_model_names_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGERAG_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PAGERAG_RETRIEVER_MODEL", str(tmp_path / "no-such-model"))
    code, _, stderr = invoke("search", "anything")
    assert code == EXIT_CONFIG and "PAGERAG_RETRIEVER_MODEL" in stderr


def test_bad_settings_and_unreachable_server_exit_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAGERAG_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PAGERAG_RENDERER", "ghostscript")
    code, _, stderr = invoke("docs", "list")
    assert code == EXIT_CONFIG
    allowed = "use one of pypdfium2, pdf2image"
    assert stderr == f"error: PAGERAG_RENDERER='ghostscript' is not allowed; {allowed}\n"
    monkeypatch.delenv("PAGERAG_RENDERER")
    monkeypatch.setenv("PAGERAG_QDRANT_URL", "http://127.0.0.1:9")  # discard port: refused
    code, _, stderr = invoke("info")
    assert code == EXIT_CONFIG and "PAGERAG_QDRANT_URL" in stderr


def test_locked_index_is_reported(env: Path, first_run: dict) -> None:
    from rag.config import Settings
    from rag.index import open_index

    holder = open_index(Settings(_env_file=None))  # a running server would hold it like this
    try:
        code, _, stderr = invoke("docs", "list")
        assert code == EXIT_CONFIG and "another PageRAG process" in stderr
    finally:
        holder.close()


# -- exit status, as the README documents it ---------------------------------------------------

# The README's exit-status table, row by row (the test below checks the README has each).
EXIT_ROWS = {
    0: "| `0` | success, including a search that found no page (it says why) |",
    1: "| `1` | ingestion finished but some files could not be read: each is listed with its "
    "reason (`--json`: under `failed`); the others are stored |",
    2: "| `2` | bad usage: an unknown option or value, a path that does not exist, a folder "
    "without PDFs or images, an unknown document id, an empty question, a `--password` for "
    "none of the files, a busy `--port` |",
    3: "| `3` | a problem with the settings, the model, the index or the disk: the message "
    "says what to change |",
}


def readme_exit_rows() -> dict[int, str]:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("Exit status:", 1)[1].split("\n\n", 2)[1]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    return {int(line.split("`")[1]): line for line in rows}


def test_exit_status_rows_are_the_readme_ones(
    env: Path, first_run: dict, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert readme_exit_rows() == EXIT_ROWS
    # 0: success, and a search that found nothing
    assert invoke("docs", "list")[0] == 0
    assert invoke("search", "total", "--tag", "no-such-tag")[0] == 0
    # 2: each kind of bad usage the row names
    empty = tmp_path / "empty"
    empty.mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        for args in (
            ["search", "total", "--sideways"],
            ["search", "total", "--mode", "fuzzy"],
            ["ingest", str(tmp_path / "nowhere")],
            ["ingest", str(empty)],
            ["docs", "delete", "ffff"],
            ["search", "  "],
            ["ingest", str(corpus / "empty.pdf"), "--password", "nosuch.pdf=x"],
            ["serve", "--port", port],
        ):
            code, _, stderr = invoke(*args)
            assert code == EXIT_USAGE, (args, stderr)
    # 3: the settings (the model and the index: test_model_mismatch..., test_locked_index...)
    code, _, _ = invoke("info", env={"PAGERAG_DEVICE": "tpu"})
    assert code == EXIT_CONFIG
    # 1: some files could not be read (nothing to embed: no model is loaded)
    monkeypatch.setenv("PAGERAG_DATA_DIR", str(tmp_path / "data"))
    code, _, stderr = invoke("ingest", str(corpus / "empty.pdf"))
    assert code == EXIT_FAILED_FILES and "failed: empty.pdf: the file is empty" in stderr


def test_paths_and_passwords_are_checked_before_anything_runs(
    env: Path, corpus: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a PDF")
    for folder in (empty, tmp_path / "notes"):
        code, stdout, stderr = invoke("ingest", str(folder))
        assert (code, stdout) == (EXIT_USAGE, "")
        assert one_line(stderr).startswith(f"error: no PDFs or images found under {folder} (")
    locked = corpus / "password-example.pdf"
    code, _, stderr = invoke("ingest", str(locked), "--password", "nosuchfile.pdf=x")
    assert code == EXIT_USAGE and "--password names 'nosuchfile.pdf'" in one_line(stderr)
    assert "password-example.pdf" in stderr  # the files it could have named
    # A path as typed is the file too: the wrong password reaches the file and fails there.
    code, stdout, _ = invoke("ingest", str(locked), "--password", f"{locked}=wrong", "--json")
    [failed] = json.loads(stdout)["failed"]
    assert code == EXIT_FAILED_FILES and "password" in failed["error"]


# -- what searches say when they find nothing; --source as typed -------------------------------


def test_empty_results_say_why(
    first_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, stdout, _ = invoke("search", "total", "--tag", "no-such-tag")
    assert code == 0 and one_line(stdout).startswith("no page matched --tag no-such-tag;")
    assert "pagerag ingest" not in stdout
    code, stdout, _ = invoke("search", "qqqxyzzy", "--mode", "text")
    assert code == 0 and "no page matched the question (text search finds only" in stdout
    code, stdout, _ = invoke("search", "total", "--source", str(tmp_path / "elsewhere"))
    assert code == 0
    assert f"--source {tmp_path / 'elsewhere'} is neither a prefix" in one_line(stdout)
    monkeypatch.setenv("PAGERAG_DATA_DIR", str(tmp_path / "data"))
    code, stdout, _ = invoke("search", "total", "--mode", "text")
    assert code == 0 and one_line(stdout) == (
        "nothing is indexed yet; run `pagerag ingest PATH` first"
    )


def test_source_accepts_the_path_as_typed(
    first_run: dict, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "nics-background-checks-2015-11.pdf"
    monkeypatch.chdir(corpus.parent)
    for typed in (str(corpus / name), f"./{corpus.name}/{name}", name):
        code, stdout, _ = invoke("search", "total", "--source", typed, "-k", "50", "--json")
        assert code == 0 and {h["source"] for h in json.loads(stdout)} == {name}, typed
    # The folder it was ingested from: every document (with --doc: the one).
    everything = ["search", "total", "-k", "60", "--mode", "text", "--json"]
    code, stdout, _ = invoke(*everything, "--source", str(corpus))
    assert code == 0 and json.loads(stdout) == json.loads(invoke(*everything)[1])
    [doc] = [d for d in json.loads(invoke("docs", "list", "--json")[1]) if d["source"] == name]
    args = ["--source", f"./{corpus.name}", "--doc", doc["doc_id"][:8], "-k", "50", "--json"]
    code, stdout, _ = invoke("search", "total", *args)
    assert code == 0 and {h["doc_id"] for h in json.loads(stdout)} == {doc["doc_id"]}


# -- summaries, notices, progress -----------------------------------------------------------


def test_ingest_summary_names_copies_and_pages_waiting_for_the_model(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_pdf(tmp_path / "one" / "a.pdf", ["alpha"])
    shutil.copy(tmp_path / "one" / "a.pdf", tmp_path / "b.pdf")
    make_pdf(tmp_path / "two" / "c.pdf", ["gamma", "delta"])
    monkeypatch.setenv("PAGERAG_DATA_DIR", str(tmp_path / "data"))
    code, stdout, _ = invoke("ingest", str(tmp_path / "one"))
    assert code == 0 and one_line(stdout).startswith(
        "indexed 1 document (1 page), skipped 0 unchanged, 0 failed in "
    )
    code, stdout, _ = invoke("ingest", str(tmp_path / "one"), str(tmp_path / "b.pdf"))
    lines = stdout.splitlines()
    assert code == 0 and lines[0].startswith(
        "indexed 0 documents (0 pages), skipped 1 unchanged and 1 already in the library, "
    )
    assert lines[1:] == ["already in the library: b.pdf (same content as a.pdf)"]
    # No model: the pages are stored for text search, and the notice says so on one line.
    monkeypatch.setenv("PAGERAG_DATA_DIR", str(tmp_path / "data-without-model"))
    monkeypatch.setenv("PAGERAG_RETRIEVER_MODEL", str(tmp_path / "no-model"))
    code, stdout, stderr = invoke("ingest", str(tmp_path / "two"))
    assert code == 0 and stdout.startswith("indexed 1 document (2 pages), ")
    [notice] = [line for line in stderr.splitlines() if line.startswith("notice:")]
    assert notice.startswith(
        "notice: 2 pages stored without visual vectors (text search works now); they get them "
        "on the next ingest once the model loads: Cannot load the ColQwen2 model"
    )
    code, stdout, _ = invoke("search", "gamma", "--mode", "text", "--json")
    assert code == 0 and [h["source"] for h in json.loads(stdout)] == ["c.pdf"]


def test_progress_bar_shows_each_stage(env: Path, tmp_path: Path, tiny_colqwen_dir: Path) -> None:
    from rag.cli import _IngestBar
    from rag.config import Settings
    from rag.service import PageRAG

    make_pdf(tmp_path / "docs" / "a.pdf", ["alpha", "beta", "gamma"])
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    bar = Progress(TextColumn("{task.description}"), console=console)
    shown = _IngestBar(bar)
    seen: list[str] = []

    def record(progress: IngestProgress) -> None:
        shown(progress)
        seen.append(bar.tasks[1].description.strip())

    service = PageRAG(Settings(data_dir=tmp_path / "data"))
    try:
        service.ingest([tmp_path / "docs"], on_progress=record)
    finally:
        service.close()
    stages = ["reading", "loading the model", "rendering", "embedding", "storing", "done"]
    assert list(dict.fromkeys(seen)) == [f"pages: {s}" for s in stages]


def test_tables_fold_long_paths_instead_of_cutting_them(first_run: dict) -> None:
    wide = {"COLUMNS": "80"}
    query = ["search", "total", "-k", "3", "--mode", "text"]  # exact: the same hits twice
    hits = json.loads(invoke(*query, "--json")[1])
    code, stdout, _ = invoke(*query, env=wide)
    assert code == 0 and "…" not in stdout
    assert max(len(line) for line in stdout.splitlines()) <= 80
    cells = "".join(line.split("│")[-2].strip() for line in stdout.splitlines() if "│" in line)
    for hit in hits:
        assert len(hit["image"]) > 40 and hit["image"] in cells  # all of it, folded
    code, stdout, _ = invoke("docs", "list", env=wide)
    assert code == 0 and "…" not in stdout.split("┡")[1]  # sources and titles whole
    assert re.search(r"\n\d+ documents, \d+ pages\n$", stdout)


def test_info_speaks_plainly(first_run: dict) -> None:
    code, stdout, _ = invoke("info")
    assert code == 0
    lines = {k.strip(): v.strip() for k, _, v in (x.partition(": ") for x in stdout.splitlines())}
    assert lines["retriever"].endswith(", not loaded") and "retriever_loaded" not in stdout
    assert re.fullmatch(r"\d+\.\d (KiB|MiB|GiB) \(index .+, page images .+\)", lines["on disk"])
    listed = json.loads(invoke("info", "--json")[1])
    assert lines["documents"] == str(listed["documents"]) and lines["pages"] == str(listed["pages"])
    assert lines["failed"] == "2 files could not be read"


def test_sizes_for_people() -> None:
    from rag.cli import _size

    assert [_size(n) for n in (0, 1023, 1024, 12.3 * 2**20, 5 * 2**40)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "12.3 MiB",
        "5.0 TiB",
    ]


def test_json_is_a_plain_flag_in_help() -> None:
    for command in (["ingest"], ["search"], ["ask"], ["eval"], ["docs", "list"], ["info"]):
        code, stdout, _ = invoke(*command, "--help", env={"COLUMNS": "200"})
        [line] = [x for x in stdout.splitlines() if "--json" in x]
        assert code == 0 and "--no-json" not in stdout, command
        words = line.strip("│ ").split()
        assert words[0] == "--json" and not words[1].startswith(("<", "BOOL")), line
        assert words[1][0].isupper(), line  # its help text follows at once


def test_serve_on_a_busy_port_stops_before_announcing(env: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for args, extra in ((["--port", str(port)], None), ([], {"PAGERAG_PORT": str(port)})):
            code, stdout, stderr = invoke("serve", *args, env=extra)
            assert code == EXIT_USAGE and "PageRAG on" not in stdout + stderr
            assert one_line(stderr) == f"error: port {port} is in use; set --port or PAGERAG_PORT"


def test_libraries_from_the_command_line(env: Path, tmp_path: Path) -> None:
    """`pagerag libraries create`, `--library NAME` on any command, isolation, delete."""
    from tests.pdfs import make_pdf

    folder = make_pdf(tmp_path / "lib" / "alpha.pdf", ["Alpha revenue", "Alpha costs"]).parent
    code, stdout, _ = invoke("libraries", "create", "team-a", "--search-mode", "text")
    assert code == 0 and "created library team-a" in stdout
    code, _, err = invoke("libraries", "create", "team-a")
    assert code == 2 and "exists already" in err
    code, _, err = invoke("--library", "Bad!", "docs", "list")
    assert code == 2 and "not a library name" in err
    code, _, err = invoke("--library", "nope", "docs", "list")
    assert code == 2 and "pagerag libraries create nope" in err
    assert invoke("--library", "team-a", "ingest", str(folder))[0] == 0
    code, stdout, _ = invoke("--library", "team-a", "docs", "list", "--json")
    assert code == 0 and [d["source"] for d in json.loads(stdout)] == ["alpha.pdf"]
    code, stdout, _ = invoke("-L", "team-a", "search", "alpha", "--json")  # text: its own mode
    assert code == 0 and json.loads(stdout)[0]["source"].endswith("alpha.pdf")
    default = json.loads(invoke("docs", "list", "--json")[1])
    assert all(not d["source"].endswith("alpha.pdf") for d in default)
    code, stdout, _ = invoke("libraries", "list", "--json")
    listed = {x["name"]: x for x in json.loads(stdout)}
    assert listed["team-a"]["settings"] == {"search_mode": "text"} and "default" in listed
    assert invoke("libraries", "delete", "default", "--yes")[0] == 2
    assert invoke("libraries", "delete", "team-a", "--yes")[0] == 0
    assert "team-a" not in invoke("libraries", "list")[1]
