"""Test setup: never touch the network, keep every run on the CPU."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OCR costs seconds a page on these CPUs and most tests' pages are blank or typed: it is on
# where it is the subject (tests/ingest/test_ocr.py sets PAGERAG_OCR_ENGINE itself).
os.environ.setdefault("PAGERAG_OCR_ENGINE", "off")

from pathlib import Path

import pytest

if TYPE_CHECKING:
    from rag.models.generator import Generator
    from rag.models.retriever import Retriever

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The shared real-PDF corpus (../shared/corpus beside the repository)."""
    if not (CORPUS / "MANIFEST.tsv").is_file():
        pytest.skip(f"the shared corpus is not at {CORPUS}")
    return CORPUS


# Tiny random ColQwen2 models (tests/tiny_models.py), built once per session: building and
# loading them, imports included, takes seconds on a CPU.


@pytest.fixture(scope="session")
def tiny_colqwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random ColQwen2 checkpoint with its processor, as `save_pretrained` writes it."""
    from tests.tiny_models import build_tiny_colqwen

    return build_tiny_colqwen(tmp_path_factory.mktemp("tiny-colqwen"))


@pytest.fixture(scope="session")
def tiny_colqwen_adapter_dir(
    tiny_colqwen_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A LoRA adapter (non-zero) over `tiny_colqwen_dir`, laid out like vidore/colqwen2-v1.0."""
    from tests.tiny_models import build_tiny_colqwen_adapter

    return build_tiny_colqwen_adapter(
        tiny_colqwen_dir, tmp_path_factory.mktemp("tiny-colqwen-lora")
    )


@pytest.fixture(scope="session")
def tiny_retriever(tiny_colqwen_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Retriever:
    """`Retriever.load` on `tiny_colqwen_dir`, CPU float32."""
    from rag.config import Settings
    from rag.models.retriever import Retriever

    settings = Settings(
        data_dir=tmp_path_factory.mktemp("tiny-retriever-data"),
        retriever_model=str(tiny_colqwen_dir),
        device="cpu",
        dtype="float32",
        batch_size=2,
        max_visual_tokens=32,
    )
    return Retriever.load(settings)


# Tiny random Qwen2-VL generator (tests/tiny_models.py), built and loaded once per session.


@pytest.fixture(scope="session")
def tiny_generator_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2VLForConditionalGeneration with its processor and chat template."""
    from tests.tiny_models import build_tiny_generator

    return build_tiny_generator(tmp_path_factory.mktemp("tiny-generator"))


@pytest.fixture(scope="session")
def tiny_generator(tiny_generator_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Generator:
    """`Generator.load` on `tiny_generator_dir`, CPU float32, small pages, 16 new tokens.

    Shared by the session: a test that changes its options works on a `copy.copy` of it.
    """
    from rag.config import Settings
    from rag.models.generator import Generator

    settings = Settings(
        _env_file=None,
        data_dir=tmp_path_factory.mktemp("tiny-generator-data"),
        generator_model=str(tiny_generator_dir),
        device="cpu",
        dtype="float32",
        gen_min_pixels=4 * 28 * 28,
        gen_max_pixels=16 * 28 * 28,
        visual_token_budget=64,
        max_new_tokens=16,
    )
    return Generator.load(settings)


@pytest.fixture(scope="session")
def make_serving_service(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_colqwen_dir: Path,
    tiny_generator_dir: Path,
    tiny_retriever: Retriever,
    tiny_generator: Any,
) -> Any:
    """`make_serving_service(name, **settings)`: a fresh service on the session's tiny models
    (tests/serving.py), with its own data directory."""
    from tests.serving import serving_service

    def make(name: str, **extra: Any) -> Any:
        data = tmp_path_factory.mktemp(f"{name}-data")
        return serving_service(
            data, tiny_colqwen_dir, tiny_generator_dir, tiny_retriever, tiny_generator, **extra
        )

    return make
