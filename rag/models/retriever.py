"""The retriever: page images and questions to multivectors (unit rows, padding removed).

Every family in `rag.models.registry` loads through colpali-engine's classes; the checkpoint's
config.json says which. What differs between families is how a page's image tokens lie in the
sequence. Downstream (similarity maps, the clustered prefetch) reads them as one row-major
(rows, cols) grid starting at `image_offset`, so `embed_pages` returns them that way:

- "merged" families (ColQwen2/2.5/3/3.5) already emit one contiguous row-major run, one token
  per merged patch: (h / merge, w / merge) of `image_grid_thw`.
- "tiled" families (ColIdefics3 = ColSmol, ColModernVBert) split the resized page into tiles
  of `image_seq_len` tokens (s x s each), emitted tile by tile, then a global thumbnail. The
  tiles' tokens are put in row-major order over the whole page, (tile rows * s, tile cols * s),
  right after the prompt's prefix; the thumbnail and tile markers follow. MaxSim ignores the
  order of a page's rows, so scores do not change.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rag import patchmap
from rag.config import Settings
from rag.models import registry
from rag.models.device import resolve_device_dtype
from rag.models.loading import (
    ModelLoadError,
    ModelSource,
    ModelSpec,
    load_checkpoint,
    resolve_model_source,
)
from rag.models.registry import Family
from rag.types import PageEmbedding

if TYPE_CHECKING:
    from PIL import Image

# `kind` is the retriever's role key too: downloads are tracked under it (rag.service, ui).
SPEC = ModelSpec(setting="PAGERAG_RETRIEVER_MODEL", kind="ColQwen2")


class EmbeddingError(RuntimeError):
    """The model produced unusable vectors (non-finite values, inconsistent image tokens)."""


class Retriever:
    """Wraps a colpali-engine model and its processor; build it with `Retriever.load`."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        model_id: str,
        revision: str | None,
        device: torch.device,
        dtype: torch.dtype,
        batch_size: int = 4,
        family: Family | None = None,
    ) -> None:
        self.model = model
        self.processor = processor
        self.model_id = model_id
        self.revision = revision
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.family = family or registry.family_of_model(model, "retriever")
        self.dim = int(model.dim)  # 128 for most families, 320 for ColQwen3
        self.image_token_id = int(processor.image_token_id)
        if self.family.layout == "merged":
            self.merge_size = int(processor.image_processor.merge_size)
            self.tile_side = 0
        else:  # tiles of s x s tokens; the vision tower folds `merge` patches per side into one
            self.merge_size = self.family.merge
            self.tile_side = math.isqrt(int(processor.image_seq_len))

    @classmethod
    def load(cls, settings: Settings) -> Retriever:
        """Load `settings.retriever_model`: a full checkpoint or a PEFT adapter over its base."""
        device, dtype = resolve_device_dtype(settings)
        source = resolve_model_source(settings.retriever_model, settings.retriever_revision, SPEC)
        model, processor_source, family = _load_model(source, device, dtype)
        processor = _load_processor(
            processor_source, family, source.model_id, settings.max_visual_tokens
        )
        return cls(
            model,
            processor,
            model_id=source.model_id,
            revision=source.revision,
            device=device,
            dtype=dtype,
            batch_size=settings.batch_size,
            family=family,
        )

    def embed_pages(self, images: Sequence[Image.Image]) -> list[PageEmbedding]:
        """One multivector per page image, in the input order."""
        out: list[PageEmbedding | None] = [None] * len(images)
        # Batching pages of similar size cuts padding (pixels and tokens).
        for idx in _batches([im.width * im.height for im in images], self.batch_size):
            batch = self.processor.process_images([images[i] for i in idx]).to(self.device)
            embeddings = self._forward(batch)  # (b, seq, dim) float32
            for row, i in enumerate(idx):
                what = f"page {i}"
                keep = batch["attention_mask"][row].bool().cpu()  # (seq,)
                ids = batch["input_ids"][row].cpu()[keep]  # (n_tokens,)
                image_pos = np.flatnonzero((ids == self.image_token_id).numpy())
                if self.family.layout == "merged":
                    grid, order = self._merged(image_pos, batch["image_grid_thw"][row], what)
                else:
                    grid, order = self._tiled(image_pos, images[i], what)
                out[i] = self._page(embeddings[row][keep].numpy(), grid, order, what)
        return [e for e in out if e is not None]

    def embed_query(self, text: str) -> np.ndarray:
        """A question as a (n_tokens, dim) float32 multivector."""
        return self.embed_queries([text])[0]

    def embed_queries(self, texts: Sequence[str]) -> list[np.ndarray]:
        out: list[np.ndarray | None] = [None] * len(texts)
        for idx in _batches([len(t) for t in texts], self.batch_size):
            batch = self.processor.process_queries(texts=[texts[i] for i in idx]).to(self.device)
            embeddings = self._forward(batch)  # (b, seq, dim) float32
            for row, i in enumerate(idx):
                # Left padding: padded rows are 0 * (p / |p|), NaN when p is 0; drop them.
                keep = batch["attention_mask"][row].bool()  # (seq,)
                out[i] = self._finite(embeddings[row][keep].numpy(), f"query {i}")
        return [e for e in out if e is not None]

    def _forward(self, batch: Any) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(**batch).float().cpu()  # (b, seq, dim)

    def _merged(
        self,
        image_pos: np.ndarray,  # (n_image,) positions of the image tokens among the kept rows
        grid_thw: torch.Tensor,  # (3,) patches before merging: time, height, width
        what: str,
    ) -> tuple[tuple[int, int], np.ndarray]:
        t, h, w = (int(x) for x in grid_thw)
        rows, cols = h // self.merge_size, w // self.merge_size
        n = len(image_pos)
        contiguous = n > 0 and int(image_pos[-1]) - int(image_pos[0]) + 1 == n
        if t != 1 or n != rows * cols or not contiguous:
            raise EmbeddingError(
                f"{what}: {n} image tokens do not form the {rows}x{cols} patch grid "
                f"(image_grid_thw={t, h, w}); the processor and model of {self.model_id} disagree."
            )
        return (rows, cols), image_pos

    def _tiled(
        self, image_pos: np.ndarray, image: Image.Image, what: str
    ) -> tuple[tuple[int, int], np.ndarray]:
        s = self.tile_side
        # The processor's own arithmetic; exact because the longest edge is a whole number of
        # tiles (_load_processor sets it so).
        _, tile_rows, tile_cols = self.processor.image_processor.get_number_of_image_patches(
            image.height, image.width
        )
        tiles = tile_rows * tile_cols
        expected = (tiles + 1) * s * s if tiles else s * s  # + the global thumbnail
        if len(image_pos) != expected:
            raise EmbeddingError(
                f"{what}: {len(image_pos)} image tokens, but {tile_rows}x{tile_cols} tiles of "
                f"{s * s} tokens (and a thumbnail) make {expected}; the processor and model of "
                f"{self.model_id} disagree."
            )
        if not tiles:  # a page no larger than one tile: the thumbnail is the whole page
            return (s, s), image_pos
        local = image_pos[: tiles * s * s].reshape(tile_rows, tile_cols, s, s)
        order = local.transpose(0, 2, 1, 3).reshape(-1)  # tile-major -> row-major over the page
        return (tile_rows * s, tile_cols * s), order

    def _page(
        self,
        vectors: np.ndarray,  # (n_tokens, dim), padding removed
        grid: tuple[int, int],
        order: np.ndarray,  # (rows * cols,) rows of `vectors` that form the grid, row-major
        what: str,
    ) -> PageEmbedding:
        offset = int(order.min())  # the prompt's prefix stays in front
        rest = np.setdiff1d(np.arange(offset, len(vectors)), order, assume_unique=True)
        permutation = np.concatenate([np.arange(offset), order, rest])  # identity when merged
        return PageEmbedding(
            vectors=self._finite(vectors[permutation], what), grid=grid, image_offset=offset
        )

    def _finite(self, vectors: np.ndarray, what: str) -> np.ndarray:
        if not np.isfinite(vectors).all():
            raise EmbeddingError(
                f"{what}: {self.model_id} produced non-finite values in {self.dtype} on "
                f"{self.device}; set PAGERAG_DTYPE=float32 (or another PAGERAG_DEVICE)."
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def pool_page(emb: PageEmbedding, factor: int) -> PageEmbedding:
    """The page's image-token rows merged into about 1/factor as many by colpali-engine's
    hierarchical pooler (Ward clustering; each row the unit mean of one cluster's patches).

    Only the image tokens are pooled: the prompt's ~15 prefix and suffix rows are the same
    words on every page, a few percent of the bytes, and pooling them with patches would put
    an instruction token's vector into a patch cluster (and break the contiguous run of image
    rows that `image_offset` and the patch map describe). The grid stays the patch grid; the
    patch map (rag/patchmap.py) says which pooled row stands for each patch. Pooled rows are
    ordered by their first patch, so consecutive rows still read the page top to bottom.
    """
    rows, cols = emb.grid
    n, start = rows * cols, emb.image_offset
    if factor <= 1 or n < 2 or emb.patch_map or start + n > len(emb.vectors):
        return emb  # off, already pooled, or no usable grid (nothing to map back)
    from colpali_engine.compression.token_pooling import HierarchicalTokenPooler

    image = torch.from_numpy(np.ascontiguousarray(emb.vectors[start : start + n]))
    out = HierarchicalTokenPooler().pool_embeddings([image], pool_factor=factor, return_dict=True)
    # Its pooled rows are the non-empty clusters in id order.
    members = [idx for (idx,) in out.cluster_id_to_indices[0].values() if idx.numel()]
    pooled = out.pooled_embeddings[0].numpy()
    order = sorted(range(len(members)), key=lambda c: int(members[c].min()))
    patch_map = np.empty(n, dtype=np.int64)
    for row, cluster in enumerate(order):
        patch_map[members[cluster].numpy()] = row
    vectors = np.concatenate([emb.vectors[:start], pooled[order], emb.vectors[start + n :]], axis=0)
    return PageEmbedding(
        vectors=np.ascontiguousarray(vectors, dtype=np.float32),
        grid=emb.grid,
        image_offset=start,
        patch_map=patchmap.encode(patch_map),
    )


def _batches(sizes: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped into batches of similar size (ascending), each a list of input positions."""
    order = sorted(range(len(sizes)), key=sizes.__getitem__)
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _spec(family: Family) -> ModelSpec:
    """Errors once the family is known name it ("Cannot load the ColIdefics3 model ...")."""
    return ModelSpec(setting=SPEC.setting, kind=family.name)


def _load_model(
    source: ModelSource, device: torch.device, dtype: torch.dtype
) -> tuple[Any, ModelSource, Family]:
    """The model (adapters merged into their base), where to read the processor from, and
    the family, which the checkpoint's config.json (an adapter's base's) names."""
    if not source.is_adapter:
        family = registry.detect_family(source.model_id, source.path, "retriever")
        return _from_pretrained(source, family, device, dtype), source, family

    # How vidore publishes most retrievers (colqwen2-v1.0, colSmol-256M ...): a LoRA adapter
    # (and the processor) over a base. Merging it once makes inference as fast as a plain one.
    from peft import PeftModel

    adapter = source.adapter_config()
    base_id = adapter.get("base_model_name_or_path")
    if not base_id:
        raise SPEC.error(
            source.model_id, "its adapter_config.json does not name a base_model_name_or_path"
        )
    try:
        base = resolve_model_source(base_id, adapter.get("revision"), SPEC)
    except ModelLoadError as exc:
        reason = f"its base model '{base_id}' (from adapter_config.json) is missing: {exc.reason}"
        raise SPEC.error(source.model_id, reason) from exc
    family = registry.detect_family(source.model_id, base.path, "retriever")
    model = _from_pretrained(base, family, device, dtype)
    try:
        with warnings.catch_warnings():  # peft calls an API transformers 5 deprecated
            warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
            model = PeftModel.from_pretrained(model, str(source.path)).merge_and_unload()
    except (OSError, ValueError, RuntimeError) as exc:
        raise _spec(family).error(
            source.model_id, f"its PEFT adapter does not apply: {exc}"
        ) from exc
    # vidore ships the processor with the adapter; fall back to the base's if it is not there.
    processor_source = source if (source.path / "tokenizer_config.json").is_file() else base
    return model.eval(), processor_source, family


def _from_pretrained(
    source: ModelSource, family: Family, device: torch.device, dtype: torch.dtype
) -> Any:
    # The bare backbone (e.g. Qwen2-VL) would load too, with a random projection: refused.
    return load_checkpoint(
        family.load_class(),
        source,
        device,
        dtype,
        _spec(family),
        required=family.weights,
        what=family.name,
    )


def _load_processor(
    source: ModelSource, family: Family, model_id: str, max_visual_tokens: int
) -> Any:
    try:
        processor = family.load_class("processor").from_pretrained(str(source.path))
    except (OSError, ValueError, TypeError) as exc:
        raise _spec(family).error(model_id, f"its processor does not load: {exc}") from exc
    image_processor = processor.image_processor
    if family.layout == "merged":
        # One token per merged patch: (patch * merge)^2 pixels (28x28 for Qwen2, 32x32 for
        # Qwen3). Set as `size` only: colpali-engine also sets `max_pixels`, which
        # transformers 5 forwards on every call with a FutureWarning.
        tile = int(image_processor.patch_size) * int(image_processor.merge_size)
        image_processor.size["longest_edge"] = max_visual_tokens * tile * tile
        if getattr(image_processor, "max_pixels", None) is not None:
            image_processor.max_pixels = None
    else:
        # The page's longest edge as k whole tiles, k as large as the cap allows: a page then
        # takes at most k x k tiles of s^2 tokens plus the thumbnail (and at least one tile).
        per_tile = int(processor.image_seq_len)
        k = 1
        while ((k + 1) ** 2 + 1) * per_tile <= max_visual_tokens:
            k += 1
        image_processor.size["longest_edge"] = k * int(
            image_processor.max_image_size["longest_edge"]
        )
    return processor


__all__ = ["EmbeddingError", "ModelLoadError", "Retriever", "pool_page"]
