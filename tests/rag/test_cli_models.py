"""`pagerag models`: the registry as a user sees it, and `models pull` without a network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rag.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def settings_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGERAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache


def test_models_lists_five_retriever_and_three_answerer_families() -> None:
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    families = {
        kind: {r["family"] for r in rows if r["kind"] == kind} for kind in ("retriever", "answerer")
    }
    assert len(families["retriever"]) >= 5 and len(families["answerer"]) >= 3
    [active_retriever] = [r for r in rows if r["active"] and r["kind"] == "retriever"]
    assert active_retriever["model"] == "vidore/colqwen2-v1.0"
    assert not any(r["cached"] for r in rows)  # nothing downloaded here


def test_models_table_names_each_hub_id_whole_and_marks_the_active_ones() -> None:
    result = runner.invoke(app, ["models"], env={"COLUMNS": "60"})
    assert result.exit_code == 0, result.output
    assert "* vidore/colqwen2-v1.0" in result.output
    assert "* Qwen/Qwen2-VL-2B-Instruct" in result.output
    assert "Qwen/Qwen2.5-VL-3B-Instruct" in result.output and "(NC)" in result.output


def test_pull_of_an_unknown_name_is_bad_usage() -> None:
    result = runner.invoke(app, ["models", "pull", "no-such-model"])
    assert result.exit_code == 2
    assert "no model 'no-such-model' in the registry" in result.output


def test_pull_offline_says_why_and_what_to_change(monkeypatch: pytest.MonkeyPatch) -> None:
    result = runner.invoke(app, ["models", "pull", "colSmol-256M"])
    assert result.exit_code == 3
    assert "HF_HUB_OFFLINE" in result.output and "vidore/colSmol-256M" in result.output
