"""The models PageRAG knows, as data: families (how to load and read a checkpoint) and
published checkpoints (what they cost to fetch and run, under which licence).

Any checkpoint of a supported family loads, by Hub id or local directory: its family comes
from its own config.json (`architectures`, then `model_type`; a PEFT adapter's from its base
model). The table only adds names, facts and checks. Importing this loads no model code.

The published figures (parameters, download size, licence, languages) are taken from the
model cards from memory, not fetched: treat them as approximate (`approximate=True`). `cost`
is left for measured figures (bench/).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rag.models.loading import ADAPTER_CONFIG_FILE, CONFIG_FILE, ModelLoadError

if TYPE_CHECKING:
    from rag.config import Settings

Kind = Literal["retriever", "answerer"]
# How a family lays out a page's image tokens in its sequence (see rag/models/retriever.py):
# "merged": one contiguous row-major run, one token per merged patch (Qwen-VL families);
# "tiled": tiles of image_seq_len tokens each, row-major tile by tile, then one global image
# (Idefics3-style splitting: SmolVLM, ModernVBert).
Layout = Literal["merged", "tiled"]

SETTINGS: dict[Kind, str] = {
    "retriever": "PAGERAG_RETRIEVER_MODEL",
    "answerer": "PAGERAG_GENERATOR_MODEL",
}


@dataclass(frozen=True)
class Family:
    """An architecture PageRAG can load, and what reading its output depends on."""

    name: str  # e.g. "ColQwen2", as errors and tables name it
    kind: Kind
    model_types: tuple[str, ...]  # config.json `model_type` values of the family
    architectures: tuple[str, ...]  # config.json `architectures` entries that name it
    module: str  # where the classes live
    model_class: str
    processor_class: str  # "" for answerers: AutoProcessor reads the checkpoint's own
    weights: str  # prefix of weights only a real checkpoint has (a base model lacks them)
    layout: Layout
    patch_size: int  # pixels per side of one vision patch
    merge: int  # patches per side folded into one token (Qwen merge, Idefics3 pixel shuffle)
    tested: bool  # a tiny model of it runs in tests/rag/models/test_families.py
    aliases: tuple[str, ...] = ()
    note: str = ""

    @property
    def setting(self) -> str:
        return SETTINGS[self.kind]

    def load_class(self, which: Literal["model", "processor"] = "model") -> Any:
        import importlib

        name = self.model_class if which == "model" else self.processor_class
        return getattr(importlib.import_module(self.module), name)


@dataclass(frozen=True)
class Cost:
    """Measured figures for one model on one machine (bench/ writes them)."""

    device: str  # e.g. "NVIDIA H200, bfloat16"
    pages_per_second: float | None = None  # retrievers: embedding throughput
    query_seconds: float | None = None  # retrievers: embedding one question
    prefill_tokens_per_second: float | None = None  # answerers: 3 pages, vision tower included
    decode_tokens_per_second: float | None = None  # answerers
    answer_seconds: float | None = None  # answerers: a 3-page answer of ~200 tokens (time to
    # the first token + 199 tokens at the decode rate)
    peak_memory_gb: float | None = None  # peak RSS (CPU) or device memory of load + run
    command: str = ""  # what reproduces them


@dataclass(frozen=True)
class ModelDescription:
    """One published checkpoint (fastembed's model descriptions are the model for this)."""

    model: str  # Hugging Face Hub id
    family: str  # Family.name
    params_b: float  # parameters, billions
    size_gb: float  # download, base model included for adapters
    license: str
    patch_size: int  # pixels per side of one vision patch
    visual_tokens: int  # per-page visual-token cap (retrievers: as trained; answerers: at
    # PageRAG's default PAGERAG_GEN_MAX_PIXELS)
    languages: tuple[str, ...]
    description: str
    dim: int | None = None  # retrievers: width of each multivector row
    base_model: str | None = None  # adapters: where the weights come from (fetched too)
    default: bool = False
    cost: Cost | None = None
    approximate: bool = True  # figures from the model card, from memory

    @property
    def name(self) -> str:
        return self.model.rsplit("/", 1)[-1]

    @property
    def kind(self) -> Kind:
        return family(self.family).kind


_COLPALI = "colpali_engine.models"
_TRANSFORMERS = "transformers"

FAMILIES: tuple[Family, ...] = (
    Family(
        name="ColQwen2",
        kind="retriever",
        model_types=("qwen2_vl",),
        architectures=("ColQwen2",),
        module=_COLPALI,
        model_class="ColQwen2",
        processor_class="ColQwen2Processor",
        weights="custom_text_proj",
        layout="merged",
        patch_size=14,
        merge=2,
        tested=True,
    ),
    Family(
        name="ColQwen2.5",
        kind="retriever",
        model_types=("qwen2_5_vl",),
        architectures=("ColQwen2_5",),
        module=_COLPALI,
        model_class="ColQwen2_5",
        processor_class="ColQwen2_5_Processor",
        weights="custom_text_proj",
        layout="merged",
        patch_size=14,
        merge=2,
        tested=True,
    ),
    Family(
        name="ColQwen3",
        kind="retriever",
        model_types=("qwen3_vl",),
        architectures=("ColQwen3",),
        module=_COLPALI,
        model_class="ColQwen3",
        processor_class="ColQwen3Processor",
        weights="custom_text_proj",
        layout="merged",
        patch_size=16,
        merge=2,
        tested=True,
        note="colpali-engine fixes its rows at 320-d: the index stores 128-d rows",
    ),
    Family(
        name="ColQwen3.5",
        kind="retriever",
        model_types=("qwen3_5",),
        architectures=("ColQwen3_5",),
        module=_COLPALI,
        model_class="ColQwen3_5",
        processor_class="ColQwen3_5Processor",
        weights="custom_text_proj",
        layout="merged",
        patch_size=16,
        merge=2,
        tested=True,
        note="row width from config.json `dim` (128 when absent)",
    ),
    Family(
        name="ColIdefics3",
        kind="retriever",
        model_types=("idefics3",),
        architectures=("ColIdefics3",),
        module=_COLPALI,
        model_class="ColIdefics3",
        processor_class="ColIdefics3Processor",
        weights="linear",
        layout="tiled",
        patch_size=16,
        merge=4,
        tested=True,
        aliases=("ColSmol", "ColSmolVLM"),
    ),
    Family(
        name="ColModernVBert",
        kind="retriever",
        model_types=("modernvbert",),
        architectures=("ColModernVBert",),
        module=_COLPALI,
        model_class="ColModernVBert",
        processor_class="ColModernVBertProcessor",
        weights="custom_text_proj",
        layout="tiled",
        patch_size=16,
        merge=4,
        tested=True,
    ),
    Family(
        name="Qwen2-VL",
        kind="answerer",
        model_types=("qwen2_vl",),
        architectures=("Qwen2VLForConditionalGeneration",),
        module=_TRANSFORMERS,
        model_class="Qwen2VLForConditionalGeneration",
        processor_class="",
        weights="lm_head",
        layout="merged",
        patch_size=14,
        merge=2,
        tested=True,
    ),
    Family(
        name="Qwen2.5-VL",
        kind="answerer",
        model_types=("qwen2_5_vl",),
        architectures=("Qwen2_5_VLForConditionalGeneration",),
        module=_TRANSFORMERS,
        model_class="Qwen2_5_VLForConditionalGeneration",
        processor_class="",
        weights="lm_head",
        layout="merged",
        patch_size=14,
        merge=2,
        tested=True,
    ),
    Family(
        name="Qwen3-VL",
        kind="answerer",
        model_types=("qwen3_vl",),
        architectures=("Qwen3VLForConditionalGeneration",),
        module=_TRANSFORMERS,
        model_class="Qwen3VLForConditionalGeneration",
        processor_class="",
        weights="lm_head",
        layout="merged",
        patch_size=16,
        merge=2,
        tested=True,
    ),
)

_EN = ("en",)
_QWEN_LANGUAGES = ("en", "zh", "multilingual")


def _cpu(**figures: float) -> Cost:
    """Measured by bench/models.py on a shared 2-core CPU (docs/BENCHMARKS.md, "Models: cost on
    this CPU"): the full-size architecture with random weights, loaded as PageRAG loads it."""
    return Cost(
        device="2-core AMD EPYC CPU, float32",
        command="nice -n 19 python bench/models.py --json models.json --markdown",
        **figures,
    )


MODELS: tuple[ModelDescription, ...] = (
    # Retrievers.
    ModelDescription(
        model="vidore/colqwen2-v1.0",
        family="ColQwen2",
        params_b=2.2,
        size_gb=8.9,  # the float32 base (vidore/colqwen2-base, 8.8 GB) + a 74 MB LoRA
        license="MIT (adapter), Apache-2.0 (base)",
        dim=128,
        patch_size=14,
        visual_tokens=768,
        languages=_EN,
        description="ColQwen2 on Qwen2-VL-2B; PageRAG's default, the reference for its figures",
        cost=_cpu(pages_per_second=0.0175, query_seconds=1.58, peak_memory_gb=13.1),
        base_model="vidore/colqwen2-base",
        default=True,
    ),
    ModelDescription(
        model="vidore/colqwen2.5-v0.2",
        family="ColQwen2.5",
        params_b=3.8,
        size_gb=7.6,  # vidore/colqwen2.5-base (7.5 GB) + a LoRA
        license="MIT (adapter); Qwen2.5-VL-3B weights: Qwen Research License",
        dim=128,
        patch_size=14,
        visual_tokens=768,
        languages=_EN,
        description="ColQwen2.5 on Qwen2.5-VL-3B; a little better on ViDoRe, non-commercial base",
        cost=_cpu(pages_per_second=0.0163, query_seconds=3.33, peak_memory_gb=20.8),
        base_model="vidore/colqwen2.5-base",
    ),
    ModelDescription(
        model="vidore/colSmol-256M",
        family="ColIdefics3",
        params_b=0.26,
        size_gb=0.5,  # vidore/colSmol-256M-base (0.46 GB) + a LoRA
        license="MIT",
        dim=128,
        patch_size=16,
        visual_tokens=1088,  # up to 4x4 tiles of 64 tokens + the global image
        languages=_EN,
        description="ColSmol on SmolVLM-256M: runs on a laptop CPU, weaker retrieval",
        cost=_cpu(pages_per_second=0.0427, query_seconds=0.12, peak_memory_gb=2.6),
        base_model="vidore/colSmol-256M-base",
    ),
    ModelDescription(
        model="vidore/colSmol-500M",
        family="ColIdefics3",
        params_b=0.5,
        size_gb=1.0,  # vidore/colSmol-500M-base (0.92 GB) + a LoRA
        license="MIT",
        dim=128,
        patch_size=16,
        visual_tokens=1088,
        languages=_EN,
        description="ColSmol on SmolVLM-500M: small and CPU-friendly",
        base_model="vidore/colSmol-500M-base",
    ),
    ModelDescription(
        model="ModernVBERT/colmodernvbert",
        family="ColModernVBert",
        params_b=0.25,
        size_gb=1.0,
        license="MIT",
        dim=128,
        patch_size=16,
        visual_tokens=1088,
        languages=_EN,
        description="ColModernVBert: a 250M bidirectional encoder, the fastest on a CPU",
        cost=_cpu(pages_per_second=0.0485, query_seconds=0.14, peak_memory_gb=2.6),
    ),
    ModelDescription(
        model="TomoroAI/tomoro-colqwen3-embed-4b",
        family="ColQwen3",
        params_b=4.4,
        size_gb=8.9,
        license="Apache-2.0",
        dim=320,
        patch_size=16,
        visual_tokens=1280,
        languages=_QWEN_LANGUAGES,
        description="ColQwen3 on Qwen3-VL-4B; 320-d rows, which PageRAG's 128-d index refuses",
    ),
    ModelDescription(
        model="athrael-soju/colqwen3.5-4.5B-v3",
        family="ColQwen3.5",
        params_b=4.5,
        size_gb=9.0,
        license="Apache-2.0",
        dim=320,
        patch_size=16,
        visual_tokens=1280,
        languages=_QWEN_LANGUAGES,
        description="ColQwen3.5 on Qwen3.5-4B; 320-d rows, which PageRAG's 128-d index refuses",
    ),
    # Answerers.
    ModelDescription(
        model="Qwen/Qwen2-VL-2B-Instruct",
        family="Qwen2-VL",
        params_b=2.2,
        size_gb=4.4,
        license="Apache-2.0",
        patch_size=14,
        visual_tokens=1024,
        languages=_QWEN_LANGUAGES,
        description="PageRAG's default answerer: fits an 8 GB GPU",
        cost=_cpu(
            prefill_tokens_per_second=8.5,
            decode_tokens_per_second=1.64,
            answer_seconds=576,
            peak_memory_gb=13.1,
        ),
        default=True,
    ),
    ModelDescription(
        model="Qwen/Qwen2-VL-7B-Instruct",
        family="Qwen2-VL",
        params_b=8.3,
        size_gb=16.6,
        license="Apache-2.0",
        patch_size=14,
        visual_tokens=1024,
        languages=_QWEN_LANGUAGES,
        description="Qwen2-VL 7B: better answers, needs a 24 GB GPU",
    ),
    ModelDescription(
        model="Qwen/Qwen2.5-VL-3B-Instruct",
        family="Qwen2.5-VL",
        params_b=3.8,
        size_gb=7.5,
        license="Qwen Research License (non-commercial)",
        patch_size=14,
        visual_tokens=1024,
        languages=_QWEN_LANGUAGES,
        description="Qwen2.5-VL 3B: stronger on documents and charts than Qwen2-VL 2B",
    ),
    ModelDescription(
        model="Qwen/Qwen2.5-VL-7B-Instruct",
        family="Qwen2.5-VL",
        params_b=8.3,
        size_gb=16.6,
        license="Apache-2.0",
        patch_size=14,
        visual_tokens=1024,
        languages=_QWEN_LANGUAGES,
        description="Qwen2.5-VL 7B: needs a 24 GB GPU",
    ),
    ModelDescription(
        model="Qwen/Qwen3-VL-2B-Instruct",
        family="Qwen3-VL",
        params_b=2.1,
        size_gb=4.3,
        license="Apache-2.0",
        patch_size=16,
        visual_tokens=784,  # 32x32-pixel tokens: the default pixel cap makes fewer of them
        languages=_QWEN_LANGUAGES,
        description="Qwen3-VL 2B: the newest small Qwen answerer",
        cost=_cpu(
            prefill_tokens_per_second=9.9,
            decode_tokens_per_second=1.31,
            answer_seconds=461,
            peak_memory_gb=12.7,
        ),
    ),
    ModelDescription(
        model="Qwen/Qwen3-VL-4B-Instruct",
        family="Qwen3-VL",
        params_b=4.4,
        size_gb=8.9,
        license="Apache-2.0",
        patch_size=16,
        visual_tokens=784,
        languages=_QWEN_LANGUAGES,
        description="Qwen3-VL 4B: a 16 GB GPU",
    ),
    ModelDescription(
        model="Qwen/Qwen3-VL-8B-Instruct",
        family="Qwen3-VL",
        params_b=8.8,
        size_gb=17.5,
        license="Apache-2.0",
        patch_size=16,
        visual_tokens=784,
        languages=_QWEN_LANGUAGES,
        description="Qwen3-VL 8B: a 24 GB GPU",
    ),
)


def families(kind: Kind | None = None) -> tuple[Family, ...]:
    return tuple(f for f in FAMILIES if kind is None or f.kind == kind)


def family(name: str) -> Family:
    """The family called `name` (or one of its aliases), case-insensitively."""
    wanted = name.casefold()
    for f in FAMILIES:
        if wanted in (n.casefold() for n in (f.name, *f.aliases)):
            return f
    raise KeyError(f"no model family {name!r}; known: {', '.join(f.name for f in FAMILIES)}")


def describe(model_id: str) -> ModelDescription | None:
    """The registry's entry for a Hub id (None for other ids and local directories)."""
    return next((m for m in MODELS if m.model.casefold() == model_id.casefold()), None)


def models(kind: Kind | None = None) -> tuple[ModelDescription, ...]:
    return tuple(m for m in MODELS if kind is None or m.kind == kind)


def family_of_model(model: Any, kind: Kind) -> Family:
    """The family of an already-built model object (for callers that build their own)."""
    names = {cls.__name__ for cls in type(model).__mro__}
    for f in families(kind):
        if f.model_class in names:
            return f
    raise ValueError(f"{type(model).__name__} is not a model of a supported {kind} family")


def family_from_config(config: Mapping[str, Any], kind: Kind) -> Family | None:
    """The `kind` family a config.json describes: its `architectures` first, then its
    `model_type` (a ColQwen2 and a Qwen2-VL answerer share `qwen2_vl`)."""
    archs = set(config.get("architectures") or ())
    candidates = families(kind)
    for f in candidates:
        if archs & set(f.architectures):
            return f
    if archs & {a for other in families() if other.kind != kind for a in other.architectures}:
        return None  # a model of the other kind (e.g. a ColQwen2 given as the answerer)
    model_type = config.get("model_type")
    return next((f for f in candidates if model_type in f.model_types), None)


def read_config(directory: Path) -> dict[str, Any]:
    try:
        data = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def detect_family(model_id: str, directory: Path, kind: Kind) -> Family:
    """The family of the checkpoint in `directory` (which holds its config.json), or a
    `ModelLoadError` naming the setting and the supported families."""
    config = read_config(directory)
    found = family_from_config(config, kind)
    if found is not None:
        return found
    other: Kind = "answerer" if kind == "retriever" else "retriever"
    elsewhere = family_from_config(config, other) if config.get("architectures") else None
    if elsewhere is not None:
        # Name the family of this kind on the same backbone, if any ("not a Qwen2-VL
        # generation checkpoint"), as the weight check would.
        model_type = config.get("model_type")
        same = next((f for f in families(kind) if model_type in f.model_types), None)
        wanted = f"{same.name}{' generation' if kind == 'answerer' else ''}" if same else kind
        reason = (
            f"it is a {elsewhere.name} {other} checkpoint, not a {wanted} checkpoint; "
            f"{elsewhere.setting} is the setting that takes it"
        )
    elif not config:
        reason = f"{directory / CONFIG_FILE} is missing or not valid JSON"
    else:
        archs = ", ".join(config.get("architectures") or ()) or "none"
        reason = (
            f"its config.json says model_type {config.get('model_type')!r} (architectures: "
            f"{archs}), which is not a supported {kind} family"
        )
    raise unsupported(model_id, kind, reason)


def unsupported(model_id: str, kind: Kind, reason: str) -> ModelLoadError:
    setting = SETTINGS[kind]
    names = ", ".join(_family_label(f) for f in families(kind))
    return ModelLoadError(
        f"Cannot load the {kind} model '{model_id}': {reason}. Set {setting} to a checkpoint "
        f"(Hub id or local directory) of a supported {kind} family: {names}; `pagerag models` "
        "lists known ones.",
        model_id=model_id,
        reason=reason,
        setting=setting,
    )


def _family_label(f: Family) -> str:
    return f"{f.name} ({', '.join(f.aliases)})" if f.aliases else f.name


# -- table rows for `pagerag models` ------------------------------------------------------


def model_rows(settings: Settings, cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per known model, plus the configured ones the table lacks, for a table or
    JSON: facts from the registry, `active` (the settings choose it), `cached` (every file
    it needs is in the Hugging Face cache, or it is a local directory) and `cached_gb`
    (what it takes on disk now; None when nothing is there). Reads no weights."""
    cache = cached_repos(cache_dir)
    active: dict[Kind, str | None] = {
        "retriever": settings.retriever_model,
        # A remote answerer (PAGERAG_ANSWER_URL) loads nothing here.
        "answerer": None if settings.answer_url else settings.generator_model,
    }
    rows = [_row(m, active, cache) for m in MODELS]
    for kind, model_id in active.items():
        if model_id and describe(model_id) is None:
            rows.append(_unlisted_row(model_id, kind, cache))
    return rows


def cached_repos(cache_dir: str | Path | None = None) -> dict[str, int]:
    """Hub model id -> bytes on disk in the Hugging Face cache ({} when there is no cache)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir)
    except (CacheNotFound, OSError):
        return {}
    return {r.repo_id: r.size_on_disk for r in info.repos if r.repo_type == "model"}


def _row(
    m: ModelDescription, active: Mapping[Kind, str | None], cache: Mapping[str, int]
) -> dict[str, Any]:
    parts = [m.model, *([m.base_model] if m.base_model else [])]
    present = [cache[p] for p in parts if p in cache]
    chosen = active[m.kind]
    return {
        "name": m.name,
        "kind": m.kind,
        "model": m.model,
        "family": m.family,
        "params_b": m.params_b,
        "size_gb": m.size_gb,
        "license": m.license,
        "dim": m.dim,
        "visual_tokens": m.visual_tokens,
        "languages": list(m.languages),
        "default": m.default,
        "active": chosen is not None and chosen.casefold() == m.model.casefold(),
        "cached": len(present) == len(parts),
        "cached_gb": _gb(sum(present)) if present else None,
        "tested": family(m.family).tested,
        "approximate": m.approximate,
        "description": m.description,
    }


def _unlisted_row(model_id: str, kind: Kind, cache: Mapping[str, int]) -> dict[str, Any]:
    """The configured model the registry lacks: a local directory or another Hub id."""
    local = Path(model_id).expanduser()
    found = _peek_family(model_id, kind)
    on_disk = _dir_bytes(local) if local.is_dir() else cache.get(model_id)
    return {
        "name": local.name if local.is_dir() else model_id.rsplit("/", 1)[-1],
        "kind": kind,
        "model": model_id,
        "family": found.name if found else None,
        "params_b": None,
        "size_gb": None,
        "license": None,
        "dim": None,
        "visual_tokens": None,
        "languages": [],
        "default": False,
        "active": True,
        "cached": on_disk is not None,
        "cached_gb": _gb(on_disk) if on_disk is not None else None,
        "tested": found.tested if found else False,
        "approximate": False,
        "description": "configured here, not in the registry",
    }


def _peek_family(model_id: str, kind: Kind, depth: int = 0) -> Family | None:
    """The family of a local directory or a cached Hub id, from files already on disk."""
    directory = _config_dir(model_id)
    if directory is None:
        known = describe(model_id)
        return family(known.family) if known else None
    if (directory / CONFIG_FILE).is_file():
        return family_from_config(read_config(directory), kind)
    try:
        adapter = json.loads((directory / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    base = adapter.get("base_model_name_or_path") if isinstance(adapter, dict) else None
    return _peek_family(base, kind, depth + 1) if base and depth < 2 else None


def _config_dir(model_id: str) -> Path | None:
    local = Path(model_id).expanduser()
    if local.is_dir():
        return local
    from huggingface_hub import try_to_load_from_cache

    for name in (CONFIG_FILE, ADAPTER_CONFIG_FILE):
        try:
            hit = try_to_load_from_cache(model_id, name)
        except ValueError:  # not a valid repo id
            return None
        if isinstance(hit, str):
            return Path(hit).parent
    return None


def _dir_bytes(path: Path) -> int:
    return sum(
        (Path(root) / name).stat().st_size for root, _dirs, files in os.walk(path) for name in files
    )


def _gb(size: int) -> float:
    return round(size / 1e9, 2)
