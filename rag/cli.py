"""`pagerag` command line: parses arguments, calls the `PageRAG` service, prints results.

Exit status: 0 success; 1 ingestion finished but some files failed; 2 bad usage;
3 a problem with the settings, the model or the index (the message says what to change).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ingest.runner import Progress as IngestProgress
from rag.config import Settings
from rag.types import SearchFilter

EXIT_FAILED_FILES = 1
EXIT_CONFIG = 3

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


def _service():
    from rag.service import PageRAG

    try:
        return PageRAG(Settings())
    except ValidationError as exc:
        _die(f"invalid setting: {exc}")
    except Exception as exc:
        _die_known(exc)


def _die(message: str, code: int = EXIT_CONFIG) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _die_known(exc: Exception) -> None:
    """Turn errors a user can fix into a message and exit 3; anything else is a bug."""
    from rag.index.base import IndexMismatchError, IndexUnavailableError
    from rag.models.generator import GenerationError
    from rag.models.loading import ModelLoadError
    from rag.service import PageRAGError

    known = (
        PageRAGError | ModelLoadError | IndexMismatchError | IndexUnavailableError | GenerationError
    )
    if isinstance(exc, known):
        _die(str(exc))
    raise exc


def _print_json(data: object) -> None:
    # Plain print: rich would wrap long lines at the console width and break the JSON.
    typer.echo(json.dumps(data, indent=2, default=str))


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
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Render, embed and store every page of PDFs and images. Unchanged files are skipped,
    so running it again on the same folder only picks up what is new or changed."""
    logging.basicConfig(level=logging.WARNING)
    service = _service()
    try:
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[current]}"),
            console=err,
            disable=as_json or not err.is_terminal,
        ) as bar:
            files = bar.add_task("files", total=None, rate="", current="")
            pages = bar.add_task("pages", total=None, rate="", current="")

            def show(p: IngestProgress) -> None:
                bar.update(
                    files, total=p.files_total, completed=p.files_done, current=p.current[-40:]
                )
                rate = f"{p.pages_per_second:.2f} pages/s" if p.pages_done else ""
                bar.update(pages, total=p.pages_total or None, completed=p.pages_done, rate=rate)

            report = service.ingest(paths, tags=tag, on_progress=show)
    except Exception as exc:
        _die_known(exc)
    finally:
        service.close()
    if as_json:
        _print_json(asdict(report))
    else:
        out.print(
            f"indexed {report.indexed_documents} documents ({report.indexed_pages} pages), "
            f"skipped {report.skipped_documents} unchanged, {len(report.failed)} failed "
            f"in {report.seconds:.1f} s"
        )
        for failure in report.failed:
            err.print(f"[red]failed:[/] {failure['source']}: {failure['error']}", highlight=False)
    if report.failed:
        raise typer.Exit(EXIT_FAILED_FILES)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="The question or keywords.")],
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, max=100, help="How many pages.")] = 5,
    doc: Annotated[
        list[str], typer.Option("--doc", help="Only this document id (repeatable).")
    ] = [],  # noqa: B006
    source: Annotated[
        str | None, typer.Option("--source", help="Only files under this path prefix.")
    ] = None,
    tag: Annotated[list[str], typer.Option("--tag", help="Only documents with this tag.")] = [],  # noqa: B006
    as_json: Annotated[bool, typer.Option("--json", help="Print the hits as JSON.")] = False,
) -> None:
    """Find the pages that best match a question (late-interaction MaxSim over ColQwen2)."""
    service = _service()
    try:
        doc_ids = [service.resolve(d) for d in doc]
        hits = service.search(query, k, _filter(doc_ids, source, tag))
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
        list[str], typer.Option("--doc", help="Only this document id (repeatable).")
    ] = [],  # noqa: B006
    source: Annotated[
        str | None, typer.Option("--source", help="Only files under this path prefix.")
    ] = None,
    tag: Annotated[list[str], typer.Option("--tag", help="Only documents with this tag.")] = [],  # noqa: B006
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
    no_stream: Annotated[
        bool, typer.Option("--no-stream", help="Print the answer only once it is complete.")
    ] = False,
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
            answer = service.ask(question, k, flt)
        else:
            for item in service.ask_stream(question, k, flt):
                if isinstance(item, Answer):
                    answer = item
                else:
                    typer.echo(item, nl=False)  # plain echo: rich would read [1] as markup
                    streamed = True
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
    doc_id: Annotated[str, typer.Argument(help="A document id, or a unique prefix of one.")],
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
        data = service.info()
    finally:
        service.close()
    if as_json:
        _print_json(data)
        return
    for key, value in data.items():
        out.print(f"{key:>18}: {value}", highlight=False)


@app.command()
def reset(
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete the whole local index, page images and manifest (PAGERAG_DATA_DIR)."""
    import shutil

    settings = Settings()
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
