"""`pagerag ingest --shard I/N`: several workers split one folder with no coordination."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from ingest.discover import Shard, discover, shard_of
from rag.cli import app

SOURCES = [f"reports/{year}/q{q}.pdf" for year in range(2000, 2025) for q in range(1, 5)]


def test_parse_and_validate() -> None:
    assert Shard.parse("1/4") == Shard(1, 4)
    assert Shard.parse(" 3 / 3 ") == Shard(3, 3)
    assert str(Shard(2, 5)) == "2/5"
    for bad in ("0/4", "5/4", "1/0", "4", "a/b", "-1/3", "1/2/3", ""):
        with pytest.raises(ValueError, match=r"I/N|1 <= I <= N"):
            Shard.parse(bad)


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_split_is_disjoint_and_covers_everything(count: int) -> None:
    owners = {s: [i for i in range(1, count + 1) if Shard(i, count).owns(s)] for s in SOURCES}
    assert all(len(o) == 1 for o in owners.values())  # each file: exactly one worker
    sizes = Counter(o[0] for o in owners.values())
    assert set(sizes) == set(range(1, count + 1))  # no idle worker for 100 files
    assert max(sizes.values()) <= 2 * len(SOURCES) / count  # roughly even


def test_split_is_deterministic_and_stable() -> None:
    # Pinned values: a change of the hash would move files between workers, and a folder
    # ingested with the old split would then be ingested twice, or partly not at all.
    assert [shard_of(s, 4) for s in ("a.pdf", "reports/2015/q1.pdf", "b/c/d.png")] == [3, 1, 3]
    assert shard_of("dir\\x.pdf", 5) == shard_of("dir/x.pdf", 5)  # Windows and POSIX agree


def test_discovered_sources_split_the_same_way_from_any_root(tmp_path: Path) -> None:
    for s in SOURCES[:20]:
        (tmp_path / s).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / s).write_bytes(b"%PDF-1.4")
    files, _ = discover([tmp_path])
    again, _ = discover([tmp_path / "."])  # another spelling of the same folder
    split = {f.source: shard_of(f.source, 3) for f in files}
    assert split == {f.source: shard_of(f.source, 3) for f in again}
    assert set(split) == set(SOURCES[:20])


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    for i in range(8):
        (folder / f"set{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64 + 8 * i, 96), (30 * i, 60, 90)).save(folder / f"set{i % 2}/p{i}.png")
    return folder


def test_cli_workers_ingest_disjoint_parts_that_cover_the_folder(
    images: Path, tmp_path: Path, tiny_colqwen_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAGERAG_RETRIEVER_MODEL", str(tiny_colqwen_dir))
    monkeypatch.setenv("PAGERAG_DEVICE", "cpu")
    monkeypatch.setenv("PAGERAG_MAX_VISUAL_TOKENS", "32")
    seen: list[set[str]] = []
    for i in (1, 2, 3):
        # Each worker its own data directory here, so its manifest shows what it ingested.
        monkeypatch.setenv("PAGERAG_DATA_DIR", str(tmp_path / f"worker{i}"))
        result = CliRunner().invoke(app, ["ingest", str(images), "--shard", f"{i}/3", "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["failed"] == []
        listed = CliRunner().invoke(app, ["docs", "list", "--json"])
        seen.append({d["source"] for d in json.loads(listed.stdout)})
    expected = {p.relative_to(images).as_posix() for p in images.rglob("*.png")}
    assert set().union(*seen) == expected
    assert sum(len(s) for s in seen) == len(expected)  # disjoint
    for i, sources in enumerate(seen, 1):
        assert all(shard_of(s, 3) == i for s in sources)


def test_cli_rejects_a_bad_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGERAG_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(app, ["ingest", str(tmp_path), "--shard", "3/2"])
    assert result.exit_code == 2
    assert "--shard" in result.stderr and "1 <= I <= N" in result.stderr
