"""ColQwen2 retriever: page images and questions to multivectors (unit rows, padding removed)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rag.config import Settings
from rag.models.device import resolve_device_dtype
from rag.models.loading import (
    ModelLoadError,
    ModelSource,
    ModelSpec,
    load_checkpoint,
    resolve_model_source,
)
from rag.types import PageEmbedding

if TYPE_CHECKING:
    from colpali_engine.models import ColQwen2, ColQwen2Processor
    from PIL import Image

SPEC = ModelSpec(setting="PAGERAG_RETRIEVER_MODEL", kind="ColQwen2")


class EmbeddingError(RuntimeError):
    """The model produced unusable vectors (non-finite values, inconsistent image tokens)."""


class Retriever:
    """Wraps colpali-engine's ColQwen2 and its processor; build it with `Retriever.load`."""

    def __init__(
        self,
        model: ColQwen2,
        processor: ColQwen2Processor,
        *,
        model_id: str,
        revision: str | None,
        device: torch.device,
        dtype: torch.dtype,
        batch_size: int = 4,
    ) -> None:
        self.model = model
        self.processor = processor
        self.model_id = model_id
        self.revision = revision
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.dim = int(model.custom_text_proj.out_features)  # 128 for ColQwen2
        self.image_token_id = int(processor.image_token_id)
        self.merge_size = int(processor.image_processor.merge_size)

    @classmethod
    def load(cls, settings: Settings) -> Retriever:
        """Load `settings.retriever_model`: a full checkpoint or a PEFT adapter over its base."""
        device, dtype = resolve_device_dtype(settings)
        source = resolve_model_source(settings.retriever_model, settings.retriever_revision, SPEC)
        model, processor_source = _load_model(source, device, dtype)
        processor = _load_processor(processor_source, source.model_id, settings.max_visual_tokens)
        return cls(
            model,
            processor,
            model_id=source.model_id,
            revision=source.revision,
            device=device,
            dtype=dtype,
            batch_size=settings.batch_size,
        )

    def embed_pages(self, images: Sequence[Image.Image]) -> list[PageEmbedding]:
        """One multivector per page image, in the input order."""
        out: list[PageEmbedding | None] = [None] * len(images)
        # Batching pages of similar size cuts padding (pixels and tokens).
        for idx in _batches([im.width * im.height for im in images], self.batch_size):
            batch = self.processor.process_images([images[i] for i in idx]).to(self.device)
            embeddings = self._forward(batch)  # (b, seq, dim) float32
            for row, i in enumerate(idx):
                out[i] = self._page(
                    embeddings[row],
                    batch["input_ids"][row],
                    batch["attention_mask"][row],
                    batch["image_grid_thw"][row],
                    what=f"page {i}",
                )
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

    def _page(
        self,
        embeddings: torch.Tensor,  # (seq, dim)
        input_ids: torch.Tensor,  # (seq,)
        attention_mask: torch.Tensor,  # (seq,)
        grid_thw: torch.Tensor,  # (3,) patches before merging: time, height, width
        *,
        what: str,
    ) -> PageEmbedding:
        keep = attention_mask.bool().cpu()  # (seq,)
        vectors = embeddings[keep].numpy()  # (n_tokens, dim)
        is_image = (input_ids.cpu()[keep] == self.image_token_id).numpy()  # (n_tokens,)
        t, h, w = (int(x) for x in grid_thw)
        rows, cols = h // self.merge_size, w // self.merge_size
        n_image = int(is_image.sum())
        offset = int(is_image.argmax())
        if t != 1 or n_image != rows * cols or not is_image[offset : offset + n_image].all():
            raise EmbeddingError(
                f"{what}: {n_image} image tokens do not form the {rows}x{cols} patch grid "
                f"(image_grid_thw={t, h, w}); the processor and model of {self.model_id} disagree."
            )
        return PageEmbedding(
            vectors=self._finite(vectors, what), grid=(rows, cols), image_offset=offset
        )

    def _finite(self, vectors: np.ndarray, what: str) -> np.ndarray:
        if not np.isfinite(vectors).all():
            raise EmbeddingError(
                f"{what}: {self.model_id} produced non-finite values in {self.dtype} on "
                f"{self.device}; set PAGERAG_DTYPE=float32 (or another PAGERAG_DEVICE)."
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def _batches(sizes: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped into batches of similar size (ascending), each a list of input positions."""
    order = sorted(range(len(sizes)), key=sizes.__getitem__)
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _load_model(
    source: ModelSource, device: torch.device, dtype: torch.dtype
) -> tuple[ColQwen2, ModelSource]:
    """The model (adapters merged into their base) and where to read the processor from."""
    if not source.is_adapter:
        return _from_pretrained(source, device, dtype), source

    # How vidore/colqwen2-v1.0 is published: a LoRA adapter (and the processor) over
    # vidore/colqwen2-base. Merging it once makes inference as fast as a plain checkpoint.
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
    model = _from_pretrained(base, device, dtype)
    try:
        with warnings.catch_warnings():  # peft calls an API transformers 5 deprecated
            warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
            model = PeftModel.from_pretrained(model, str(source.path)).merge_and_unload()
    except (OSError, ValueError, RuntimeError) as exc:
        raise SPEC.error(source.model_id, f"its PEFT adapter does not apply: {exc}") from exc
    # vidore ships the processor with the adapter; fall back to the base's if it is not there.
    processor_source = source if (source.path / "tokenizer_config.json").is_file() else base
    return model.eval(), processor_source


def _from_pretrained(source: ModelSource, device: torch.device, dtype: torch.dtype) -> ColQwen2:
    from colpali_engine.models import ColQwen2

    # A plain Qwen2-VL checkpoint would load too, with a random projection.
    return load_checkpoint(
        ColQwen2,
        source,
        device,
        dtype,
        SPEC,
        required="custom_text_proj",
        what="ColQwen2",
    )


def _load_processor(
    source: ModelSource, model_id: str, max_visual_tokens: int
) -> ColQwen2Processor:
    from colpali_engine.models import ColQwen2Processor

    try:
        processor = ColQwen2Processor.from_pretrained(
            str(source.path), max_num_visual_tokens=max_visual_tokens
        )
    except (OSError, ValueError, TypeError) as exc:
        raise SPEC.error(model_id, f"its processor does not load: {exc}") from exc
    image_processor = processor.image_processor
    # colpali-engine also sets the `max_pixels` attribute, which transformers 5 forwards on every
    # call with a FutureWarning; `size["longest_edge"]` already carries the same limit.
    if getattr(image_processor, "max_pixels", None) is not None:
        image_processor.size["longest_edge"] = image_processor.max_pixels
        image_processor.max_pixels = None
    return processor


__all__ = ["EmbeddingError", "ModelLoadError", "Retriever"]
