"""The ColQwen2 retriever on tiny random checkpoints, loaded through the production code path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rag.config import Settings
from rag.models.device import resolve_device, resolve_device_dtype, resolve_dtype
from rag.models.loading import ModelLoadError
from rag.models.retriever import EmbeddingError, Retriever
from tests.tiny_models import to_legacy_layout

SIZES = [(320, 240), (64, 48), (200, 900), (500, 500), (1000, 300)]  # (width, height)
QUERIES = ["revenue", "What was the total revenue in 2015 in the table?", "profit by quarter"]


def _settings(tmp_path: Path, model: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path,
        "retriever_model": model,
        "device": "cpu",
        "dtype": "float32",
        "batch_size": 2,
        "max_visual_tokens": 32,
    }
    return Settings(**{**values, **overrides})


def _pages() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]


@pytest.fixture(scope="module")
def pages() -> list[Image.Image]:
    return _pages()


@pytest.fixture(scope="module")
def page_embeddings(tiny_retriever: Retriever, pages: list[Image.Image]) -> list:
    return tiny_retriever.embed_pages(pages)


def test_load_plain_checkpoint(tiny_retriever: Retriever, tiny_colqwen_dir: Path) -> None:
    assert tiny_retriever.model_id == str(tiny_colqwen_dir)
    assert tiny_retriever.revision is None
    assert tiny_retriever.dim == 128
    assert tiny_retriever.device == torch.device("cpu")
    assert tiny_retriever.dtype == torch.float32
    assert next(tiny_retriever.model.parameters()).dtype == torch.float32


def test_pages_are_unit_float32_multivectors_with_their_grid(
    tiny_retriever: Retriever, pages: list[Image.Image], page_embeddings: list
) -> None:
    assert len(page_embeddings) == len(pages)
    non_image = set()
    for page, emb in zip(pages, page_embeddings, strict=True):
        assert emb.vectors.dtype == np.float32
        assert emb.vectors.ndim == 2 and emb.vectors.shape[1] == 128
        assert np.isfinite(emb.vectors).all()
        np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-4)
        rows, cols = emb.grid
        # The processor's own arithmetic (smart_resize), independent of image_grid_thw.
        n_x, n_y = tiny_retriever.processor.get_n_patches(
            (page.width, page.height), spatial_merge_size=tiny_retriever.merge_size
        )
        assert (rows, cols) == (n_y, n_x)
        assert 1 <= rows * cols <= 32  # max_visual_tokens
        assert emb.image_offset > 0 and emb.image_offset + rows * cols < len(emb.vectors)
        non_image.add((emb.image_offset, len(emb.vectors) - rows * cols))
    # Same prompt around every image: same offset and the same text rows, so no padding is left.
    assert len(non_image) == 1


def test_page_order_and_padding_do_not_change_vectors(
    tiny_retriever: Retriever, pages: list[Image.Image], page_embeddings: list
) -> None:
    assert tiny_retriever.embed_pages([]) == []
    for page, batched in zip(pages, page_embeddings, strict=True):
        (alone,) = tiny_retriever.embed_pages([page])
        assert alone.grid == batched.grid and alone.image_offset == batched.image_offset
        np.testing.assert_allclose(alone.vectors, batched.vectors, atol=1e-4)
    reversed_embeddings = tiny_retriever.embed_pages(pages[::-1])
    for a, b in zip(reversed_embeddings[::-1], page_embeddings, strict=True):
        np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-4)


def test_query_has_no_padded_rows(tiny_retriever: Retriever) -> None:
    vectors = tiny_retriever.embed_query(QUERIES[1])
    n_tokens = tiny_retriever.processor.process_queries(texts=[QUERIES[1]])["input_ids"].shape[1]
    assert vectors.dtype == np.float32 and vectors.shape == (n_tokens, 128)
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_query_batch_equals_one_at_a_time(tiny_retriever: Retriever) -> None:
    # Left padding of the short queries is the trap: their padded rows must not come back.
    batched = tiny_retriever.embed_queries(QUERIES)
    assert len({len(v) for v in batched}) > 1
    for text, vectors in zip(QUERIES, batched, strict=True):
        np.testing.assert_allclose(tiny_retriever.embed_query(text), vectors, atol=1e-4)


def test_adapter_is_applied_and_merged(
    tmp_path: Path,
    tiny_colqwen_adapter_dir: Path,
    tiny_retriever: Retriever,
    pages: list[Image.Image],
    page_embeddings: list,
) -> None:
    from colpali_engine.models import ColQwen2

    adapted = Retriever.load(_settings(tmp_path, str(tiny_colqwen_adapter_dir)))
    assert adapted.model_id == str(tiny_colqwen_adapter_dir)
    assert not any("lora" in name for name, _ in adapted.model.named_parameters())

    (emb,) = adapted.embed_pages(pages[:1])
    assert emb.grid == page_embeddings[0].grid
    assert np.abs(emb.vectors - page_embeddings[0].vectors).max() > 1e-2  # the adapter matters

    # Reference: transformers' own adapter loading (unmerged LoRA layers), as colpali documents.
    reference = ColQwen2.from_pretrained(tiny_colqwen_adapter_dir, dtype=torch.float32).eval()
    batch = adapted.processor.process_images(pages[:1])
    with torch.inference_mode():
        expected = reference(**batch)[0][batch["attention_mask"][0].bool()].numpy()
    np.testing.assert_allclose(emb.vectors, expected, atol=1e-4)


def test_transformers4_key_layout_loads(
    tmp_path: Path, tiny_colqwen_dir: Path, tiny_retriever: Retriever, pages: list[Image.Image]
) -> None:
    # vidore/colqwen2-base predates transformers 5: its text tower is saved as `model.*`.
    legacy = shutil.copytree(tiny_colqwen_dir, tmp_path / "legacy")
    to_legacy_layout(legacy / "model.safetensors")
    loaded = Retriever.load(_settings(tmp_path, str(legacy)))
    np.testing.assert_allclose(
        loaded.embed_query("revenue"), tiny_retriever.embed_query("revenue"), atol=1e-6
    )


def test_hub_id_from_the_offline_cache_reports_its_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_colqwen_dir: Path
) -> None:
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--pagerag-tests--tiny-colqwen2"
    shutil.copytree(tiny_colqwen_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    retriever = Retriever.load(_settings(tmp_path, "pagerag-tests/tiny-colqwen2"))
    assert retriever.model_id == "pagerag-tests/tiny-colqwen2"
    assert retriever.revision == commit


def test_explicit_dtype_is_honoured(tmp_path: Path, tiny_colqwen_dir: Path) -> None:
    retriever = Retriever.load(_settings(tmp_path, str(tiny_colqwen_dir), dtype="bfloat16"))
    assert retriever.dtype == torch.bfloat16
    assert next(retriever.model.parameters()).dtype == torch.bfloat16
    vectors = retriever.embed_query("revenue")
    assert vectors.dtype == np.float32 and np.isfinite(vectors).all()


def test_non_finite_vectors_are_an_error(
    tiny_retriever: Retriever, monkeypatch: pytest.MonkeyPatch
) -> None:
    forward = tiny_retriever._forward
    monkeypatch.setattr(tiny_retriever, "_forward", lambda batch: forward(batch) * float("nan"))
    with pytest.raises(EmbeddingError, match="non-finite"):
        tiny_retriever.embed_query("revenue")
    with pytest.raises(EmbeddingError, match="PAGERAG_DTYPE"):
        tiny_retriever.embed_pages(_pages()[:1])


def _strip_projection(src: Path, dst: Path) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    kept = {k: v for k, v in weights.items() if not k.startswith("custom_text_proj")}
    save_file(kept, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_checkpoint_without_projection_is_refused(tmp_path: Path, tiny_colqwen_dir: Path) -> None:
    plain = _strip_projection(tiny_colqwen_dir, tmp_path / "qwen2vl")
    with pytest.raises(ModelLoadError, match="not a ColQwen2 checkpoint"):
        Retriever.load(_settings(tmp_path, str(plain)))


def _adapter_with_missing_base(tmp_path: Path, adapter_dir: Path) -> str:
    copy = shutil.copytree(adapter_dir, tmp_path / "adapter")
    config = json.loads((copy / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (copy / "adapter_config.json").write_text(json.dumps(config))
    return str(copy)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing-dir", "does not exist"),
        ("empty-dir", "neither config.json nor adapter_config.json"),
        ("hub-offline", "HF_HUB_OFFLINE"),
        ("missing-base", "gone"),
    ],
)
def test_unloadable_model_names_the_setting(
    case: str,
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tiny_colqwen_adapter_dir: Path,
) -> None:
    if case == "missing-dir":
        model = str(tmp_path / "no" / "such" / "colqwen")
    elif case == "empty-dir":
        model = str((tmp_path / "empty").resolve())
        (tmp_path / "empty").mkdir()
    elif case == "hub-offline":
        # An empty cache: huggingface_hub reads HF_HOME once, at import, hence the constant too.
        from huggingface_hub import constants

        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
        assert constants.HF_HUB_OFFLINE
        model = "vidore/colqwen2-v1.0"
    else:
        model = _adapter_with_missing_base(tmp_path, tiny_colqwen_adapter_dir)

    with pytest.raises(ModelLoadError) as error:
        Retriever.load(_settings(tmp_path, model))
    message = str(error.value)
    assert "PAGERAG_RETRIEVER_MODEL" in message
    assert model in message
    assert expected in message


def test_device_and_dtype_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    assert resolve_device("cpu") == cpu
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", cuda) == torch.bfloat16
    assert resolve_dtype("auto", mps) == torch.float32
    assert resolve_dtype("float16", cpu) == torch.float16
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    assert resolve_device_dtype(Settings(device="cpu", dtype="auto")) == (cpu, torch.float32)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == cpu
    with pytest.raises(ModelLoadError, match="PAGERAG_DEVICE"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == cuda
