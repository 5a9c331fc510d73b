"""Evaluation datasets: a folder of PDFs with `questions.jsonl`, or ViDoRe (v1, v2/v3 BEIR).

Every loader returns an `EvalDataset`: a folder to ingest, the questions, and the relevant pages
of each question as page keys "<doc_id>:<page>", where doc_id is the SHA-256 of the file bytes
(the document id ingestion gives it) and page is 1-based. Keys from file contents, not names,
make the judgements hold for identical files under two names and for renamed folders.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingest.discover import file_sha256, sniff_kind
from rag.errors import UserError

if TYPE_CHECKING:
    from datasets import Dataset


class DatasetError(UserError, ValueError):
    """The dataset cannot be read; the message says what is wrong and where."""

    exit_code = 2  # the DATASET argument is wrong


@dataclass(frozen=True)
class EvalQuery:
    qid: str
    text: str
    answers: tuple[str, ...] = ()  # gold answers, any of which counts as right


@dataclass
class EvalDataset:
    name: str
    kind: str  # "questions" | "vidore-v1" | "vidore-beir"
    root: Path  # the folder to ingest (its files are the corpus)
    queries: list[EvalQuery]
    qrels: dict[str, dict[str, int]]  # query id -> {page key: relevance > 0}
    labels: dict[str, str] = field(default_factory=dict)  # page key -> "source p.N" for humans
    # page key -> text to index for that page: the OCR text that ViDoRe ships with each page
    # image (an image has no text layer, so without it the text channel would see nothing).
    page_texts: dict[str, str] = field(default_factory=dict)


def page_key(doc_id: str, page: int) -> str:
    return f"{doc_id}:{page}"


# -- a folder of PDFs plus questions.jsonl ---------------------------------------------------


def load_questions(root: Path, questions: Path | None = None) -> EvalDataset:
    """`root`: the documents; `questions` (default root/questions.jsonl): one JSON object per
    line, {"question": str, "source": path relative to root, "page": 1-based int} and an
    optional "answer" (a string or a list of accepted strings) and "id"."""
    root = root.expanduser()
    questions = (questions or root / "questions.jsonl").expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder of documents")
    if not questions.is_file():
        raise DatasetError(
            f"no questions file at {questions}: write one JSON object per line, "
            '{"question": ..., "source": ..., "page": ...}, or pass --questions FILE'
        )
    doc_ids: dict[Path, str] = {}
    queries: list[EvalQuery] = []
    qrels: dict[str, dict[str, int]] = {}
    labels: dict[str, str] = {}
    for n, item in _jsonl(questions):
        where = f"{questions.name} line {n}"
        text = item.get("question")
        source = item.get("source")
        page = item.get("page")
        if not isinstance(text, str) or not text.strip():
            raise DatasetError(f'{where}: "question" must be a non-empty string')
        if not isinstance(source, str) or not source.strip():
            raise DatasetError(f'{where}: "source" must be the document path relative to {root}')
        if isinstance(page, bool) or not isinstance(page, int) or page < 1:
            raise DatasetError(f'{where}: "page" must be a page number, 1 for the first page')
        path = root / source
        if not path.is_file():
            raise DatasetError(f"{where}: {source} is not a file under {root}")
        if path not in doc_ids:
            doc_ids[path] = file_sha256(path)[0]
        qid = str(item.get("id", f"q{n}"))
        if qid in qrels:
            raise DatasetError(f"{where}: the id {qid!r} is used twice")
        key = page_key(doc_ids[path], page)
        queries.append(EvalQuery(qid, text.strip(), _answers(item.get("answer"), where)))
        qrels[qid] = {key: 1}
        labels.setdefault(key, f"{source} p.{page}")
    if not queries:
        raise DatasetError(f"{questions} holds no questions")
    return EvalDataset(root.name or str(root), "questions", root, queries, qrels, labels)


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise DatasetError(f"{path.name} line {n} is not JSON: {exc}") from exc
        if not isinstance(item, dict):
            raise DatasetError(f"{path.name} line {n} is not a JSON object")
        yield n, item


def _answers(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value.strip() else ()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(v for v in value if v.strip())
    raise DatasetError(f'{where}: "answer" must be a string or a list of strings')


# -- ViDoRe ----------------------------------------------------------------------------------

_BEIR_PARTS = ("corpus", "queries", "qrels")
# Columns that hold a page's OCR text in ViDoRe datasets (v1: text_description; v2/v3 corpora
# carry markdown), tried in this order.
_TEXT_COLUMNS = ("text_description", "markdown", "text")


def load_vidore(spec: str, workdir: Path, *, split: str = "test") -> EvalDataset:
    """A ViDoRe dataset from a local directory, a parquet file, or the Hub (when online).

    v1 (one row per question with its gold page: query, image, image_filename): the corpus is
    every distinct image, a question's relevant page is the image of its row (the last one when
    a question repeats, as the ViDoRe v1 leaderboard does). v2/v3 (BEIR): the subsets corpus
    (corpus-id, image), queries (query-id, query) and qrels (query-id, corpus-id, score).
    Page images are written under `workdir/corpus/` for ingestion.
    """
    kind, parts = _open_vidore(spec, split)
    corpus_dir = workdir / "corpus"
    corpus_dir.mkdir(parents=True, exist_ok=True)
    name = Path(spec).name if Path(spec).expanduser().exists() else spec
    if kind == "vidore-v1":
        return _from_v1(name, parts["rows"], workdir)
    return _from_beir(name, parts, workdir)


def _open_vidore(spec: str, split: str) -> tuple[str, dict[str, Dataset]]:
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".parquet":
            raise DatasetError(f"{path} is neither a folder nor a .parquet file")
        return "vidore-v1", {"rows": _parquet([path])}
    if path.is_dir():
        beir = {part: _split_files(_part_files(path, part), split) for part in _BEIR_PARTS}
        if all(beir.values()):
            return "vidore-beir", {part: _parquet(files) for part, files in beir.items()}
        files = _split_files(sorted(path.rglob("*.parquet")), split)
        if not files:
            raise DatasetError(
                f"no parquet files under {path}: expected ViDoRe v1 (data/*.parquet) or "
                "BEIR subsets (corpus/, queries/, qrels/)"
            )
        return "vidore-v1", {"rows": _parquet(files)}
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise DatasetError(f"no such file or folder: {spec}")
    return _from_hub(spec, split)


def _part_files(root: Path, part: str) -> list[Path]:
    """Parquet files of one BEIR subset: root/part/*.parquet or root/part*.parquet."""
    inside = sorted((root / part).rglob("*.parquet")) if (root / part).is_dir() else []
    return inside or sorted(root.glob(f"{part}*.parquet"))


def _split_files(files: list[Path], split: str) -> list[Path]:
    """The files of `split` when file names say which split they hold (test-0000-of-0001...)."""
    named = [f for f in files if re.match(rf"{re.escape(split)}[-_.]", f.name)]
    return named or files


def _parquet(files: Iterable[Path]) -> Dataset:
    from datasets import load_dataset

    return load_dataset("parquet", data_files=[str(f) for f in files], split="train")


def _from_hub(spec: str, split: str) -> tuple[str, dict[str, Dataset]]:
    from datasets import load_dataset

    try:
        try:
            parts = {p: load_dataset(spec, p, split=split) for p in _BEIR_PARTS}
            return "vidore-beir", parts
        except ValueError as exc:  # no such config: a v1 dataset (one table)
            if "config" not in str(exc).lower():
                raise
            return "vidore-v1", {"rows": load_dataset(spec, split=split)}
    except DatasetError:
        raise
    except Exception as exc:  # network, auth, missing dataset: all mean "cannot get it here"
        raise DatasetError(
            f"cannot load {spec!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}). "
            f"Offline, download it where there is a network (`huggingface-cli download "
            f"--repo-type dataset {spec} --local-dir DIR`) and pass DIR instead."
        ) from exc


def _from_v1(name: str, rows: Dataset, workdir: Path) -> EvalDataset:
    _need(rows, ("query", "image"), "ViDoRe v1")
    rows = _raw_images(rows)
    keys: dict[str, str] = {}  # image filename -> page key
    texts: dict[str, str] = {}
    relevant: dict[str, str] = {}  # question -> image filename (the last row wins)
    answers: dict[str, tuple[str, ...]] = {}
    for i, row in enumerate(rows):
        filename = str(row.get("image_filename") or f"row-{i}")
        if filename not in keys:
            keys[filename] = _store_image(row["image"], workdir, len(keys))
            text = _page_text(row)
            if text:
                texts[keys[filename]] = text
        query = row.get("query")
        if isinstance(query, str) and query.strip():
            relevant[query] = filename
            answers.setdefault(query, _answers_of(row.get("answer")))
    if not relevant:
        raise DatasetError(f"{name}: no row has a query")
    queries = [EvalQuery(f"q{n}", q, answers[q]) for n, q in enumerate(relevant, 1)]
    qrels = {q.qid: {keys[relevant[q.text]]: 1} for q in queries}
    labels = {key: filename for filename, key in keys.items()}
    return EvalDataset(name, "vidore-v1", workdir, queries, qrels, labels, texts)


def _from_beir(name: str, parts: Mapping[str, Dataset], workdir: Path) -> EvalDataset:
    _need(parts["corpus"], ("corpus-id", "image"), "the corpus subset")
    _need(parts["queries"], ("query-id", "query"), "the queries subset")
    _need(parts["qrels"], ("query-id", "corpus-id", "score"), "the qrels subset")
    keys: dict[str, str] = {}  # corpus id -> page key
    texts: dict[str, str] = {}
    for row in _raw_images(parts["corpus"]):
        cid = str(row["corpus-id"])
        if cid not in keys:
            keys[cid] = _store_image(row["image"], workdir, len(keys))
            text = _page_text(row)
            if text:
                texts[keys[cid]] = text
    qrels: dict[str, dict[str, int]] = {}
    for row in parts["qrels"]:
        cid, score = str(row["corpus-id"]), int(row["score"])
        if score > 0 and cid in keys:  # graded (v3 uses 1 and 2); 0 means judged irrelevant
            pages = qrels.setdefault(str(row["query-id"]), {})
            pages[keys[cid]] = max(score, pages.get(keys[cid], 0))
    queries = [
        EvalQuery(str(row["query-id"]), str(row["query"]), _answers_of(row.get("answer")))
        for row in parts["queries"].remove_columns(_image_columns(parts["queries"]))
        if str(row["query-id"]) in qrels and str(row["query"] or "").strip()
    ]
    if not queries:
        raise DatasetError(f"{name}: no query has a relevant page in the corpus")
    qrels = {q.qid: qrels[q.qid] for q in queries}
    labels = {key: f"corpus-id {cid}" for cid, key in keys.items()}
    return EvalDataset(name, "vidore-beir", workdir, queries, qrels, labels, texts)


def _need(ds: Dataset, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise DatasetError(
            f"{what} has no column(s) {missing} (columns: {ds.column_names}); "
            "is this a ViDoRe dataset?"
        )


def _image_columns(ds: Dataset) -> list[str]:
    from datasets import Image

    return [name for name, feature in ds.features.items() if isinstance(feature, Image)]


def _raw_images(ds: Dataset) -> Dataset:
    """The image column as stored bytes: no decoding, and JPEG pages stay the JPEG they are."""
    from datasets import Image

    if isinstance(ds.features.get("image"), Image):
        return ds.cast_column("image", Image(decode=False))
    return ds


def _store_image(value: Any, workdir: Path, n: int) -> str:
    """Write one page image as `corpus/NNNNNN.png|.jpg`; its page key (doc_id = SHA-256)."""
    data = _image_bytes(value)
    suffix = ".png" if data.startswith(b"\x89PNG") else ".jpg"
    path = workdir / "corpus" / f"{n:06d}{suffix}"
    if not path.is_file() or path.read_bytes() != data:
        path.write_bytes(data)
    return page_key(file_sha256(path)[0], 1)


def _image_bytes(value: Any) -> bytes:
    from PIL import Image

    data: bytes | None = None
    if isinstance(value, dict):
        data = value.get("bytes")
        if data is None and value.get("path"):
            data = Path(value["path"]).read_bytes()
    elif isinstance(value, bytes | bytearray):
        data = bytes(value)
    elif isinstance(value, Image.Image):
        image = value
    else:
        raise DatasetError(f"cannot read a page image from a {type(value).__name__}")
    if data is not None:
        if sniff_kind(data[:1024]) == "image":  # PNG or JPEG: ingestion reads it as it is
            return data
        image = Image.open(io.BytesIO(data))  # WebP, TIFF...: converted to PNG
    out = io.BytesIO()
    image.convert("RGB").save(out, format="PNG")
    return out.getvalue()


def _page_text(row: Mapping[str, Any]) -> str:
    for column in _TEXT_COLUMNS:
        value = row.get(column)
        if isinstance(value, str) and value.strip():
            return value
    return ""


def _answers_of(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,) if value.strip() else ()
    if isinstance(value, list | tuple):
        return tuple(str(v) for v in value if isinstance(v, str | int | float) and str(v).strip())
    return ()


def open_dataset(
    spec: str, workdir: Path, *, questions: Path | None = None, split: str = "test"
) -> EvalDataset:
    """What `pagerag eval DATASET` accepts, told apart by what is there.

    A folder with questions.jsonl (or with `questions` given), or a questions .jsonl file whose
    documents sit beside it: PDFs plus questions. Any other folder, a .parquet file or a Hub id
    (owner/name): ViDoRe, whose page images are written under `workdir`.
    """
    path = Path(spec).expanduser()
    if questions is not None:
        return load_questions(path, questions)
    if path.is_dir() and (path / "questions.jsonl").is_file():
        return load_questions(path)
    if path.is_file() and path.suffix == ".jsonl":
        return load_questions(path.parent, path)
    return load_vidore(spec, workdir, split=split)
