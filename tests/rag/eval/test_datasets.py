"""Dataset loaders on small fixtures made here: questions.jsonl, ViDoRe v1 and BEIR parquet."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage

from ingest.discover import file_sha256
from rag.eval.datasets import DatasetError, load_questions, load_vidore, open_dataset
from tests.pdfs import make_pdf


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def png(color: str, size: tuple[int, int] = (40, 56)) -> PILImage.Image:
    return PILImage.new("RGB", size, color)


def jpeg_bytes(color: str) -> bytes:
    out = io.BytesIO()
    png(color).save(out, format="JPEG")
    return out.getvalue()


# -- questions.jsonl -------------------------------------------------------------------------


def test_questions_file_gives_page_keys_by_content(tmp_path: Path) -> None:
    a = make_pdf(tmp_path / "docs" / "a.pdf", ["one", "two"])
    (tmp_path / "docs" / "sub").mkdir()
    b = (tmp_path / "docs" / "sub" / "b.pdf").write_bytes(a.read_bytes())  # same bytes
    assert b
    write_jsonl(
        tmp_path / "docs" / "questions.jsonl",
        [
            {"question": "What is on page two?", "source": "a.pdf", "page": 2, "answer": "two"},
            "",
            {"question": "Same document?", "source": "sub/b.pdf", "page": 1, "id": "dup"},
            {"question": "Any of these", "source": "a.pdf", "page": 1, "answer": ["x", "y"]},
        ],
    )
    ds = open_dataset(str(tmp_path / "docs"), tmp_path / "work")
    sha = file_sha256(a)[0]
    assert ds.kind == "questions" and ds.root == tmp_path / "docs"
    assert [q.qid for q in ds.queries] == ["q1", "dup", "q4"]  # ids: line numbers or "id"
    assert ds.qrels == {"q1": {f"{sha}:2": 1}, "dup": {f"{sha}:1": 1}, "q4": {f"{sha}:1": 1}}
    assert [q.answers for q in ds.queries] == [("two",), (), ("x", "y")]
    assert ds.labels[f"{sha}:2"] == "a.pdf p.2"
    # The .jsonl itself works too, with its documents beside it.
    again = open_dataset(str(tmp_path / "docs" / "questions.jsonl"), tmp_path / "work")
    assert again.qrels == ds.qrels


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question": "", "source": "a.pdf", "page": 1}', '"question"'),
        ('{"question": "q", "page": 1}', '"source"'),
        ('{"question": "q", "source": "a.pdf", "page": 0}', '"page"'),
        ('{"question": "q", "source": "a.pdf", "page": true}', '"page"'),
        ('{"question": "q", "source": "nope.pdf", "page": 1}', "nope.pdf is not a file"),
        ('{"question": "q", "source": "a.pdf", "page": 1, "answer": 5}', '"answer"'),
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_bad_question_lines_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    make_pdf(tmp_path / "a.pdf", ["one"])
    good = {"question": "fine", "source": "a.pdf", "page": 1}
    path = write_jsonl(tmp_path / "q.jsonl", [good, line])
    with pytest.raises(DatasetError, match="line 2") as info:
        load_questions(tmp_path, path)
    assert message in str(info.value)


def test_missing_questions_and_duplicate_ids(tmp_path: Path) -> None:
    make_pdf(tmp_path / "a.pdf", ["one"])
    with pytest.raises(DatasetError, match="no questions file"):
        load_questions(tmp_path)
    row = {"question": "q", "source": "a.pdf", "page": 1, "id": "x"}
    with pytest.raises(DatasetError, match="used twice"):
        load_questions(tmp_path, write_jsonl(tmp_path / "q.jsonl", [row, row]))
    with pytest.raises(DatasetError, match="no questions"):
        load_questions(tmp_path, write_jsonl(tmp_path / "empty.jsonl", [""]))


# -- ViDoRe v1: one row per question with its gold page image ---------------------------------

V1_FEATURES = Features(
    {
        "query": Value("string"),
        "image": Image(),
        "image_filename": Value("string"),
        "answer": Value("string"),
        "text_description": Value("string"),
    }
)


def v1_rows() -> Dataset:
    return Dataset.from_dict(
        {
            "query": ["What is alpha?", "Where is beta?", None, "What is alpha?"],
            "image": [png("red"), {"bytes": jpeg_bytes("blue")}, png("green"), png("red")],
            "image_filename": ["red.png", "blue.jpg", "green.png", "green.png"],
            "answer": ["alpha", "beta", None, "alpha"],
            "text_description": ["Alpha page", "", "Green page text", "Green page text"],
        },
        features=V1_FEATURES,
    )


def check_v1(ds, workdir: Path) -> None:
    files = sorted((workdir / "corpus").iterdir())
    assert [f.name for f in files] == ["000000.png", "000001.jpg", "000002.png"]  # 3 images
    assert files[1].read_bytes().startswith(b"\xff\xd8\xff")  # the JPEG stays a JPEG
    key = {f.name: f"{file_sha256(f)[0]}:1" for f in files}
    assert ds.kind == "vidore-v1" and ds.root == workdir
    assert [(q.qid, q.text, q.answers) for q in ds.queries] == [
        ("q1", "What is alpha?", ("alpha",)),
        ("q2", "Where is beta?", ("beta",)),
    ]
    # A repeated question takes the image of its last row, as the ViDoRe v1 leaderboard does.
    assert ds.qrels == {"q1": {key["000002.png"]: 1}, "q2": {key["000001.jpg"]: 1}}
    assert ds.page_texts == {key["000000.png"]: "Alpha page", key["000002.png"]: "Green page text"}
    assert ds.labels[key["000001.jpg"]] == "blue.jpg"


def test_vidore_v1_from_a_parquet_file(tmp_path: Path) -> None:
    v1_rows().to_parquet(str(tmp_path / "docvqa.parquet"))
    ds = load_vidore(str(tmp_path / "docvqa.parquet"), tmp_path / "work")
    check_v1(ds, tmp_path / "work")
    assert ds.name == "docvqa.parquet"


def test_vidore_v1_from_a_downloaded_folder(tmp_path: Path) -> None:
    # The layout of `huggingface-cli download --repo-type dataset vidore/... --local-dir`.
    (tmp_path / "dl" / "data").mkdir(parents=True)
    v1_rows().to_parquet(str(tmp_path / "dl" / "data" / "test-00000-of-00001.parquet"))
    other = Dataset.from_dict({"query": ["train only"], "image": [png("black")]})
    other.to_parquet(str(tmp_path / "dl" / "data" / "train-00000-of-00001.parquet"))
    check_v1(open_dataset(str(tmp_path / "dl"), tmp_path / "work"), tmp_path / "work")


# -- ViDoRe v2/v3: BEIR subsets corpus, queries, qrels ------------------------------------------


def write_beir(root: Path) -> None:
    for part in ("corpus", "queries", "qrels"):
        (root / part).mkdir(parents=True)
    Dataset.from_dict(
        {
            "corpus-id": [10, 11, 12],
            "image": [png("red"), png("blue"), png("green")],
            "markdown": ["# Red report", "", "Green table"],
        },
        features=Features(
            {"corpus-id": Value("int64"), "image": Image(), "markdown": Value("string")}
        ),
    ).to_parquet(str(root / "corpus" / "test-00000-of-00001.parquet"))
    Dataset.from_dict(
        {
            "query-id": [1, 2, 3],
            "query": ["red revenue?", "green or blue?", "unjudged question"],
            "answer": ["42", None, None],
        }
    ).to_parquet(str(root / "queries" / "test-00000-of-00001.parquet"))
    Dataset.from_dict(
        {
            "query-id": [1, 2, 2, 2, 3],
            "corpus-id": [10, 12, 11, 10, 10],
            "score": [1, 2, 1, 0, 0],  # graded; 0 = judged not relevant
        }
    ).to_parquet(str(root / "qrels" / "test-00000-of-00001.parquet"))


def test_vidore_beir_folder(tmp_path: Path) -> None:
    write_beir(tmp_path / "v3")
    ds = open_dataset(str(tmp_path / "v3"), tmp_path / "work")
    files = sorted((tmp_path / "work" / "corpus").iterdir())
    key = [f"{file_sha256(f)[0]}:1" for f in files]  # corpus-ids 10, 11, 12 in order
    assert ds.kind == "vidore-beir"
    assert [(q.qid, q.text, q.answers) for q in ds.queries] == [
        ("1", "red revenue?", ("42",)),
        ("2", "green or blue?", ()),
    ]  # query 3 has no relevant page: nothing to measure
    assert ds.qrels == {"1": {key[0]: 1}, "2": {key[2]: 2, key[1]: 1}}
    assert ds.page_texts == {key[0]: "# Red report", key[2]: "Green table"}
    assert ds.labels[key[1]] == "corpus-id 11"


def test_vidore_errors_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        open_dataset(str(tmp_path / "missing"), tmp_path / "work")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no parquet files"):
        open_dataset(str(tmp_path / "empty"), tmp_path / "work")
    Dataset.from_dict({"question": ["q"]}).to_parquet(str(tmp_path / "other.parquet"))
    with pytest.raises(DatasetError, match="is this a ViDoRe dataset"):
        load_vidore(str(tmp_path / "other.parquet"), tmp_path / "work")
    # No network here (HF_DATASETS_OFFLINE=1): a Hub id fails with the offline recipe.
    with pytest.raises(DatasetError, match="huggingface-cli download"):
        load_vidore("vidore/no-such-dataset-here", tmp_path / "work")
