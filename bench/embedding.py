"""Embedding throughput: pages/s of the full-size ColQwen2 architecture, and query latency.

    python bench/embedding.py --device cuda --json       # the GPU figure (docs/BENCHMARKS.md)
    python bench/embedding.py --device cpu --tiny        # end-to-end check of this script

The model is ColQwen2 (colpali-engine) built from the published Qwen2-VL-2B config with random
weights: speed does not depend on the weight values, and nothing is downloaded. It runs through
the product's `Retriever.embed_pages` / `embed_query` (processor, batching, post-processing),
on US-letter pages rendered at 144 dpi and resized to the default visual-token cap
(PAGERAG_MAX_VISUAL_TOKENS=768). Every batch size and dtype is timed on the same pages after a
warm-up batch; the best is compared with an analytic estimate of the FLOPs per page (~7 TFLOP:
the vision tower over ~3,000 patches plus the 1.5B language model over ~770 tokens) and, where
the GPU is known, with its peak dense bf16 throughput.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import torch
from _common import emit, latency_ms, log, machine
from PIL import Image, ImageDraw

from rag.models.retriever import EmbeddingError, Retriever

QUESTIONS = [
    "What was the total number of handgun permits in November 2015?",
    "Which county reported the largest budget increase?",
    "How many employees were laid off in March 2016?",
    "What is the net income in the fourth quarter?",
]
# Peak dense bf16 tensor throughput (TFLOP/s, no sparsity) from the vendors' data sheets.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def letter_pages(n: int, dpi: int = 144) -> list[Image.Image]:
    """Text-and-table-like US-letter pages (only their size matters to the model's speed)."""
    width, height = round(8.5 * dpi), round(11 * dpi)
    pages = []
    for p in range(n):
        image = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(image)
        for row in range(40):
            y = dpi + row * (height - 2 * dpi) // 40
            draw.text((dpi, y), f"row {row} county {p} permits {row * 1234 + p}", fill="black")
            draw.line((dpi, y + 14, width - dpi, y + 14), fill="gray")
        pages.append(image)
    return pages


def build(tiny: bool, device: torch.device, dtype: torch.dtype, max_visual_tokens: int):
    """(model, processor): random ColQwen2 (2B architecture, or the tests' tiny one)."""
    from colpali_engine.models import ColQwen2, ColQwen2Processor
    from transformers import Qwen2VLConfig

    from tests.tiny_models import (
        build_tiny_processor_parts,
        build_tiny_qwen2vl_config,
        build_tiny_tokenizer,
    )

    tokenizer = build_tiny_tokenizer()
    if tiny:
        config = build_tiny_qwen2vl_config(tokenizer)
    else:
        from generation import QWEN2_VL_2B  # the published config, kept in one place

        # Same architecture; special-token ids point into the small tokenizer's vocabulary.
        ids = {
            "bos_token_id": "<|endoftext|>",
            "eos_token_id": "<|im_end|>",
            "vision_start_token_id": "<|vision_start|>",
            "vision_end_token_id": "<|vision_end|>",
            "vision_token_id": "<|vision_pad|>",
            "image_token_id": "<|image_pad|>",
            "video_token_id": "<|video_pad|>",
        }
        config = Qwen2VLConfig(
            **{**QWEN2_VL_2B, **{k: tokenizer.convert_tokens_to_ids(t) for k, t in ids.items()}}
        )
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # allocate in the target dtype: no float32 copy of 2B weights
    try:
        with device:
            model = ColQwen2(config).eval()
    finally:
        torch.set_default_dtype(default)
    processor = ColQwen2Processor(**build_tiny_processor_parts(tokenizer))
    # What Retriever.load does with PAGERAG_MAX_VISUAL_TOKENS (one token = 28x28 pixels).
    processor.image_processor.size["longest_edge"] = max_visual_tokens * 28 * 28
    processor.image_processor.max_pixels = None
    return model, processor


def flops_per_page(config: Any, patches: int, tokens: int) -> float:
    """Forward FLOPs (2 per multiply-add) of one page: vision tower over `patches` patches,
    then the language model over `tokens` tokens (image tokens + prompt)."""
    v = config.vision_config
    d, layers = v.embed_dim, v.depth
    per_patch = 2 * (4 * d * d + 2 * v.mlp_ratio * d * d) + 4 * patches * d  # proj, MLP, attn
    text = config.text_config if hasattr(config, "text_config") else config
    merger = 2 * (4 * d * 4 * d + 4 * d * text.hidden_size)  # MLP per merged token (2x2)
    vision = layers * patches * per_patch + (patches // 4) * merger
    h, inter = text.hidden_size, text.intermediate_size
    kv = h * text.num_key_value_heads // text.num_attention_heads
    per_token = 2 * (2 * h * h + 2 * h * kv + 3 * h * inter) + 4 * tokens * h
    return float(vision + text.num_hidden_layers * tokens * per_token)


def time_pages(retriever: Retriever, pages: Sequence[Image.Image], device: torch.device) -> float:
    """Seconds to embed `pages` (after a warm-up batch)."""
    retriever.embed_pages(pages[: retriever.batch_size])
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    retriever.embed_pages(pages)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny config: check the script")
    parser.add_argument("--dtypes", default=None, help="default: bfloat16,float16 on CUDA")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32")
    parser.add_argument("--pages", type=int, default=64, help="pages per measurement")
    parser.add_argument("--max-visual-tokens", type=int, default=768)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(
            "--device cuda: no CUDA GPU here (use --device cpu --tiny to check the script)"
        )
    dtypes = (args.dtypes or ("bfloat16,float16" if device.type == "cuda" else "float32")).split(
        ","
    )
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    images = letter_pages(max(args.pages, max(batch_sizes)))
    result: dict[str, Any] = {
        "model": "ColQwen2, "
        + ("tiny test config" if args.tiny else "Qwen2-VL-2B architecture")
        + ", random weights",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "max_visual_tokens": args.max_visual_tokens,
        "page_size_px": list(images[0].size),
        "machine": machine(),
        "torch": torch.__version__,
    }
    runs = []
    best: dict[str, Any] | None = None
    for name in dtypes:
        dtype = getattr(torch, name)
        log(f"building the model in {name} on {device}")
        model, processor = build(args.tiny, device, dtype, args.max_visual_tokens)
        retriever = Retriever(
            model, processor, model_id="random", revision=None, device=device, dtype=dtype
        )
        sample = processor.process_images(images[:1])
        t, h, w = (int(x) for x in sample["image_grid_thw"][0])
        patches, tokens = t * h * w, int(sample["input_ids"].shape[1])
        flops = flops_per_page(model.config, patches, tokens)
        result |= {"patches_per_page": patches, "tokens_per_page": tokens}
        result["tflop_per_page"] = round(flops / 1e12, 3)
        for batch in batch_sizes:
            retriever.batch_size = batch
            try:
                seconds = time_pages(retriever, images[: args.pages], device)
            except torch.OutOfMemoryError:
                runs.append({"dtype": name, "batch_size": batch, "error": "out of memory"})
                torch.cuda.empty_cache()
                break
            except EmbeddingError as exc:  # random weights can overflow float16
                runs.append({"dtype": name, "batch_size": batch, "error": str(exc)[:200]})
                break
            rate = args.pages / seconds
            run = {
                "dtype": name,
                "batch_size": batch,
                "pages_per_s": round(rate, 2),
                "achieved_tflops": round(rate * flops / 1e12, 1),
            }
            if device.type == "cuda":
                run["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
                torch.cuda.reset_peak_memory_stats()
            log(f"  {run}")
            runs.append(run)
            if best is None or rate > best["pages_per_s"]:
                best = run
        retriever.batch_size = 1
        try:
            retriever.embed_query(QUESTIONS[0])  # warm-up
            times = []
            for q in QUESTIONS * 5:
                started = time.perf_counter()
                retriever.embed_query(q)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - started)
            result.setdefault("query_latency", {})[name] = latency_ms(times)
        except EmbeddingError as exc:
            result.setdefault("query_latency", {})[name] = {"error": str(exc)[:200]}
        del model, processor, retriever
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result["runs"] = runs
    if best is not None:
        result["best"] = best
        result["pages_per_s"] = best["pages_per_s"]
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in result["device"]), None)
        if peak is not None:
            result["peak_bf16_tflops"] = peak
            result["hardware_limit_pages_per_s"] = round(peak * 1e12 / (flops or 1), 1)
            result["fraction_of_peak"] = round(best["achieved_tflops"] / peak, 3)
    return result


if __name__ == "__main__":
    import sys

    emit(main(sys.argv[1:]), "--json" in sys.argv)
