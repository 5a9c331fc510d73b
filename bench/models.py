"""What each model family costs on this CPU: full-size architectures, random weights.

    nice -n 19 python bench/models.py --json out.json --markdown      # every model below
    python bench/models.py --models ColSmol-256M,ColModernVBert        # a subset

For the default and the smallest model of each family in rag/models/registry.py, the script
builds the published architecture with random weights (speed does not depend on the weight
values; nothing is downloaded), saves it like a checkpoint to a temporary directory, loads it
through the product's `Retriever.load` / `Generator.load` (device cpu, float32: what
PAGERAG_DTYPE=auto picks on a CPU) and measures:

- retrievers: seconds per page to embed a US-letter page rendered at 144 dpi at the default
  visual-token cap (PAGERAG_MAX_VISUAL_TOKENS=768), batch size 1, after one warm-up page; and
  seconds per query;
- answerers: prefill tokens/s (prompt tokens over the time to the first new token, the vision
  tower included) and decode tokens/s for 3 such pages at the default visual-token budget
  (PAGERAG_VISUAL_TOKEN_BUDGET=3072), with a fixed number of new tokens forced.

The architecture numbers (ARCHS) are transcribed by hand from the published config.json files
(the Hub cannot be reached here). The models keep their real vocabulary size (embedding
matrix, and the answerers' LM head that every decode step multiplies by), but the text goes
through the tests' 400-token BPE (tests/tiny_models.py), so a prompt's text part is tokenized
into more tokens than the real tokenizer makes; the image tokens, which dominate, are exact.

The machine is shared and noisy, so every run also times a fixed baseline, a numpy float32
matmul (BASELINE_N^3, BASELINE_REPS times), before and after each model, and each figure is
given again relative to it: times as multiples of the baseline, rates as units per baseline.
Each model is built and measured in its own child processes, so one model's memory is given
back before the next loads and the peak RSS is that of loading and running it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import log, machine, memory_mb

BASELINE_N = 2048
BASELINE_REPS = 4
ANSWER_TOKENS = 200  # registry Cost.answer_seconds: a 3-page answer of about this length
COMMAND = "nice -n 19 python bench/models.py --json models.json --markdown"

# -- published architectures (transcribed from each config.json; approximate) -------------

QWEN_VOCAB = 151936

# Qwen/Qwen2.5-VL-3B-Instruct (vidore/colqwen2.5-base is built on it).
QWEN25_VL_3B: dict[str, Any] = {
    "text_config": {
        "vocab_size": QWEN_VOCAB,
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": [16, 24, 24],
        },
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "out_hidden_size": 2048,
        "num_heads": 16,
        "hidden_act": "silu",
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
    },
    "tie_word_embeddings": True,
}

# Qwen/Qwen3-VL-2B-Instruct.
QWEN3_VL_2B: dict[str, Any] = {
    "text_config": {
        "vocab_size": QWEN_VOCAB,
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
    },
    "vision_config": {
        "depth": 24,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "out_hidden_size": 2048,
        "num_heads": 16,
        "hidden_act": "gelu_pytorch_tanh",
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [5, 11, 17],
    },
    "tie_word_embeddings": True,
}

# HuggingFaceTB/SmolVLM-256M-Instruct (vidore/colSmol-256M-base): SmolLM2-135M + SigLIP-93M.
SMOLVLM_256M: dict[str, Any] = {
    "text_config": {
        "model_type": "llama",
        "vocab_size": 49280,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
    },
    "vision_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 512,
        "patch_size": 16,
    },
    "scale_factor": 4,
}

# ModernVBERT/colmodernvbert: an Ettin-150M (ModernBERT) encoder + SigLIP2-base-512.
MODERNVBERT: dict[str, Any] = {
    "text_config": {
        "model_type": "modernbert",
        "vocab_size": 50368,
        "hidden_size": 768,
        "intermediate_size": 1152,
        "num_hidden_layers": 22,
        "num_attention_heads": 12,
        "max_position_embeddings": 8000,
        "global_attn_every_n_layers": 3,
        "local_attention": 128,
    },
    "vision_config": {
        "model_type": "siglip_vision_model",
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 512,
        "patch_size": 16,
    },
    "pixel_shuffle_factor": 4,
}
TILE = 512  # SigLIP tile side of both tiled families (max_image_size)
TILE_TOKENS = 64  # (512 / 16 / 4)^2 tokens per tile after the pixel shuffle


@dataclass(frozen=True)
class Arch:
    name: str  # row label
    model: str  # registry id whose cost this is
    family: str  # registry family name
    note: str  # what was built


ARCHS: tuple[Arch, ...] = (
    Arch("ColQwen2", "vidore/colqwen2-v1.0", "ColQwen2", "Qwen2-VL-2B, adapter merged"),
    Arch("ColQwen2.5", "vidore/colqwen2.5-v0.2", "ColQwen2.5", "Qwen2.5-VL-3B, adapter merged"),
    Arch("ColSmol-256M", "vidore/colSmol-256M", "ColIdefics3", "SmolVLM-256M, adapter merged"),
    Arch("ColModernVBert", "ModernVBERT/colmodernvbert", "ColModernVBert", "ModernVBERT 250M"),
    Arch("Qwen2-VL-2B", "Qwen/Qwen2-VL-2B-Instruct", "Qwen2-VL", "Qwen2-VL-2B-Instruct"),
    Arch("Qwen2.5-VL-3B", "Qwen/Qwen2.5-VL-3B-Instruct", "Qwen2.5-VL", "Qwen2.5-VL-3B-Instruct"),
    Arch("Qwen3-VL-2B", "Qwen/Qwen3-VL-2B-Instruct", "Qwen3-VL", "Qwen3-VL-2B-Instruct"),
)


def arch(name: str) -> Arch:
    for a in ARCHS:
        if a.name.casefold() == name.casefold():
            return a
    raise SystemExit(f"unknown model {name!r}; known: {', '.join(a.name for a in ARCHS)}")


# -- building (child process) -------------------------------------------------------------


def _qwen_ids(tokenizer: Any) -> dict[str, int]:
    from tests.tiny_models import SPECIAL_TOKENS

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }


def _qwen_text_ids(tokenizer: Any) -> dict[str, int]:
    return {
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    }


def _nested(base: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """A nested Qwen-VL config with the special-token ids of the small tokenizer."""
    text = {**base["text_config"], **_qwen_text_ids(tokenizer)}
    return {**base, "text_config": text, **_qwen_ids(tokenizer)}


def qwen2_config(tokenizer: Any) -> Any:
    from generation import QWEN2_VL_2B  # the published config, kept in one place
    from transformers import Qwen2VLConfig

    ids = {**_qwen_text_ids(tokenizer), **_qwen_ids(tokenizer)}
    ids["vision_token_id"] = tokenizer.convert_tokens_to_ids("<|vision_pad|>")
    return Qwen2VLConfig(**{**QWEN2_VL_2B, **ids})


def qwen25_config(tokenizer: Any) -> Any:
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(**_nested(QWEN25_VL_3B, tokenizer))


def qwen3_config(tokenizer: Any) -> Any:
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(**_nested(QWEN3_VL_2B, tokenizer))


def idefics3_config(tokenizer: Any) -> Any:
    from transformers import Idefics3Config

    pad = tokenizer.pad_token_id
    text = {**SMOLVLM_256M["text_config"], "pad_token_id": pad}
    return Idefics3Config(
        **{**SMOLVLM_256M, "text_config": text},
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=pad,
    )


def modernvbert_config(tokenizer: Any) -> Any:
    from transformers import ModernVBertConfig

    text = {**MODERNVBERT["text_config"], "pad_token_id": tokenizer.pad_token_id}
    return ModernVBertConfig(
        **{**MODERNVBERT, "text_config": text},
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )


def _qwen_processor_parts(tokenizer: Any, patch: int) -> dict[str, Any]:
    """The published Qwen-VL processors' defaults (PageRAG sets the pixel limits itself)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    limits = {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 1280}
    if patch == 16:
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import (
            Qwen3VLVideoProcessor,
        )

        half = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}
        return {
            "image_processor": Qwen2VLImageProcessor(patch_size=16, **limits, **half),
            "video_processor": Qwen3VLVideoProcessor(patch_size=16),
            "tokenizer": tokenizer,
        }
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    return {
        "image_processor": Qwen2VLImageProcessor(**limits),
        "video_processor": Qwen2VLVideoProcessor(**limits),
        "tokenizer": tokenizer,
    }


def _tiled_processor_parts(tokenizer: Any) -> dict[str, Any]:
    from transformers.models.idefics3.image_processing_idefics3 import Idefics3ImageProcessor

    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": 4 * TILE}, max_image_size={"longest_edge": TILE}
    )
    return {"image_processor": image_processor, "tokenizer": tokenizer, "image_seq_len": 64}


# family -> (module, model class, processor class, config builder, tiled, patch)
RECIPES: dict[str, tuple[str, str, str, Callable[[Any], Any], bool, int]] = {
    "ColQwen2": (
        "colpali_engine.models",
        "ColQwen2",
        "ColQwen2Processor",
        qwen2_config,
        False,
        14,
    ),
    "ColQwen2.5": (
        "colpali_engine.models",
        "ColQwen2_5",
        "ColQwen2_5_Processor",
        qwen25_config,
        False,
        14,
    ),
    "ColIdefics3": (
        "colpali_engine.models",
        "ColIdefics3",
        "ColIdefics3Processor",
        idefics3_config,
        True,
        16,
    ),
    "ColModernVBert": (
        "colpali_engine.models",
        "ColModernVBert",
        "ColModernVBertProcessor",
        modernvbert_config,
        True,
        16,
    ),
    "Qwen2-VL": (
        "transformers",
        "Qwen2VLForConditionalGeneration",
        "Qwen2VLProcessor",
        qwen2_config,
        False,
        14,
    ),
    "Qwen2.5-VL": (
        "transformers",
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen2_5_VLProcessor",
        qwen25_config,
        False,
        14,
    ),
    "Qwen3-VL": (
        "transformers",
        "Qwen3VLForConditionalGeneration",
        "Qwen3VLProcessor",
        qwen3_config,
        False,
        16,
    ),
}


def build(a: Arch, out: Path) -> dict[str, Any]:
    """Save `a` with random weights (bfloat16, as the checkpoints are published) and its
    processor to `out`; the loader upcasts to float32 on a CPU."""
    import importlib

    import torch

    from rag.models import registry
    from tests.tiny_models import (
        CHAT_TEMPLATE,
        build_tiny_idefics3_tokenizer,
        build_tiny_tokenizer,
    )

    module, model_name, processor_name, config_of, tiled, patch = RECIPES[a.family]
    lib = importlib.import_module(module)
    tokenizer = build_tiny_idefics3_tokenizer() if tiled else build_tiny_tokenizer()
    config = config_of(tokenizer)
    torch.manual_seed(0)
    started = time.perf_counter()
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # half the memory and disk of float32
    try:
        model = getattr(lib, model_name)(config).eval()
    finally:
        torch.set_default_dtype(default)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)
    del model
    parts = _tiled_processor_parts(tokenizer) if tiled else _qwen_processor_parts(tokenizer, patch)
    if registry.family(a.family).kind == "answerer":
        parts["chat_template"] = CHAT_TEMPLATE
    getattr(lib, processor_name)(**parts).save_pretrained(out)
    return {
        "params_b": round(params / 1e9, 3),
        "build_seconds": round(time.perf_counter() - started),
    }


# -- measuring (child process) ------------------------------------------------------------


def baseline_seconds(runs: int = 3) -> list[float]:
    """Seconds for BASELINE_REPS float32 matmuls of BASELINE_N^3, `runs` times."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.random((BASELINE_N, BASELINE_N), dtype=np.float32)
    b = rng.random((BASELINE_N, BASELINE_N), dtype=np.float32)
    a @ b  # warm-up: threads, page faults
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        for _ in range(BASELINE_REPS):
            a @ b
        out.append(time.perf_counter() - started)
    return out


def _settings(directory: Path, data: Path, kind: str) -> Any:
    from rag.config import Settings

    key = "retriever_model" if kind == "retriever" else "generator_model"
    # The defaults (visual-token cap and budget, pixel limits) except batch size 1, on a CPU.
    return Settings(
        _env_file=None,
        data_dir=data,
        device="cpu",
        dtype="auto",
        batch_size=1,
        **{key: str(directory)},
    )


def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure_retriever(directory: Path, data: Path, budget_s: float) -> dict[str, Any]:
    from embedding import QUESTIONS, letter_pages
    from PIL import Image

    from rag.models.retriever import Retriever

    settings = _settings(directory, data, "retriever")
    started = time.perf_counter()
    retriever = Retriever.load(settings)
    loaded = time.perf_counter() - started
    pages = letter_pages(3, dpi=settings.render_dpi)
    batch = retriever.processor.process_images(pages[:1])
    ids = batch["input_ids"][0]
    image_tokens = int((ids == retriever.image_token_id).sum())
    log(f"  loaded in {loaded:.0f} s; {int(ids.shape[0])} tokens a page; warm-up")
    # A small warm-up page (kernels, allocator, lazy imports): a full one costs a whole page.
    retriever.embed_pages([Image.new("RGB", (448, 448), "white")])
    per_page: list[float] = []
    for page in pages:  # one page at a time (batch 1), until the time budget is spent
        per_page.append(_timed(lambda p=page: retriever.embed_pages([p])))
        log(f"  page: {per_page[-1]:.2f} s")
        if sum(per_page) > budget_s:
            break
    retriever.embed_query(QUESTIONS[0])  # warm-up
    per_query: list[float] = []
    for q in QUESTIONS * 3:
        per_query.append(_timed(lambda q=q: retriever.embed_query(q)))
        if sum(per_query) > budget_s / 3:
            break
    query_tokens = int(
        retriever.processor.process_queries(texts=QUESTIONS[:1])["input_ids"].shape[1]
    )
    return {
        "load_seconds": round(loaded, 1),
        "page_pixels": f"{pages[0].width}x{pages[0].height}",
        "tokens_per_page": int(ids.shape[0]),
        "image_tokens_per_page": image_tokens,
        "query_tokens": query_tokens,
        "pages_timed": len(per_page),
        "queries_timed": len(per_query),
        "seconds_per_page": statistics.median(per_page),
        "seconds_per_query": statistics.median(per_query),
    }


def measure_answerer(directory: Path, data: Path, new_tokens: int, runs: int) -> dict[str, Any]:
    from generation import QUESTION, letter_pages
    from PIL import Image

    from rag.models.generator import Generator

    settings = _settings(directory, data, "answerer")
    started = time.perf_counter()
    generator = Generator.load(settings)
    loaded = time.perf_counter() - started
    pages = letter_pages(settings.render_dpi)
    log(f"  loaded in {loaded:.0f} s; warm-up on one small page")
    # A small warm-up (kernels, allocator, lazy imports): a full one would cost a whole prefill.
    small = type(pages[0])(1, Image.new("RGB", (448, 448), "white"))
    generator.min_new_tokens = generator.max_new_tokens = 2
    generator.answer(QUESTION, [small])
    generator.min_new_tokens = generator.max_new_tokens = new_tokens
    results = []
    for _ in range(runs):
        results.append(generator.answer(QUESTION, pages))
        r = results[-1]
        log(f"  answer: first token {r.first_token_seconds:.1f} s, total {r.seconds:.1f} s")
    assert all(r.completion_tokens == new_tokens for r in results)
    r = results[0]
    prefill = [x.prompt_tokens / (x.first_token_seconds - x.prepare_seconds) for x in results]
    decode = [(new_tokens - 1) / (x.seconds - x.first_token_seconds) for x in results]
    return {
        "load_seconds": round(loaded, 1),
        "pages": len(pages),
        "page_pixels": f"{pages[0].image.width}x{pages[0].image.height}",
        "image_tokens": r.image_tokens,
        "prompt_tokens": r.prompt_tokens,
        "new_tokens": new_tokens,
        "runs": runs,
        "prepare_seconds": statistics.median(x.prepare_seconds for x in results),
        "first_token_seconds": statistics.median(x.first_token_seconds for x in results),
        "total_seconds": statistics.median(x.seconds for x in results),
        "prefill_tokens_per_second": statistics.median(prefill),
        "decode_tokens_per_second": statistics.median(decode),
    }


def measure(a: Arch, directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from rag.models import registry

    kind = registry.family(a.family).kind
    before = baseline_seconds()
    with tempfile.TemporaryDirectory(prefix="pagerag-bench-data-") as data:
        if kind == "retriever":
            figures = measure_retriever(directory, Path(data), args.page_budget)
        else:
            figures = measure_answerer(directory, Path(data), args.new_tokens, args.runs)
    after = baseline_seconds()
    base = statistics.median(before + after)
    figures |= {
        "kind": kind,
        "torch_threads": torch.get_num_threads(),
        "baseline_seconds": round(base, 4),
        "baseline_before": [round(x, 3) for x in before],
        "baseline_after": [round(x, 3) for x in after],
        "peak_rss_gb": round(memory_mb().get("VmHWM", 0) / 1024, 2),
        "load_average": round(os.getloadavg()[0], 2),
    }
    # Relative to the baseline: times as multiples of it, rates per baseline-time.
    if kind == "retriever":
        figures["page_over_baseline"] = round(figures["seconds_per_page"] / base, 2)
        figures["query_over_baseline"] = round(figures["seconds_per_query"] / base, 3)
    else:
        figures["prefill_tokens_per_baseline"] = round(
            figures["prefill_tokens_per_second"] * base, 1
        )
        figures["decode_tokens_per_baseline"] = round(figures["decode_tokens_per_second"] * base, 3)
        figures["answer_seconds_estimate"] = round(
            figures["first_token_seconds"]
            + (ANSWER_TOKENS - 1) / figures["decode_tokens_per_second"],
            1,
        )
    return figures


# -- orchestration ------------------------------------------------------------------------


def _child(args: list[str], timeout: float) -> dict[str, Any]:
    """Run this script as a child (its own memory) and read its JSON result file."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result = Path(f.name)
    cmd = [sys.executable, str(Path(__file__).resolve()), *args, "--result", str(result)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        proc = subprocess.run(cmd, env=env, timeout=timeout, check=False)
        if proc.returncode != 0:
            return {"error": f"exit status {proc.returncode} (see the log above)"}
        return json.loads(result.read_text())
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish in {timeout:.0f} s"}
    finally:
        result.unlink(missing_ok=True)


def run_all(
    names: Sequence[str], args: argparse.Namespace, earlier: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Build and measure `names` one after the other; with `earlier` (a previous result of
    this script), its other models are kept: every row carries its own baseline."""
    import numpy
    import torch
    import transformers

    out: dict[str, Any] = {
        "machine": machine(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "baseline": f"numpy float32 matmul {BASELINE_N}x{BASELINE_N} @ {BASELINE_N}x{BASELINE_N},"
        f" {BASELINE_REPS} times ({2 * BASELINE_REPS * BASELINE_N**3 / 1e9:.0f} GFLOP)",
        "command": COMMAND,
        "models": dict(earlier["models"]) if earlier else {},
    }
    for name in names:
        a = arch(name)
        with tempfile.TemporaryDirectory(prefix="pagerag-bench-model-", dir=args.workdir) as tmp:
            log(f"{a.name}: building the {a.note} architecture")
            built = _child(["--build", a.name, "--out", tmp], args.timeout)
            row: dict[str, Any] = {"model": a.model, "family": a.family, "built": a.note, **built}
            if "error" not in built:
                log(f"{a.name}: {built['params_b']} B parameters; loading and measuring")
                child = [
                    "--measure", a.name, "--dir", tmp,
                    "--new-tokens", str(args.new_tokens), "--runs", str(args.runs),
                    "--page-budget", str(args.page_budget),
                ]  # fmt: skip
                row |= _child(child, args.timeout)
        log(f"{a.name}: {json.dumps(row)}")
        out["models"][a.name] = row
        if args.json:  # after every model: an interrupted run keeps what it measured
            args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"Command: `{result['command']}`",
        f"Machine: {m['cpu']}, `nproc` = {m['nproc']}, {m.get('ram_gib', '?')} GiB RAM, no GPU; "
        f"Python {m['python']}, torch {result['torch']}, transformers {result['transformers']}; "
        f"{m['date']}.",
        f"Baseline: {result['baseline']}; its median in each model's run is in the table.",
        "",
        "| retriever | built from | params | load | peak RSS | embed a page | x baseline "
        "| query | x baseline | baseline | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    # In ARCHS order, whatever order the runs (--append) added them in.
    rows = {a.name: result["models"][a.name] for a in ARCHS if a.name in result["models"]}
    for name, r in rows.items():
        if _kind(r) != "retriever":
            continue
        if "error" in r:
            lines.append(f"| {name} | {r['built']} | — | — | — | {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {name} | {r['built']} | {r['params_b']:.2f} B | {r['load_seconds']:.0f} s "
            f"| {r['peak_rss_gb']:.1f} GB | {r['seconds_per_page']:.1f} s "
            f"({r['image_tokens_per_page']} image tokens) | {r['page_over_baseline']} "
            f"| {r['seconds_per_query']:.2f} s | {r['query_over_baseline']} "
            f"| {r['baseline_seconds']:.2f} s | {r['load_average']} |"
        )
    lines += [
        "",
        "| answerer | params | load | peak RSS | prompt (image) tokens | prefill | per baseline "
        "| decode | per baseline | first token | 200-token answer | baseline | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        if _kind(r) != "answerer":
            continue
        if "error" in r:
            lines.append(f"| {name} | — | — | — | — | {r['error']} | | | | | | | |")
            continue
        lines.append(
            f"| {name} | {r['params_b']:.2f} B | {r['load_seconds']:.0f} s "
            f"| {r['peak_rss_gb']:.1f} GB | {r['prompt_tokens']} ({r['image_tokens']}) "
            f"| {r['prefill_tokens_per_second']:.0f} tok/s | {r['prefill_tokens_per_baseline']} "
            f"| {r['decode_tokens_per_second']:.2f} tok/s | {r['decode_tokens_per_baseline']} "
            f"| {r['first_token_seconds']:.0f} s | ~{r['answer_seconds_estimate']:.0f} s "
            f"| {r['baseline_seconds']:.2f} s | {r['load_average']} |"
        )
    return "\n".join(lines)


def _kind(row: dict[str, Any]) -> str:
    from rag.models import registry

    return registry.family(row["family"]).kind


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(a.name for a in ARCHS))
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--markdown", action="store_true", help="print the tables")
    parser.add_argument(
        "--report", action="store_true", help="print the tables of --json PATH, measure nothing"
    )
    parser.add_argument(
        "--append", action="store_true", help="keep the other models already in --json PATH"
    )
    parser.add_argument("--new-tokens", type=int, default=16, help="forced answer length")
    parser.add_argument("--runs", type=int, default=1, help="answers timed per answerer")
    parser.add_argument("--page-budget", type=float, default=30.0, help="seconds of pages")
    parser.add_argument("--timeout", type=float, default=1200.0, help="per child process")
    parser.add_argument("--workdir", default=None, help="where checkpoints are written")
    # Internal: the child processes.
    parser.add_argument("--build", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.build or args.measure:
        a = arch(args.build or args.measure)
        data = build(a, args.out) if args.build else measure(a, args.dir, args)
        args.result.write_text(json.dumps(data))
        return
    if args.report:
        if not (args.json and args.json.is_file()):
            parser.error("--report needs --json PATH naming an earlier result")
        print(markdown(json.loads(args.json.read_text())))
        return
    earlier = None
    if args.append:
        if not (args.json and args.json.is_file()):
            parser.error("--append needs --json PATH naming an earlier result")
        earlier = json.loads(args.json.read_text())
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    result = run_all(names, args, earlier)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result) if args.markdown else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
