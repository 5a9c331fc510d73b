"""Every model family in the registry, on a tiny random checkpoint built from that family's own
config (tests/tiny_models.py), saved, and loaded through `Retriever.load` / `Generator.load`.

Random weights say nothing about quality; these tests check what depends on the family: the
classes and processor loaded, the row width, the patch grid and offset that similarity maps
and the clustered prefetch read, the answerers' visual-token arithmetic, and the errors.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rag.config import Settings
from rag.heatmap import overlay, relevance, similarity_maps
from rag.index.base import IndexMismatchError, check_meta, check_retriever
from rag.index.edge import EdgeIndex
from rag.index.pooling import image_grid, pool_clusters
from rag.models import registry
from rag.models.generator import Generator
from rag.models.loading import ModelLoadError
from rag.models.retriever import Retriever
from tests.tiny_models import build_tiny_adapter, build_tiny_answerer, build_tiny_retriever

RETRIEVERS = [f.name for f in registry.families("retriever") if f.tested]
ANSWERERS = [f.name for f in registry.families("answerer") if f.tested]
SIZES = [(320, 240), (200, 900)]  # (width, height): a landscape page, a tall strip
QUERY = "What was the total revenue in 2015?"

TinyDirs = Callable[[str], Path]


@dataclass(frozen=True)
class Page:
    source: str
    page: int
    image: Image.Image


def _settings(data: Path, **values: object) -> Settings:
    base: dict[str, object] = {
        "data_dir": data,
        "device": "cpu",
        "dtype": "float32",
        "batch_size": 2,
        "max_visual_tokens": 32,
    }
    return Settings(_env_file=None, **{**base, **values})


@pytest.fixture(scope="module")
def tiny_dirs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TinyDirs:
    """Family name -> its tiny checkpoint, built once per module (the Qwen2-VL pair is the
    session's, from conftest.py)."""
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            if name == "ColQwen2":
                built[name] = request.getfixturevalue("tiny_colqwen_dir")
            elif name == "Qwen2-VL":
                built[name] = request.getfixturevalue("tiny_generator_dir")
            else:
                out = tmp_path_factory.mktemp("tiny-" + name.replace(".", "_"))
                kind = registry.family(name).kind
                build = build_tiny_retriever if kind == "retriever" else build_tiny_answerer
                built[name] = build(name, out)
        return built[name]

    return get


@pytest.fixture(scope="module")
def pages() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]


@pytest.fixture(scope="module", params=RETRIEVERS)
def retriever(
    request: pytest.FixtureRequest, tiny_dirs: TinyDirs, tmp_path_factory: pytest.TempPathFactory
) -> Retriever:
    path = tiny_dirs(request.param)
    loaded = Retriever.load(_settings(tmp_path_factory.mktemp("data"), retriever_model=str(path)))
    assert loaded.family.name == request.param  # detected from config.json alone
    return loaded


def _raw(retriever: Retriever, image: Image.Image) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """colpali-engine's own output for one page: rows (padding removed), which rows are image
    tokens, and the tokens themselves."""
    batch = retriever.processor.process_images([image])
    with torch.inference_mode():
        rows = retriever.model(**batch)[0].float()  # (seq, dim)
    keep = batch["attention_mask"][0].bool()
    ids = batch["input_ids"][0][keep]
    tokens = retriever.processor.tokenizer.convert_ids_to_tokens(ids.tolist())
    return rows[keep].numpy(), (ids == retriever.image_token_id).numpy(), tokens


def test_pages_and_queries_embed_with_the_family_grid(
    retriever: Retriever, pages: list[Image.Image]
) -> None:
    expected_dim = 320 if retriever.family.name == "ColQwen3" else 128
    assert retriever.dim == expected_dim
    query = retriever.embed_query(QUERY)
    assert query.dtype == np.float32 and query.ndim == 2 and query.shape[1] == expected_dim
    np.testing.assert_allclose(np.linalg.norm(query, axis=1), 1.0, atol=1e-4)

    embeddings = retriever.embed_pages(pages)
    for image, emb in zip(pages, embeddings, strict=True):
        raw, is_image, tokens = _raw(retriever, image)
        assert emb.vectors.shape == raw.shape and emb.vectors.dtype == np.float32
        assert np.isfinite(emb.vectors).all()
        np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-4)
        rows, cols = emb.grid
        assert emb.image_offset == int(np.argmax(is_image)) > 0
        assert emb.image_offset + rows * cols < len(emb.vectors)
        if retriever.family.layout == "merged":
            assert rows * cols == int(is_image.sum())
        else:  # the tiles the processor wrote into the prompt, and the thumbnail
            marks = [
                tuple(map(int, m)) for m in re.findall(r"<row_(\d)_col_(\d)>", "".join(tokens))
            ]
            tile_rows, tile_cols = (max(m[0] for m in marks), max(m[1] for m in marks))
            s = retriever.tile_side
            assert (rows, cols) == (tile_rows * s, tile_cols * s)
            assert int(is_image.sum()) == (tile_rows * tile_cols + 1) * s * s
        assert (rows > cols) == (image.height > image.width)  # not transposed
        # Reordering rows changes no score: MaxSim is colpali-engine's on its own output.
        expected = retriever.processor.score_multi_vector(
            [torch.from_numpy(query)], [torch.from_numpy(raw)], device="cpu"
        )
        assert float((query @ emb.vectors.T).max(1).sum()) == pytest.approx(
            float(expected[0, 0]), abs=1e-4
        )
        # The clustered prefetch reads the same grid.
        grid = image_grid(emb)
        assert grid is not None and grid.shape == (rows, cols, expected_dim)
        assert pool_clusters(emb).shape == (-(-rows // 2), expected_dim)


def test_a_similarity_map_matches_colpali_engine(
    retriever: Retriever, pages: list[Image.Image]
) -> None:
    image = pages[1]
    query = retriever.embed_query(QUERY)
    (emb,) = retriever.embed_pages([image])
    rows, cols = emb.grid
    maps = similarity_maps(query, emb.vectors, emb.grid, emb.image_offset)
    assert maps.shape == (len(query), rows, cols)

    # colpali-engine's maps from its raw output: the interpretability utility for the merged
    # families; the Idefics3 processors' own rearrangement (global thumbnail left out) else.
    raw, is_image, _ = _raw(retriever, image)
    mask = torch.from_numpy(is_image)[None]
    if retriever.family.layout == "merged":
        from colpali_engine.interpretability.similarity_map_utils import (
            get_similarity_maps_from_embeddings as reference,
        )
    else:
        thumbnail = np.flatnonzero(is_image)[-(retriever.tile_side**2) :]
        mask[0, thumbnail] = False
        reference = retriever.processor.get_similarity_maps_from_embeddings
    [expected] = reference(
        image_embeddings=torch.from_numpy(raw)[None],
        query_embeddings=torch.from_numpy(query)[None],
        n_patches=(cols, rows),
        image_mask=mask,
    )  # (q, cols, rows)
    np.testing.assert_allclose(maps, expected.permute(0, 2, 1).numpy(), atol=1e-5)

    rel = relevance(maps)
    assert rel.shape == (rows, cols) and rel.min() >= 0.0 and rel.max() <= 1.0
    assert overlay(image, rel).size == image.size


@pytest.fixture(scope="module", params=ANSWERERS)
def answerer(
    request: pytest.FixtureRequest, tiny_dirs: TinyDirs, tmp_path_factory: pytest.TempPathFactory
) -> Generator:
    settings = _settings(
        tmp_path_factory.mktemp("data"),
        generator_model=str(tiny_dirs(request.param)),
        gen_min_pixels=4 * 28 * 28,
        gen_max_pixels=64 * 28 * 28,
        visual_token_budget=64,  # three pages share it: ~21 tokens each, not 64
        max_new_tokens=4,
    )
    loaded = Generator.load(settings)
    assert loaded.family.name == request.param
    return loaded


def test_an_answerer_counts_its_own_visual_tokens_and_streams(answerer: Generator) -> None:
    family = answerer.family
    assert answerer.pixels_per_token == (family.patch_size * family.merge) ** 2  # 28^2 or 32^2
    sizes = [(612, 792), (2000, 300), (300, 200)]
    batch = [Page("doc.pdf", i, Image.new("RGB", s, "white")) for i, s in enumerate(sizes, 1)]
    inputs = answerer.prepare("What is the total?", batch)
    image_tokens = int((inputs["input_ids"] == answerer.image_token_id).sum())
    min_px, max_px = answerer.pixel_limits(sizes)
    assert image_tokens == sum(answerer._image_tokens(w, h, min_px, max_px) for w, h in sizes)
    assert image_tokens <= answerer.visual_token_budget
    grid = inputs["image_grid_thw"]  # (pages, 3) in patches
    assert int(grid.prod(dim=1).sum()) // answerer.merge_size**2 == image_tokens

    fixed = copy.copy(answerer)
    fixed.min_new_tokens = fixed.max_new_tokens = 4
    stream = fixed.stream("What is the total?", batch[:1])
    chunks = list(stream)
    assert stream.result is not None
    assert "".join(chunks) == stream.result.text
    assert stream.result.completion_tokens == 4
    assert stream.result.image_tokens > 0


def test_an_adapter_takes_its_family_from_its_base(
    tiny_dirs: TinyDirs, tmp_path: Path, pages: list[Image.Image]
) -> None:
    base = tiny_dirs("ColIdefics3")
    adapter = build_tiny_adapter(base, tmp_path / "colsmol-lora", "ColIdefics3")
    assert not (adapter / "config.json").exists()
    adapted = Retriever.load(_settings(tmp_path, retriever_model=str(adapter)))
    assert adapted.family.name == "ColIdefics3"
    assert not any("lora" in name for name, _ in adapted.model.named_parameters())
    plain = Retriever.load(_settings(tmp_path, retriever_model=str(base)))
    (a,), (b,) = adapted.embed_pages(pages[:1]), plain.embed_pages(pages[:1])
    assert a.grid == b.grid and np.abs(a.vectors - b.vectors).max() > 1e-2  # it was applied


def test_an_unsupported_family_names_the_setting_and_the_families(tmp_path: Path) -> None:
    model = tmp_path / "llava"
    model.mkdir()
    config = {"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"]}
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError) as error:
        Retriever.load(_settings(tmp_path, retriever_model=str(model)))
    message = str(error.value)
    assert "PAGERAG_RETRIEVER_MODEL" in message and "'llava'" in message
    assert all(name in message for name in RETRIEVERS) and "ColSmol" in message
    with pytest.raises(ModelLoadError) as error:
        Generator.load(_settings(tmp_path, generator_model=str(model)))
    assert "PAGERAG_GENERATOR_MODEL" in str(error.value)
    assert all(name in str(error.value) for name in ANSWERERS)


def test_a_checkpoint_of_the_other_kind_says_where_it_goes(
    tiny_dirs: TinyDirs, tmp_path: Path
) -> None:
    with pytest.raises(ModelLoadError) as error:
        Retriever.load(_settings(tmp_path, retriever_model=str(tiny_dirs("Qwen2-VL"))))
    assert "not a ColQwen2 checkpoint" in str(error.value)
    assert "PAGERAG_GENERATOR_MODEL is the setting that takes it" in str(error.value)
    with pytest.raises(ModelLoadError, match="PAGERAG_RETRIEVER_MODEL is the setting"):
        Generator.load(_settings(tmp_path, generator_model=str(tiny_dirs("ColIdefics3"))))


def test_an_answerer_processor_with_other_patches_is_refused(
    tiny_dirs: TinyDirs, tmp_path: Path
) -> None:
    broken = shutil.copytree(tiny_dirs("Qwen3-VL"), tmp_path / "qwen3-vl")
    config_file = broken / "processor_config.json"  # transformers 5 keeps the parts here
    config = json.loads(config_file.read_text())
    config["image_processor"]["patch_size"] = 14  # Qwen2-VL's patches, Qwen3-VL's vision tower
    config_file.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="16-pixel patches") as error:
        Generator.load(_settings(tmp_path, generator_model=str(broken)))
    assert "PAGERAG_GENERATOR_MODEL" in str(error.value)


def test_the_index_refuses_another_family_or_width(tmp_path: Path) -> None:
    with EdgeIndex(tmp_path / "index") as index:
        check_meta(index, {"retriever_model": "/models/retriever", "dim": 128})
        check_retriever(index, "ColQwen2", 128)
        assert (index.read_meta() or {})["retriever_family"] == "ColQwen2"
        check_retriever(index, "ColQwen2", 128)  # the same family again: fine
        # The same path, now holding another family's checkpoint.
        with pytest.raises(IndexMismatchError, match="ColQwen2 retriever") as error:
            check_retriever(index, "ColIdefics3", 128)
        assert "re-index" in str(error.value) and "pagerag reset" in str(error.value)
        with pytest.raises(IndexMismatchError, match="320-d vectors"):
            check_retriever(index, "ColQwen3", 320)
        check_meta(index, {"retriever_model": "/models/retriever", "dim": 128})  # still opens


def test_the_service_records_and_checks_the_family(tiny_dirs: TinyDirs, tmp_path: Path) -> None:
    from rag.service import PageRAG

    model = shutil.copytree(tiny_dirs("ColIdefics3"), tmp_path / "retriever")
    settings = _settings(tmp_path / "data", retriever_model=str(model))
    service = PageRAG(settings)
    try:
        assert service.retriever.family.name == "ColIdefics3"
        assert (service.index.read_meta() or {})["retriever_family"] == "ColIdefics3"
    finally:
        service.close()
    shutil.rmtree(model)
    shutil.copytree(tiny_dirs("ColModernVBert"), model)  # same setting, other contents
    service = PageRAG(settings)
    try:
        with pytest.raises(IndexMismatchError, match="ColIdefics3 retriever"):
            _ = service.retriever
    finally:
        service.close()


# -- the registry as data -------------------------------------------------------------------


def test_the_registry_is_consistent() -> None:
    defaults = Settings(_env_file=None)
    by_kind = {
        kind: [m for m in registry.MODELS if m.kind == kind and m.default]
        for kind in ("retriever", "answerer")
    }
    assert [m.model for m in by_kind["retriever"]] == [defaults.retriever_model]
    assert [m.model for m in by_kind["answerer"]] == [defaults.generator_model]
    for m in registry.MODELS:
        family = registry.family(m.family)
        assert m.patch_size == family.patch_size, m.model
        assert (m.dim is not None) == (family.kind == "retriever"), m.model
        assert registry.describe(m.model.upper()) == m
    assert registry.family("colsmol").name == "ColIdefics3"
    assert {f.name for f in registry.families()} >= {*RETRIEVERS, *ANSWERERS}


def _fake_cache(root: Path, repo: str, size: int) -> None:
    """One cached snapshot laid out as huggingface_hub writes it (a sparse blob of `size`)."""
    folder = root / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "blobs").mkdir(parents=True)
    with (folder / "blobs" / "abc").open("wb") as blob:
        blob.truncate(size)
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "snapshots" / commit / "model.safetensors").symlink_to("../../blobs/abc")
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)


def test_model_rows_for_the_models_table(tiny_dirs: TinyDirs, tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    _fake_cache(cache, "vidore/colSmol-256M", 40_000_000)
    _fake_cache(cache, "vidore/colSmol-256M-base", 460_000_000)
    _fake_cache(cache, "vidore/colSmol-500M-base", 920_000_000)  # its adapter is missing
    settings = _settings(tmp_path, retriever_model="vidore/colSmol-256M")
    rows = {r["model"]: r for r in registry.model_rows(settings, cache_dir=cache)}
    json.dumps(list(rows.values()))  # plain data, ready for --json
    assert len(rows) == len(registry.MODELS)
    small = rows["vidore/colSmol-256M"]
    assert small["active"] and small["cached"] and small["cached_gb"] == 0.5
    assert (small["kind"], small["family"], small["license"]) == ("retriever", "ColIdefics3", "MIT")
    partial = rows["vidore/colSmol-500M"]
    assert not partial["active"] and not partial["cached"] and partial["cached_gb"] == 0.92
    default = rows["vidore/colqwen2-v1.0"]
    assert not default["active"] and not default["cached"] and default["cached_gb"] is None
    assert rows["Qwen/Qwen2-VL-2B-Instruct"]["active"]  # the default answerer
    assert {r["kind"] for r in rows.values()} == {"retriever", "answerer"}

    # No cache at all, a local retriever, and a remote answerer (nothing loads here).
    local = tiny_dirs("ColIdefics3")
    remote = _settings(tmp_path, retriever_model=str(local), answer_url="http://gpu:8000/v1")
    rows_now = registry.model_rows(remote, cache_dir=tmp_path / "no-cache")
    assert not any(r["cached"] for r in rows_now if r["model"] != str(local))
    assert not any(r["active"] for r in rows_now if r["kind"] == "answerer")
    [mine] = [r for r in rows_now if r["model"] == str(local)]
    assert mine["active"] and mine["cached"] and mine["family"] == "ColIdefics3"
