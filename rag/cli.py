"""`pagerag` command line: parses arguments, calls the `PageRAG` service, prints results.

Exit status: 0 success; 1 ingestion finished but some files failed; 2 bad usage;
3 a problem with the settings, the model or the index (the message says what to change).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ingest.discover import Shard
from ingest.diskspace import DiskFullError
from ingest.runner import IngestProgress
from rag.config import SearchMode, Settings
from rag.errors import EXIT_CONFIG
from rag.ids import IdError, doc_prefix
from rag.types import IngestReport, SearchFilter

if TYPE_CHECKING:  # the eval package imports datasets and ir-measures: only when evaluating
    from rag.eval import EvalReport

EXIT_FAILED_FILES = 1  # ingestion finished, some files could not be read; EXIT_CONFIG is 3

app = typer.Typer(
    help="PageRAG: ask questions about PDFs by looking at their pages.\n\n"
    "Ingest a folder of PDFs once (`pagerag ingest ~/reports`), then search it "
    '(`pagerag search "total in November 2015"`). Settings come from PAGERAG_* environment '
    "variables or a .env file; see the README.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
docs_app = typer.Typer(help="List and delete ingested documents.", no_args_is_help=True)
app.add_typer(docs_app, name="docs")
out = Console()
err = Console(stderr=True)


def _settings() -> Settings:
    """The settings, or exit 3 naming each bad one (pydantic's report is for programmers)."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = "PAGERAG_" + "_".join(map(str, error["loc"])).upper()
            message = error["msg"].removeprefix("Value error, ")
            problems.append(message if "PAGERAG_" in message else f"{name}: {message}")
        _die(f"invalid setting: {'; '.join(problems)}")
        raise  # unreachable: _die exits


def _service():
    from rag.service import PageRAG

    settings = _settings()
    try:
        return PageRAG(settings)
    except Exception as exc:
        _die_known(exc)


def _die(message: str, code: int = EXIT_CONFIG) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _die_known(exc: Exception) -> None:
    """Turn errors a user can fix into their message and exit status; anything else is a bug."""
    from rag.errors import UserError

    if isinstance(exc, UserError):
        _die(str(exc), exc.exit_code)
    raise exc


def _bar(*extra: TextColumn, quiet: bool) -> Progress:
    """The progress bar of long commands, on stderr; off for --json and when not a terminal."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra[:1],
        TimeElapsedColumn(),
        *extra[1:],
        console=err,
        disable=quiet or not err.is_terminal,
    )


def _print_json(data: object) -> None:
    # Plain print: rich would wrap long lines at the console width and break the JSON.
    typer.echo(json.dumps(data, indent=2, default=str))


# --mode on `search`, `ask` and `eval`.
ModeOption = Annotated[
    SearchMode | None,
    typer.Option(
        "--mode",
        help="visual (ColQwen2 on the page images), text (BM25 on the PDF text layer; needs no "
        "model) or hybrid (both in one query, rank-fused). Default: PAGERAG_SEARCH_MODE (hybrid).",
    ),
]


def _doc_prefixes(value: str | list[str]) -> str | list[str]:
    """Typed document ids checked before anything opens (`rag.ids`): not hex is bad usage,
    exit 2 with the reason, so no id is ever taken as a pattern."""
    try:
        if isinstance(value, str):
            return doc_prefix(value)
        return [doc_prefix(v) for v in value]
    except IdError as exc:
        raise typer.BadParameter(str(exc)) from exc


def _filter(doc: list[str], source: str | None, tag: list[str]) -> SearchFilter | None:
    flt = SearchFilter(doc_ids=tuple(doc), source_prefix=source, tags=tuple(tag))
    return None if flt.is_empty() else flt


@app.command()
def ingest(
    paths: Annotated[
        list[Path], typer.Argument(help="PDF or image files, or folders (searched recursively).")
    ],
    tag: Annotated[
        list[str], typer.Option("--tag", "-t", help="Tag the documents (repeatable).")
    ] = [],  # noqa: B006
    password: Annotated[
        list[str],
        typer.Option(
            "--password",
            help="FILE=PASSWORD for an encrypted PDF (FILE: its name or path as listed).",
        ),
    ] = [],  # noqa: B006
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            metavar="I/N",
            help="Ingest only part I of N (1 <= I <= N): run N workers with 1/N ... N/N on the "
            "same folder and each file goes to exactly one of them (by its path).",
        ),
    ] = None,
) -> None:
    """Render, embed and store every page of PDFs and images. Unchanged files are skipped,
    so running it again on the same folder only picks up what is new or changed."""
    logging.basicConfig(level=logging.WARNING)
    try:
        part = Shard.parse(shard) if shard is not None else None
    except ValueError as exc:
        _die(f"--shard: {exc}", code=2)
    passwords = {}
    for item in password:
        name, sep, secret = item.partition("=")
        if not sep or not name:
            _die(f"--password needs FILE=PASSWORD, got {item!r}", code=2)
        passwords[name] = secret
    service = _service()
    try:
        columns = TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[current]}")
        with _bar(*columns, quiet=as_json) as bar:
            files = bar.add_task("files", total=None, rate="", current="")
            pages = bar.add_task("pages", total=None, rate="", current="")

            def show(p: IngestProgress) -> None:
                bar.update(
                    files, total=p.files_total, completed=p.files_done, current=p.current[-40:]
                )
                rate = f"{p.pages_per_second:.2f} pages/s" if p.pages_done else ""
                bar.update(pages, total=p.pages_total or None, completed=p.pages_done, rate=rate)

            report = service.ingest(
                paths, tags=tag, passwords=passwords, on_progress=show, shard=part
            )
    except DiskFullError as exc:  # stopped before the disk filled up: exit 3, say so in JSON
        if as_json:
            done = getattr(exc, "report", None)
            _print_json({**(asdict(done) if done else {}), "error": str(exc)})
        _die(str(exc))
    except Exception as exc:
        _die_known(exc)
    finally:
        service.close()
    _print_ingest_report(report, as_json)
    if report.failed:
        raise typer.Exit(EXIT_FAILED_FILES)


def _print_ingest_report(report: IngestReport, as_json: bool) -> None:
    if as_json:
        _print_json(asdict(report))
        return
    out.print(
        f"indexed {report.indexed_documents} documents ({report.indexed_pages} pages), "
        f"skipped {report.skipped_documents} unchanged, {len(report.failed)} failed "
        f"in {report.seconds:.1f} s"
    )
    for failure in report.failed:
        err.print(f"[red]failed:[/] {failure.source}: {failure.error}", highlight=False)
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/] {warning.source}: {warning.warning}")


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="The question or keywords.")],
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, max=100, help="How many pages.")] = 5,
    doc: Annotated[
        list[str],
        typer.Option(
            "--doc", help="Only this document id or prefix (repeatable).", callback=_doc_prefixes
        ),
    ] = [],  # noqa: B006
    source: Annotated[
        str | None, typer.Option("--source", help="Only files under this path prefix.")
    ] = None,
    tag: Annotated[list[str], typer.Option("--tag", help="Only documents with this tag.")] = [],  # noqa: B006
    as_json: Annotated[bool, typer.Option("--json", help="Print the hits as JSON.")] = False,
    mode: ModeOption = None,
) -> None:
    """Find the pages that best match a question: late-interaction MaxSim over ColQwen2, BM25
    over the PDF text layer, or both fused (--mode)."""
    service = _service()
    try:
        doc_ids = [service.resolve(d) for d in doc]
        hits = service.search(query, k, _filter(doc_ids, source, tag), mode=mode)
    except Exception as exc:
        _die_known(exc)
    finally:
        service.close()
    rows = [
        {"doc_id": h.doc_id, "source": h.source, "page": h.page, "score": h.score, "image": h.image}
        for h in hits
    ]
    if as_json:
        _print_json(rows)
        return
    if not rows:
        out.print("no pages indexed yet (or none match the filter); run `pagerag ingest PATH`")
        return
    table = Table("#", "score", "source", "page", "doc_id", "image")
    for i, r in enumerate(rows, 1):
        table.add_row(
            str(i), f"{r['score']:.3f}", r["source"], str(r["page"]), r["doc_id"][:12], r["image"]
        )
    out.print(table)


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    k: Annotated[
        int | None,
        typer.Option(
            "-k", "--top-k", min=1, max=20, help="Pages to show the model (PAGERAG_ASK_PAGES)."
        ),
    ] = None,
    doc: Annotated[
        list[str],
        typer.Option(
            "--doc", help="Only this document id or prefix (repeatable).", callback=_doc_prefixes
        ),
    ] = [],  # noqa: B006
    source: Annotated[
        str | None, typer.Option("--source", help="Only files under this path prefix.")
    ] = None,
    tag: Annotated[list[str], typer.Option("--tag", help="Only documents with this tag.")] = [],  # noqa: B006
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
    no_stream: Annotated[
        bool, typer.Option("--no-stream", help="Print the answer only once it is complete.")
    ] = False,
    mode: ModeOption = None,
) -> None:
    """Answer a question from the best pages with Qwen2-VL, citing them like [1]; the answer
    streams to the terminal, then the pages it was given are listed (cited ones marked)."""
    from rag.types import Answer

    service = _service()
    answer: Answer | None = None
    streamed = False
    try:
        flt = _filter([service.resolve(d) for d in doc], source, tag)
        if as_json or no_stream:
            answer = service.ask(question, k, flt, mode=mode)
        else:
            stream = service.ask_stream(question, k, flt, mode=mode)
            for chunk in stream:
                typer.echo(chunk, nl=False)  # plain echo: rich would read [1] as markup
                streamed = True
            answer = stream.answer
    except Exception as exc:
        if streamed:
            typer.echo()
        _die_known(exc)
    finally:
        service.close()
    assert answer is not None
    if as_json:
        _print_json(asdict(answer))
        return
    typer.echo("" if streamed else answer.text)
    if not answer.citations:
        return
    table = Table("#", "cited", "score", "source", "page", "doc_id", "image", title="sources")
    for c in answer.citations:
        table.add_row(
            str(c.label),
            "yes" if c.cited else "",
            f"{c.score:.3f}",
            c.source,
            str(c.page),
            c.doc_id[:12],
            c.image,
        )
    out.print(table)
    err.print(
        f"retrieval {answer.retrieval_seconds:.2f} s, "
        f"generation {answer.generation_seconds:.2f} s, "
        f"{answer.prompt_tokens} prompt tokens, {answer.completion_tokens} new tokens",
        highlight=False,
    )


@app.command("eval")
def eval_(
    dataset: Annotated[
        str,
        typer.Argument(
            help="A folder of PDFs with questions.jsonl (or --questions), a questions .jsonl "
            "beside its PDFs, or a ViDoRe dataset: a local folder, a .parquet file, or a Hub id "
            "such as vidore/docvqa_test_subsampled."
        ),
    ],
    questions: Annotated[
        Path | None,
        typer.Option(
            "--questions", help="Questions for a folder of PDFs (default DATASET/questions.jsonl)."
        ),
    ] = None,
    mode: ModeOption = None,
    k: Annotated[
        int,
        typer.Option(
            "-k", "--top-k", min=1, max=1000, help="Pages retrieved per question (@10 needs 10)."
        ),
    ] = 10,
    answers: Annotated[
        bool,
        typer.Option(
            "--answers",
            help="Also answer every question that has a gold answer (Qwen2-VL) and report "
            "exact match, ANLS and generation time.",
        ),
    ] = False,
    reuse_index: Annotated[
        bool,
        typer.Option(
            "--reuse-index",
            help="Evaluate on the index in PAGERAG_DATA_DIR (or the Qdrant server) and keep it, "
            "instead of a temporary one; ingestion only adds what is missing there.",
        ),
    ] = False,
    split: Annotated[str, typer.Option("--split", help="Split of a ViDoRe dataset.")] = "test",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the whole report, per question too, as JSON.")
    ] = False,
) -> None:
    """Measure retrieval quality on labelled questions: nDCG@5/10, recall@1/5/10, MRR@10 and
    search latency (p50/p95); with --answers, answer quality too. The documents are ingested
    into a temporary index, unless --reuse-index."""
    import tempfile

    from rag.eval import DatasetError, evaluate, open_dataset
    from rag.service import PageRAG

    logging.basicConfig(level=logging.WARNING)
    settings = _settings()
    with tempfile.TemporaryDirectory(prefix="pagerag-eval-") as tmp:
        if reuse_index:
            workdir = settings.data_dir / "eval-datasets" / _slug(dataset)
        else:
            # A fresh embedded index: the user's own index and Qdrant server stay untouched.
            settings = settings.model_copy(
                update={"data_dir": Path(tmp) / "data", "qdrant_url": None}
            )
            workdir = Path(tmp) / "dataset"
        try:
            data = open_dataset(dataset, workdir, questions=questions, split=split)
        except DatasetError as exc:
            _die_known(exc)
        try:
            service = PageRAG(settings)
        except Exception as exc:
            _die_known(exc)
        try:
            with _bar(quiet=as_json) as bar:
                ingest_task = bar.add_task("ingest pages", total=None)
                tasks: dict[str, TaskID] = {}

                def ingested(p: IngestProgress) -> None:
                    bar.update(ingest_task, total=p.pages_total or None, completed=p.pages_done)

                def queried(stage: str, done: int, total: int) -> None:
                    if stage not in tasks:
                        tasks[stage] = bar.add_task(f"{stage} questions", total=total)
                    bar.update(tasks[stage], completed=done)

                result = evaluate(
                    service,
                    data,
                    mode=service.search_mode(mode),
                    k=k,
                    answers=answers,
                    on_ingest=ingested,
                    on_query=queried,
                )
        except Exception as exc:
            _die_known(exc)
        finally:
            service.close()
    if as_json:
        _print_json(result.to_dict())
        return
    _print_eval(result, k)


def _print_eval(result: EvalReport, k: int) -> None:
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    table = Table("metric", "value", title=f"{result.dataset}: {result.mode} search, k={k}")
    for name, value in result.metrics.items():
        table.add_row(name, f"{value:.3f}")
    table.add_row("latency p50", f"{result.latency['p50_ms']:.1f} ms")
    table.add_row("latency p95", f"{result.latency['p95_ms']:.1f} ms")
    if result.answers is not None:
        graded = result.answers
        table.add_row("answers graded", str(graded["questions"]))
        for name in ("exact_match", "anls", "contains"):
            table.add_row(name.replace("_", " "), f"{graded[name]:.3f}")
        table.add_row("generation mean", f"{graded['generation_seconds_mean']:.2f} s")
    out.print(table)
    out.print(
        f"{result.questions} questions over {result.pages} pages; {result.backend}, "
        f"{result.retriever_model}; ingestion {result.ingest_seconds:.1f} s",
        highlight=False,
    )


def _slug(text: str) -> str:
    """A folder name for a dataset id or path."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.")[:80] or "dataset"


@docs_app.command("list")
def docs_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every ingested document with its id, source and page count."""
    service = _service()
    try:
        docs = service.documents()
    finally:
        service.close()
    if as_json:
        _print_json([asdict(d) for d in docs])
        return
    table = Table("doc_id", "source", "pages", "title", "tags")
    for d in docs:
        table.add_row(d.doc_id[:12], d.source, str(d.pages), d.title, ", ".join(d.tags))
    out.print(table)
    out.print(f"{len(docs)} documents, {sum(d.pages for d in docs)} pages")


@docs_app.command("delete")
def docs_delete(
    doc_id: Annotated[
        str,
        typer.Argument(help="A document id, or a unique prefix of one.", callback=_doc_prefixes),
    ],
) -> None:
    """Remove a document: its pages in the index, its page images and its manifest entry."""
    service = _service()
    try:
        info = service.delete(doc_id)
    except Exception as exc:
        _die_known(exc)
    finally:
        service.close()
    out.print(f"deleted {info.doc_id[:12]} ({info.source or 'unknown source'}, {info.pages} pages)")


@app.command()
def info(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Backend, models, device, and how much is stored."""
    service = _service()
    try:
        data = asdict(service.info())
    finally:
        service.close()
    if as_json:
        _print_json(data)
        return
    for key, value in data.items():
        out.print(f"{key:>18}: {value}", highlight=False)


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0 for every interface).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 7860,
    docs: Annotated[
        list[Path],
        typer.Option(
            "--docs", help="Folder or file to ingest (incrementally) at start-up (repeatable)."
        ),
    ] = [],  # noqa: B006
) -> None:
    """Serve the web UI at / and the REST API at /api/v1 (OpenAPI docs at /docs) from one
    process. Models load once at start-up; --docs folders are ingested in the background
    (only new or changed files), so /healthz answers at once and /readyz once models are
    loaded. PAGERAG_API_KEYS turns on API keys (and a UI login)."""
    # Gradio keeps uploads in /tmp/gradio by default, shared by every Gradio process on the
    # machine; read once when gradio is imported, so it is set before create_app imports it.
    os.environ.setdefault("GRADIO_TEMP_DIR", str(_settings().data_dir / "gradio"))
    from rag.server.app import create_app
    from rag.server.run import serve as serve_app

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    missing = [str(p) for p in docs if not p.expanduser().exists()]
    if missing:
        _die(f"no such file or folder: {', '.join(missing)}", code=2)
    service = _service()
    try:
        app_ = create_app(service, startup_paths=[p.expanduser() for p in docs])
        err.print(
            f"PageRAG on http://{host}:{port}/ (REST API /api/v1, its docs /docs)", highlight=False
        )
        serve_app(app_, host, port)
    finally:
        service.close()


@app.command()
def reset(
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete the whole local index, page images and manifest (PAGERAG_DATA_DIR)."""
    import shutil

    settings = _settings()
    if not yes:
        typer.confirm(f"Delete everything under {settings.data_dir}?", abort=True)
    for path in (settings.index_dir, settings.images_dir):
        shutil.rmtree(path, ignore_errors=True)
    for path in settings.data_dir.glob(settings.manifest_path.name + "*"):
        path.unlink()
    if settings.qdrant_url:
        err.print(
            f"note: the Qdrant server collection {settings.qdrant_collection!r} was left alone; "
            "delete it on the server if you mean to"
        )
    out.print(f"reset {settings.data_dir}")


if __name__ == "__main__":
    app()
