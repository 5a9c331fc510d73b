"""`pagerag` command line: parses arguments, calls the `PageRAG` service, prints results.

Exit status (the README's table; tests/rag/test_cli.py checks every row): 0 success; 1
ingestion finished but some files failed; 2 bad usage; 3 a problem with the settings, the
model or the index (the message says what to change).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ingest.discover import EXTENSIONS, Shard, SourceFile, discover
from ingest.diskspace import DiskFullError
from ingest.runner import IngestProgress
from rag.config import InvalidSettingsError, SearchMode, Settings
from rag.errors import EXIT_CONFIG, UserError
from rag.ids import IdError, doc_prefix
from rag.index.schema import normalize_path
from rag.keycli import keys_app
from rag.types import Citation, IngestReport, SearchFilter

if TYPE_CHECKING:  # the eval package imports datasets and ir-measures: only when evaluating
    from rag.eval import EvalReport
    from rag.remote import Service
    from rag.service import PageRAG

EXIT_FAILED_FILES = 1  # ingestion finished, some files could not be read
EXIT_USAGE = 2  # bad command-line usage (click's own status for it)
SERVER_FILE = "server.json"  # where `pagerag serve` announces itself (rag.remote.SERVER_FILE)
# EXIT_CONFIG (3): the settings, the model or the index

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
app.add_typer(keys_app, name="keys")
out = Console()
err = Console(stderr=True)


# -- scaffolding shared by the commands -----------------------------------------------------


@app.callback()
def _main(
    library: Annotated[
        str | None,
        typer.Option(
            "--library",
            "-L",
            metavar="NAME",
            help="The library to work on (default: PAGERAG_LIBRARY, else `default`); "
            "`pagerag libraries list` shows them.",
        ),
    ] = None,
) -> None:
    _chosen["library"] = library  # set on every invocation (tests run many in one process)


_chosen: dict[str, str | None] = {"library": None}  # --library, over PAGERAG_LIBRARY


def _root() -> Settings:
    """The settings, or exit 3 with one line per bad one (`InvalidSettingsError`)."""
    library = _chosen["library"]
    try:
        return Settings(**({"library": library} if library else {}))
    except InvalidSettingsError as exc:
        _die(str(exc), exc.exit_code)


def _settings() -> Settings:
    """The settings of the chosen library (`--library`, PAGERAG_LIBRARY): exit 2 for an
    unknown one."""
    from rag.libraries import settings_for

    with _mapped():
        return settings_for(_root())


@contextmanager
def _mapped() -> Iterator[None]:
    """An error a user can fix (`UserError`) becomes its message and exit status; anything
    else is a bug and shows its traceback."""
    try:
        yield
    except UserError as exc:
        _die(str(exc), exc.exit_code)


@contextmanager
def _local(settings: Settings) -> Iterator[PageRAG]:
    """The service in this process, closed at the end."""
    from rag.service import PageRAG

    with _mapped():
        service = PageRAG(settings)
        try:
            yield service
        finally:
            service.close()


@contextmanager
def _opened(settings: Settings | None = None) -> Iterator[Service]:
    """The service for one command: through the running server when `pagerag serve` holds
    the data directory (rag/remote.py), else in this process."""
    settings = settings or _settings()
    url = _server(settings)
    if url is None:
        with _local(settings) as service:
            yield service
        return
    from rag.remote import RemotePageRAG

    with _mapped():
        remote = RemotePageRAG(settings, url)
        try:
            yield remote
        finally:
            remote.close()


def _server(settings: Settings) -> str | None:
    """The URL of the server announced in the data directory, if one runs there. With a
    Qdrant server (PAGERAG_QDRANT_URL) nothing is locked, and commands run here."""
    if settings.qdrant_url or not _announcement(settings).exists():
        return None  # checked before importing rag.remote (httpx): commands start faster
    from rag.remote import running_server

    def waiting(url: str) -> None:
        _note("notice", f"waiting for the PageRAG server at {url} to start")

    return running_server(settings, on_wait=waiting)


def _announcement(settings: Settings) -> Path:
    from rag.libraries import root_dir

    return root_dir(settings) / SERVER_FILE


def _refuse_while_served(settings: Settings, what: str) -> None:
    """Exit 3 when a server holds the data directory and `what` cannot go through it."""
    from rag.remote import running_server

    if _announcement(settings).exists() and (url := running_server(settings)):
        _die(
            f"`pagerag serve` at {url} is using {settings.data_dir}, and {what} cannot go "
            "through it: stop the server first",
            EXIT_CONFIG,
        )


def _die(message: str, code: int = EXIT_CONFIG) -> NoReturn:
    # Escaped (a value may hold brackets) and unwrapped: one line per problem, at any width.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _note(kind: str, message: str) -> None:
    """A `warning:`/`notice:` line on stderr, unwrapped."""
    color = "yellow" if kind == "warning" else "cyan"
    err.print(f"[{color}]{kind}:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _bar(quiet: bool) -> Progress:
    """The progress bar of long commands, on stderr; off for --json and when not a terminal.
    Every task needs the `rate` and `current` fields: add them with `_task`."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[current]}"),
        console=err,
        disable=quiet or not err.is_terminal,
    )


def _task(bar: Progress, description: str, total: int | None = None) -> TaskID:
    return bar.add_task(description, total=total, rate="", current="")


class _IngestBar:
    """Shows `IngestProgress` on a bar: the files, and the pages labelled with the runner's
    stage, so loading the model is never a silent "0/?"."""

    def __init__(self, bar: Progress, *, files: bool = True) -> None:
        self.bar = bar
        self.files = _task(bar, "files") if files else None
        self.pages = _task(bar, _stage("reading"))

    def __call__(self, p: IngestProgress) -> None:
        if self.files is not None:
            self.bar.update(
                self.files, total=p.files_total, completed=p.files_done, current=p.current[-40:]
            )
        rate = f"{p.pages_per_second:.2f} pages/s" if p.pages_done else ""
        self.bar.update(
            self.pages,
            description=_stage(p.stage),
            total=p.pages_total or None,
            completed=p.pages_done,
            rate=rate,
        )


def _stage(stage: str) -> str:
    return f"pages: {stage:<17}"  # as wide as "loading the model": the bar does not jump


def _print_json(data: object) -> None:
    # Plain print: rich would wrap long lines at the console width and break the JSON.
    typer.echo(json.dumps(data, indent=2, default=str))


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _size(n: float) -> str:
    """Bytes for people: 512 B, 12.3 MiB."""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"


def _table(*columns: str, title: str | None = None) -> Table:
    """A table whose paths and names fold onto more lines instead of being cut at the
    terminal width (a cut image path cannot be opened); short columns never wrap."""
    table = Table(title=title)
    for name in columns:
        long = name in ("source", "image", "title", "tags")
        table.add_column(name, overflow="fold" if long else "ellipsis", no_wrap=not long)
    return table


# -- options shared by search, ask and eval -------------------------------------------------


def _doc_prefixes(value: str | list[str]) -> str | list[str]:
    """Typed document ids checked before anything opens (`rag.ids`): not hex is bad usage,
    exit 2 with the reason, so no id is ever taken as a pattern."""
    try:
        if isinstance(value, str):
            return doc_prefix(value)
        return [doc_prefix(v) for v in value]
    except IdError as exc:
        raise typer.BadParameter(str(exc)) from exc


ModeOption = Annotated[
    SearchMode | None,
    typer.Option(
        "--mode",
        help="visual (ColQwen2 on the page images), text (BM25 on the PDF text layer; needs no "
        "model) or hybrid (both in one query, rank-fused). Default: PAGERAG_SEARCH_MODE (hybrid).",
    ),
]
DocOption = Annotated[
    list[str],
    typer.Option(
        "--doc",
        metavar="ID",
        help="Only this document id or prefix (repeatable).",
        callback=_doc_prefixes,
    ),
]
SourceOption = Annotated[
    str | None,
    typer.Option(
        "--source",
        metavar="PATH",
        help="Only files under this path: a prefix of the sources `pagerag docs list` shows "
        "(whole components: reports/2015), or a file or folder path as typed in the shell.",
    ),
]
TagOption = Annotated[
    list[str], typer.Option("--tag", metavar="TAG", help="Only documents with this tag.")
]


class UsageError(UserError):
    """Options that contradict each other or the library: bad usage."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class _Wanted:
    """The filter of a search, and the options it came from, as typed (for messages)."""

    filters: SearchFilter | None
    shown: tuple[str, ...] = ()
    source_unknown: bool = False  # --source is neither a stored source prefix nor ingested


def _wanted(service: Service, doc: list[str], source: str | None, tag: list[str]) -> _Wanted:
    doc_ids = tuple(service.resolve(d) for d in doc)
    shown = [*(f"--doc {d}" for d in doc), *(f"--tag {t}" for t in tag)]
    prefix, unknown = None, False
    if source is not None:
        shown.append(f"--source {source}")
        prefix, under, unknown = _source(service, source)
        if under:  # files ingested from that path: their documents
            if doc_ids and not set(doc_ids) & set(under):
                raise UsageError(
                    f"--source {source} and --doc {' '.join(doc)} have no document in "
                    "common: none of those ids was ingested from that path"
                )
            doc_ids = tuple(d for d in under if d in doc_ids) if doc_ids else under
    filters = SearchFilter(doc_ids=doc_ids, source_prefix=prefix, tags=tuple(tag))
    return _Wanted(None if filters.is_empty() else filters, tuple(shown), unknown)


def _source(service: Service, typed: str) -> tuple[str | None, tuple[str, ...], bool]:
    """--source as typed -> (a source prefix, or else the documents ingested from that path;
    whether it is neither, as far as this library knows).

    Sources are stored relative to the folder each was ingested from (`reports/q1.pdf` for
    `pagerag ingest ~/docs`), so a path as typed in the shell (`~/docs/reports`, `./reports`,
    `/abs/...`) is looked up among the files ingested from there. A prefix no listed document
    has is still passed on: other workers' documents on a shared Qdrant may have it."""
    prefix = normalize_path(typed)
    sources = {normalize_path(s) for d in service.documents() for s in d.sources or (d.source,)}
    known = not prefix or any(s == prefix or s.startswith(prefix + "/") for s in sources)
    as_path = typed in (".", "..") or typed.startswith(("/", "~", "./", "../", "\\"))
    if known and not as_path:
        return prefix, (), False
    path = Path(typed).expanduser()
    found, _ = discover([path]) if path.exists() else ([], [])
    lookup = service.manifest.doc_for_path
    under = tuple(dict.fromkeys(d for f in found if (d := lookup(str(f.path))) is not None))
    return (None, under, False) if under else (prefix, (), not known)


def _nothing_found(service: Service, wanted: _Wanted, mode: SearchMode) -> str:
    """Why a search found no page, and what to do."""
    if not service.documents():
        return "nothing is indexed yet; run `pagerag ingest PATH` first"
    if wanted.source_unknown:
        source = next(s for s in wanted.shown if s.startswith("--source "))
        return (
            f"no page matched: {source} is neither a prefix of the sources `pagerag docs "
            "list` shows (whole path components, such as reports/2015) nor a file or folder "
            "that was ingested"
        )
    text = (
        " (text search finds only pages whose text layer has the words; try --mode hybrid)"
        if mode == "text"
        else ""
    )
    if wanted.shown:
        return (
            f"no page matched {' '.join(wanted.shown)}{text}; widen or remove the filter "
            "(`pagerag docs list` shows each document's id, source and tags)"
        )
    return f"no page matched the question{text}"


# -- commands -------------------------------------------------------------------------------


@app.command()
def ingest(
    paths: Annotated[
        list[Path], typer.Argument(help="PDF or image files, or folders (searched recursively).")
    ],
    tag: Annotated[
        list[str],
        typer.Option("--tag", "-t", metavar="TAG", help="Tag the documents (repeatable)."),
    ] = [],  # noqa: B006
    password: Annotated[
        list[str],
        typer.Option(
            "--password",
            metavar="FILE=PASSWORD",
            help="Opens an encrypted PDF; FILE is its name, its source as listed, or its path.",
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
        _die(f"--shard: {exc}", EXIT_USAGE)
    passwords = _passwords(password, _files(paths))
    with _opened() as service:
        try:
            with _bar(quiet=as_json) as bar:
                report = service.ingest(
                    paths, tags=tag, passwords=passwords, on_progress=_IngestBar(bar), shard=part
                )
        except DiskFullError as exc:  # stopped before the disk filled up: exit 3, say so in JSON
            if as_json:
                done = getattr(exc, "report", None)
                _print_json({**(asdict(done) if done else {}), "error": str(exc)})
            raise
    _print_ingest_report(report, as_json)
    if report.failed:
        raise typer.Exit(EXIT_FAILED_FILES)


def _files(paths: list[Path]) -> list[SourceFile]:
    """The files to ingest, or exit 2 for a path that does not exist or a folder without a
    PDF or image (the runner would report "indexed 0 documents" and look successful)."""
    missing = [str(p) for p in paths if not p.expanduser().exists()]
    if missing:
        _die(f"no such file or folder: {', '.join(missing)}", EXIT_USAGE)
    files: list[SourceFile] = []
    for path in paths:
        found, _ = discover([path])
        if not found:
            kinds = ", ".join(sorted(EXTENSIONS))
            _die(
                f"no PDFs or images found under {path} (ingest looks for {kinds} files, in "
                "subfolders too)",
                EXIT_USAGE,
            )
        files += found
    return files


def _passwords(given: list[str], files: list[SourceFile]) -> dict[str, str]:
    """--password FILE=PW as the runner looks them up (by source or file name); FILE may be
    a path as typed. Exit 2 for a malformed one or one naming none of the files."""
    passwords: dict[str, str] = {}
    for item in given:
        name, sep, secret = item.partition("=")
        if not sep or not name:
            _die(f"--password needs FILE=PASSWORD, got {item!r}", EXIT_USAGE)
        path = Path(name).expanduser()
        match = next(
            (f for f in files if name in (f.source, f.path.name) or path.resolve() == f.path),
            None,
        )
        if match is None:
            listed = ", ".join(f.source for f in files[:5]) + (", ..." if len(files) > 5 else "")
            _die(
                f"--password names {name!r}, which is none of the files to ingest ({listed}); "
                "give the file's name, its source as listed, or its path",
                EXIT_USAGE,
            )
        # A path as typed becomes the source the runner looks passwords up by.
        passwords[name if name in (match.source, match.path.name) else match.source] = secret
    return passwords


def _print_ingest_report(report: IngestReport, as_json: bool) -> None:
    if as_json:
        _print_json(asdict(report))
        return
    duplicates = len(report.duplicates)
    skipped = f"skipped {report.skipped_documents - duplicates} unchanged"
    if duplicates:
        skipped += f" and {duplicates} already in the library"
    out.print(
        f"indexed {_plural(report.indexed_documents, 'document')} "
        f"({_plural(report.indexed_pages, 'page')}), {skipped}, {len(report.failed)} failed "
        f"in {report.seconds:.1f} s",
        highlight=False,
        soft_wrap=True,
    )
    for dup in report.duplicates:
        out.print(
            f"already in the library: {escape(dup.source)} (same content as {escape(dup.same_as)})",
            highlight=False,
            soft_wrap=True,
        )
    for failure in report.failed:
        err.print(
            f"[red]failed:[/] {escape(failure.source)}: {escape(failure.error)}", highlight=False
        )
    for warning in report.warnings:
        _note("warning", f"{warning.source}: {warning.warning}")
    if report.waiting_pages:
        _note(
            "notice",
            f"{_plural(report.waiting_pages, 'page')} stored without visual vectors (text "
            "search works now); they get them on the next ingest once the model loads: "
            f"{' '.join(report.retriever_error.split())}",
        )
    if report.visual_added:
        _note("notice", f"{_plural(report.visual_added, 'page')} got their visual vectors")


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="The question or keywords.")],
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, max=100, help="How many pages.")] = 5,
    doc: DocOption = [],  # noqa: B006
    source: SourceOption = None,
    tag: TagOption = [],  # noqa: B006
    as_json: Annotated[bool, typer.Option("--json", help="Print the hits as JSON.")] = False,
    mode: ModeOption = None,
) -> None:
    """Find the pages that best match a question: late-interaction MaxSim over ColQwen2, BM25
    over the PDF text layer, or both fused (--mode)."""
    with _opened() as service:
        wanted = _wanted(service, doc, source, tag)
        hits = service.search(query, k, filters=wanted.filters, mode=mode)
        missing = "" if hits else _nothing_found(service, wanted, service.search_mode(mode))
    if as_json:
        shown = ("doc_id", "source", "page", "score", "image")
        _print_json([{name: getattr(h, name) for name in shown} for h in hits])
        return
    if not hits:
        out.print(escape(missing), highlight=False)
        return
    table = _table("#", "score", "source", "page", "doc_id", "image")
    for i, h in enumerate(hits, 1):
        table.add_row(str(i), f"{h.score:.3f}", h.source, str(h.page), h.doc_id[:12], h.image)
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
    doc: DocOption = [],  # noqa: B006
    source: SourceOption = None,
    tag: TagOption = [],  # noqa: B006
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
    no_stream: Annotated[
        bool, typer.Option("--no-stream", help="Print the answer only once it is complete.")
    ] = False,
    mode: ModeOption = None,
) -> None:
    """Answer a question from the best pages with Qwen2-VL, citing them like [1]; the answer
    streams to the terminal, then the pages it was given are listed (cited ones marked)."""
    streamed = False
    with _opened() as service:
        filters = _wanted(service, doc, source, tag).filters
        if as_json or no_stream:
            answer = service.ask(question, k, filters=filters, mode=mode)
        else:
            stream = service.ask_stream(question, k, filters=filters, mode=mode)
            try:
                for chunk in stream:
                    typer.echo(chunk, nl=False)  # plain echo: rich would read [1] as markup
                    streamed = True
            except UserError:
                if streamed:  # the error goes on a line of its own
                    typer.echo()
                raise
            answer = stream.answer
    if as_json:
        _print_json(asdict(answer))
        return
    typer.echo("" if streamed else answer.text)
    if answer.citations:
        out.print(_sources_table(answer.citations))
        err.print(
            f"retrieval {answer.retrieval_seconds:.2f} s, "
            f"generation {answer.generation_seconds:.2f} s, "
            f"{answer.prompt_tokens} prompt tokens, {answer.completion_tokens} new tokens",
            highlight=False,
        )


def _sources_table(citations: list[Citation]) -> Table:
    table = _table("#", "cited", "score", "source", "page", "doc_id", "image", title="sources")
    for c in citations:
        table.add_row(
            str(c.label),
            "yes" if c.cited else "",
            f"{c.score:.3f}",
            c.source,
            str(c.page),
            c.doc_id[:12],
            c.image,
        )
    return table


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

    logging.basicConfig(level=logging.WARNING)
    settings = _settings()
    if reuse_index:
        _refuse_while_served(settings, "an evaluation on its index")
    with tempfile.TemporaryDirectory(prefix="pagerag-eval-") as tmp:
        settings, workdir = _eval_place(settings, dataset, Path(tmp), reuse_index)
        try:
            data = open_dataset(dataset, workdir, questions=questions, split=split)
        except DatasetError as exc:
            _die(str(exc), exc.exit_code)
        with _local(settings) as service, _bar(quiet=as_json) as bar:
            tasks: dict[str, TaskID] = {}

            def queried(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = _task(bar, f"{stage} questions", total)
                bar.update(tasks[stage], completed=done)

            result = evaluate(
                service,
                data,
                mode=service.search_mode(mode),
                k=k,
                answers=answers,
                on_ingest=_IngestBar(bar, files=False),
                on_query=queried,
            )
    if as_json:
        _print_json(result.to_dict())
        return
    _print_eval(result, k)


def _eval_place(
    settings: Settings, dataset: str, tmp: Path, reuse_index: bool
) -> tuple[Settings, Path]:
    """The settings to evaluate with and the folder a downloaded dataset goes to: the user's
    index with --reuse-index, else a fresh embedded one that leaves theirs untouched."""
    if reuse_index:
        return settings, settings.data_dir / "eval-datasets" / _slug(dataset)
    fresh = settings.model_copy(update={"data_dir": tmp / "data", "qdrant_url": None})
    return fresh, tmp / "dataset"


def _print_eval(result: EvalReport, k: int) -> None:
    for warning in result.warnings:
        _note("warning", warning)
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
def docs_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print the documents as JSON.")] = False,
) -> None:
    """Every ingested document with its id, source and page count."""
    with _opened() as service:
        docs = service.documents()
    if as_json:
        _print_json([asdict(d) for d in docs])
        return
    if not docs:
        out.print("no documents yet; run `pagerag ingest PATH`")
        return
    table = _table("doc_id", "source", "pages", "title", "tags")
    for d in docs:
        table.add_row(d.doc_id[:12], d.source, str(d.pages), d.title, ", ".join(d.tags))
    out.print(table)
    pages = sum(d.pages for d in docs)
    out.print(f"{_plural(len(docs), 'document')}, {_plural(pages, 'page')}", highlight=False)


@docs_app.command("delete")
def docs_delete(
    doc_id: Annotated[
        str,
        typer.Argument(help="A document id, or a unique prefix of one.", callback=_doc_prefixes),
    ],
) -> None:
    """Remove a document: its pages in the index, its page images and its manifest entry."""
    with _opened() as service:
        info = service.delete(doc_id)
    source = escape(info.source or "unknown source")
    out.print(f"deleted {info.doc_id[:12]} ({source}, {_plural(info.pages, 'page')})")


@docs_app.command("edit")
def docs_edit(
    doc_id: Annotated[
        str,
        typer.Argument(help="A document id, or a unique prefix of one.", callback=_doc_prefixes),
    ],
    title: Annotated[str | None, typer.Option("--title", help="A new title.")] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", "-t", metavar="TAG", help="The tags from now on (repeatable)."),
    ] = None,
    no_tags: Annotated[bool, typer.Option("--no-tags", help="Remove every tag.")] = False,
) -> None:
    """Change a document's title or tags after ingestion; search filters by the new tags."""
    if title is None and tag is None and not no_tags:
        _die("nothing to change: give --title, --tag or --no-tags", EXIT_USAGE)
    with _opened() as service:
        d = service.update_document(doc_id, title=title, tags=[] if no_tags else tag)
    tags = ", ".join(d.tags) or "no tags"
    out.print(escape(f"{d.doc_id[:12]} {d.source}: {d.title!r}, {tags}"), highlight=False)


libraries_app = typer.Typer(
    help="Separate libraries (documents, index, page images, model settings) in one data "
    "directory; `--library NAME` picks one for any command.",
    no_args_is_help=True,
)
app.add_typer(libraries_app, name="libraries")


@libraries_app.command("list")
def libraries_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print them as JSON.")] = False,
) -> None:
    """Every library, `default` first, with its own settings."""
    from dataclasses import asdict

    from rag import libraries

    root = _root()
    with _mapped():
        found = [libraries.info(root, name) for name in libraries.names(root)]
    if as_json:
        _print_json([asdict(i) for i in found])
        return
    table = _table("library", "settings", "created", "folder")
    for i in found:
        own = ", ".join(f"{k}={v}" for k, v in sorted(i.settings.items())) or "(the server's)"
        table.add_row(i.name, own, i.created_at or "-", i.data_dir)
    out.print(table)


@libraries_app.command("create")
def libraries_create(
    name: Annotated[str, typer.Argument(help="Lowercase letters, digits, '-' and '_'.")],
    retriever_model: Annotated[
        str | None, typer.Option(help="Its retriever (default: PAGERAG_RETRIEVER_MODEL).")
    ] = None,
    generator_model: Annotated[
        str | None, typer.Option(help="Its answerer (default: PAGERAG_GENERATOR_MODEL).")
    ] = None,
    search_mode: Annotated[
        str | None, typer.Option(help="visual, text or hybrid (default: PAGERAG_SEARCH_MODE).")
    ] = None,
) -> None:
    """Create an empty library; then `pagerag --library NAME ingest FOLDER`."""
    from rag import libraries

    root = _root()
    own = {
        "retriever_model": retriever_model,
        "generator_model": generator_model,
        "search_mode": search_mode,
    }
    with _mapped():
        made = libraries.create(root, name, own)
    out.print(f"created library {made.name} in {made.data_dir}", highlight=False)


@libraries_app.command("delete")
def libraries_delete(
    name: Annotated[str, typer.Argument(help="The library to delete.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a library: its documents, index, page images and jobs."""
    from rag.libraries import Libraries

    root = _root()
    _refuse_while_served(root, "deleting a library")
    with _mapped():
        libs = Libraries(root)
        info = libs.info(name)
        if not yes:
            typer.confirm(f"Delete library {name} and everything in {info.data_dir}?", abort=True)
        libs.delete(name)
    out.print(f"deleted library {name}", highlight=False)


@app.command()
def info(
    as_json: Annotated[bool, typer.Option("--json", help="Print everything as JSON.")] = False,
) -> None:
    """Backend, models, device, and how much is stored."""
    with _opened() as service:
        data = asdict(service.info())
        url = getattr(service, "url", None)  # served: the server's figures
    if as_json:
        _print_json(data)
        return
    lines = _info_lines(data)
    for key, value in [("server", url), *lines] if url else lines:
        out.print(f"{key:>12}: {escape(value)}", highlight=False, soft_wrap=True)


def _info_lines(i: dict) -> list[tuple[str, str]]:
    def loaded(flag: bool) -> str:
        return "loaded" if flag else "not loaded"

    lines = [
        ("backend", i["backend"]),
        ("data dir", i["data_dir"]),
        ("retriever", f"{i['retriever_model']}, {loaded(i['retriever_loaded'])}"),
        ("generator", f"{i['generator_model']}, {loaded(i['generator_loaded'])}"),
        ("device", f"{i['device']}, {i['dtype']}"),
        ("documents", str(i["documents"])),
        ("pages", str(i["pages"])),
    ]
    if i["pending_documents"]:
        pending = f"{_plural(i['pending_documents'], 'document')} ({i['pending_pages']} pages)"
        lines.append(("pending", f"{pending} being ingested or interrupted: not searched yet"))
    if i["waiting_pages"]:
        waiting = f"{_plural(i['waiting_pages'], 'page')} without visual vectors (text search)"
        lines.append(("waiting", waiting))
    if i["failed_files"]:
        lines.append(("failed", _plural(i["failed_files"], "file") + " could not be read"))
    sizes = f"index {_size(i['index_bytes'])}, page images {_size(i['images_bytes'])}"
    lines.append(("on disk", f"{_size(i['bytes_on_disk'])} ({sizes})"))
    return lines


@app.command()
def serve(
    host: Annotated[
        str,
        typer.Option(
            envvar="PAGERAG_HOST", help="Address to listen on (0.0.0.0 for every interface)."
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=1, max=65535, envvar="PAGERAG_PORT", help="Port to listen on.")
    ] = 7860,
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
    missing = [str(p) for p in docs if not p.expanduser().exists()]
    if missing:
        _die(f"no such file or folder: {', '.join(missing)}", EXIT_USAGE)
    settings = _settings()
    if url := _server(settings):
        _die(f"`pagerag serve` already serves {settings.data_dir} at {url}", EXIT_CONFIG)
    _check_port(host, port)
    # Gradio keeps uploads in /tmp/gradio by default, shared by every Gradio process on the
    # machine; read once when gradio is imported, so it is set before create_app imports it.
    os.environ.setdefault("GRADIO_TEMP_DIR", str(settings.data_dir / "gradio"))
    from rag.server.app import create_app
    from rag.server.run import serve as serve_app

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from rag.libraries import Libraries
    from rag.remote import announced, connect_url

    with _local(settings) as service:
        libraries = Libraries(_root(), first=service)
        app_ = create_app(
            service, libraries=libraries, startup_paths=[p.expanduser() for p in docs]
        )
        err.print(
            f"PageRAG on http://{host}:{port}/ (REST API /api/v1, its docs /docs)", highlight=False
        )
        # Announced once the index is ours: CLI commands on this data directory go through
        # this server meanwhile (rag/remote.py). uvicorn raises the SIGTERM it stopped for
        # again once it is done: as an exit, so the announcement and the index are closed.
        before = signal.signal(signal.SIGTERM, lambda sig, _frame: sys.exit(128 + sig))
        try:
            with announced(settings, connect_url(host, port)):
                serve_app(app_, host, port)
        finally:
            signal.signal(signal.SIGTERM, before)


def _check_port(host: str, port: int) -> None:
    """Exit 2 at once when `host:port` cannot be listened on, before the models load and
    before anything says the server is up (uvicorn would fail only after start-up)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                _die(f"port {port} is in use; set --port or PAGERAG_PORT", EXIT_USAGE)
            _die(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); set --host and "
                "--port (or PAGERAG_HOST, PAGERAG_PORT)",
                EXIT_USAGE,
            )


@app.command()
def ocr(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Read the stored pages that have no usable text layer (scans) by OCR, so text and
    hybrid search find them; no re-ingesting. New ingestions do this by themselves."""
    settings = _settings()
    _refuse_while_served(settings, "OCR of the stored pages")
    with _local(settings) as service, _bar(as_json) as bar:
        task = _task(bar, "pages checked")
        report = service.fill_ocr(lambda done, total: bar.update(task, total=total, completed=done))
    if as_json:
        _print_json(asdict(report))
        return
    out.print(
        f"checked {_plural(report.checked, 'page')}: {report.read} read by OCR "
        f"({settings.ocr_engine}), {len(report.failed)} failed",
        highlight=False,
    )
    for failure in report.failed:
        _note("warning", f"{failure.source}: {failure.error}")
    if report.failed:
        raise typer.Exit(EXIT_FAILED_FILES)


@app.command()
def mcp() -> None:
    """Serve PageRAG's tools to an agent host over stdio (MCP): search_pages, ask,
    list_documents, get_page_image and add_files. A running `pagerag serve` offers the same
    tools (add_files aside) at /mcp."""
    settings = _settings()
    _refuse_while_served(settings, "an MCP server over stdio (use the server's /mcp instead)")
    from rag.server.mcp import run_stdio

    with _mapped():
        run_stdio(settings)


models_app = typer.Typer(help="The supported retrievers and answerers, and fetching them.")
app.add_typer(models_app, name="models")


@models_app.callback(invoke_without_command=True)
def models_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the table as JSON.")] = False,
) -> None:
    """Every supported model: family, size, licence, whether it is active and downloaded."""
    if ctx.invoked_subcommand is not None:
        return
    from rag.models.registry import model_rows

    rows = model_rows(_settings())
    if as_json:
        _print_json(rows)
        return
    # Lines, not a table: a Hub id must stay whole at any terminal width to be copied.
    for kind in ("retriever", "answerer"):
        out.print(f"[bold]{kind}s[/]")
        for r in (r for r in rows if r["kind"] == kind):
            facts = [
                r["family"] or "unknown family",
                f"{r['params_b']:g} B parameters" if r["params_b"] else "",
                f"{r['size_gb']:g} GB download" if r["size_gb"] else "",
                _licence(r["license"] or ""),
                f"on disk ({r['cached_gb']:g} GB)" if r["cached"] and r["cached_gb"] else "",
                # The index stores 128-d rows (rag/index/schema.py); wider ones are refused.
                f"not usable yet ({r['dim']}-d rows)" if r["dim"] not in (None, 128) else "",
            ]
            mark = "*" if r["active"] else " "
            line = f"{mark} {r['model']}  {', '.join(f for f in facts if f)}"
            out.print(escape(line), highlight=False, soft_wrap=True)
    out.print(
        "* = chosen by PAGERAG_RETRIEVER_MODEL / PAGERAG_GENERATOR_MODEL; sizes from the model "
        "cards; `pagerag models pull NAME` downloads one for an offline machine",
        highlight=False,
    )


def _licence(full: str) -> str:
    """The licence's name, and "(NC)" where any part is non-commercial (`--json` has it all)."""
    short = full.split(";")[0].split(" (")[0]
    return (
        short + " (NC)" if "non-commercial" in full.lower() or "research" in full.lower() else short
    )


@models_app.command("pull")
def models_pull(
    name: Annotated[str, typer.Argument(help="A name or Hub id from `pagerag models`.")],
) -> None:
    """Download a model (and its base model, for adapters) into the Hugging Face cache."""
    from rag.models.loading import ModelSpec, resolve_model_source
    from rag.models.registry import models

    wanted = name.casefold()
    found = [m for m in models() if wanted in (m.model.casefold(), m.name.casefold())]
    if not found:
        _die(f"no model {name!r} in the registry; `pagerag models` lists them", EXIT_USAGE)
    [entry] = found[:1]
    setting = "PAGERAG_RETRIEVER_MODEL" if entry.kind == "retriever" else "PAGERAG_GENERATOR_MODEL"
    with _mapped():
        for model_id in [entry.model, *([entry.base_model] if entry.base_model else [])]:
            source = resolve_model_source(model_id, None, ModelSpec(setting, entry.family))
            out.print(f"{model_id}: {source.path}", highlight=False, soft_wrap=True)
    out.print(f"use it with {setting}={entry.model}", highlight=False)


@app.command()
def reset(
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete the whole local index, page images and manifest (PAGERAG_DATA_DIR)."""
    import shutil

    settings = _settings()
    _refuse_while_served(settings, "a reset")
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
