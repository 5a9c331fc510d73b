"""Bad settings (issue 11, item 14): one line per bad variable naming it, the value given and
what is allowed; the CLI prints just that and exits 3, `pagerag serve` too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rag.config import InvalidSettingsError, Settings
from rag.errors import EXIT_CONFIG, UserError

PAGERAG = Path(sys.executable).with_name("pagerag")  # the console script of this environment


def problem(**values: object) -> str:
    with pytest.raises(InvalidSettingsError) as caught:
        Settings(_env_file=None, **values)
    return str(caught.value)


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("PAGERAG_DEVICE", "tpu", "one of auto, cuda, mps, cpu"),
        ("PAGERAG_BATCH_SIZE", "0", "a whole number, at least 1"),
        ("PAGERAG_BATCH_SIZE", "abc", "a whole number, at least 1"),
        ("PAGERAG_RENDER_DPI", "1000", "a whole number from 36 to 600"),
        ("PAGERAG_TEMPERATURE", "hot", "a number from 0 to 2"),
        ("PAGERAG_REQUEST_TIMEOUT", "0", "a number, above 0"),
        ("PAGERAG_HYBRID_TEXT_WEIGHT", "11", "a number, above 0, at most 10"),
        ("PAGERAG_SEARCH_MODE", "fuzzy", "one of visual, text, hybrid"),
        ("PAGERAG_HNSW_EF", "wide", "a whole number, at least 1"),
        ("PAGERAG_QDRANT_PREFER_GRPC", "maybe", "true or false (also 1/0, yes/no, on/off)"),
    ],
)
def test_each_bad_variable_is_named_with_its_value_and_what_is_allowed(
    variable: str, value: str, allowed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    assert problem() == f"{variable}='{value}' is not allowed; use {allowed}"


def test_one_line_per_bad_variable_and_no_pydantic_report(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGERAG_DEVICE", "tpu")
    monkeypatch.setenv("PAGERAG_BATCH_SIZE", "abc")
    message = problem()
    assert message.splitlines() == [
        "PAGERAG_DEVICE='tpu' is not allowed; use one of auto, cuda, mps, cpu",
        "PAGERAG_BATCH_SIZE='abc' is not allowed; use a whole number, at least 1",
    ]
    assert "pydantic" not in message and "validation error" not in message


def test_validator_messages_pass_through_and_secrets_stay_hidden() -> None:
    # The validators' own messages already name the variables.
    assert problem(gen_min_pixels=10**7) == (
        "PAGERAG_GEN_MIN_PIXELS (10000000) is larger than PAGERAG_GEN_MAX_PIXELS (802816)"
    )
    assert problem(api_keys=",").startswith("PAGERAG_API_KEYS is set but holds no key")
    assert problem(qdrant_api_key=12345).startswith("PAGERAG_QDRANT_API_KEY (value hidden)")


def test_the_error_is_a_user_error_with_the_config_exit_status() -> None:
    with pytest.raises(UserError) as caught:
        Settings(_env_file=None, device="tpu")
    assert caught.value.exit_code == EXIT_CONFIG == 3
    assert isinstance(caught.value, ValueError)  # `except ValueError` still catches it


def test_a_dotenv_file_is_read_and_checked_the_same(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("PAGERAG_BATCH_SIZE=-2\n")
    with pytest.raises(InvalidSettingsError, match="PAGERAG_BATCH_SIZE='-2' is not allowed"):
        Settings(_env_file=env)


@pytest.mark.parametrize("command", [["info"], ["serve", "--port", "1"]])
def test_cli_prints_one_line_per_problem_and_exits_3(command: list[str], tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PAGERAG_DATA_DIR": str(tmp_path / "data"),
        "PAGERAG_DEVICE": "tpu",
        "PAGERAG_BATCH_SIZE": "0",
        "HF_HUB_OFFLINE": "1",
        "COLUMNS": "40",  # narrower than the message: it must not be wrapped
    }
    result = subprocess.run(
        [str(PAGERAG), *command], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == EXIT_CONFIG
    assert result.stderr.splitlines() == [
        "error: PAGERAG_DEVICE='tpu' is not allowed; use one of auto, cuda, mps, cpu",
        "PAGERAG_BATCH_SIZE='0' is not allowed; use a whole number, at least 1",
    ]
    assert result.stdout == ""
