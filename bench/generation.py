"""Answer generation speed: time to first token and tokens per second, 3 pages per question.

    python bench/generation.py [--json]   # CPU, tiny random Qwen2-VL: pipeline overhead only
    python bench/generation.py --full     # CUDA, full-size Qwen2-VL-2B architecture, random weights

Pages are US-letter pages at the default render resolution (PAGERAG_RENDER_DPI), resized by the
default generator pixel limits and visual-token budget, exactly as `PageRAG.ask` sends them.
Speed does not depend on the weight values, so `--full` builds the published 2B architecture
with random weights (no download) and forces a fixed number of new tokens. Its prompt is
tokenized by the tests' small BPE: the text part (about 700 tokens with it, about 250 with
Qwen's tokenizer) differs from the real prompt's; the 3024 image tokens, which dominate, do not.

`--write` replaces this mode's block in docs/BENCHMARKS.md (between its markers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.tiny_models

from rag.config import Settings  # noqa: E402
from rag.models.generator import Generator  # noqa: E402

QUESTION = "What was the total number of permits in November 2015, and how does it compare?"
N_PAGES = 3

# Qwen/Qwen2-VL-2B-Instruct config.json (published values; the Hub cannot be reached here).
QWEN2_VL_2B = {
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 1536,
    "initializer_range": 0.02,
    "intermediate_size": 8960,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "model_type": "qwen2_vl",
    "num_attention_heads": 12,
    "num_hidden_layers": 28,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {
        "depth": 32,
        "embed_dim": 1280,
        "mlp_ratio": 4,
        "num_heads": 16,
        "in_chans": 3,
        "hidden_size": 1536,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 151936,
}


class Page:
    def __init__(self, n: int, image: Image.Image) -> None:
        self.source, self.page, self.image = "report.pdf", n, image


def letter_pages(dpi: int) -> list[Page]:
    """Text-and-table-like pages of a US-letter PDF rendered at `dpi` (only the size matters)."""
    width, height = round(8.5 * dpi), round(11 * dpi)
    pages = []
    for n in range(1, N_PAGES + 1):
        image = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(image)
        for row in range(40):
            y = dpi + row * (height - 2 * dpi) // 40
            draw.text((dpi, y), f"row {row}  state {n}  permits {row * 1234 + n}", fill="black")
            draw.line((dpi, y + 14, width - dpi, y + 14), fill="gray")
        pages.append(Page(n, image))
    return pages


def tiny_generator(settings: Settings, workdir: Path) -> Generator:
    from tests.tiny_models import build_tiny_generator

    path = build_tiny_generator(workdir / "tiny-generator")
    return Generator.load(settings.model_copy(update={"generator_model": str(path)}))


def full_generator(settings: Settings, device: torch.device) -> Generator:
    """The published 2B architecture with random weights, built on the device in bfloat16."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    from tests.tiny_models import CHAT_TEMPLATE, build_tiny_processor_parts, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    # Same architecture; special-token ids point into the small tokenizer's vocabulary.
    ids = {
        key: tokenizer.convert_tokens_to_ids(token)
        for key, token in {
            "bos_token_id": "<|endoftext|>",
            "eos_token_id": "<|im_end|>",
            "vision_start_token_id": "<|vision_start|>",
            "vision_end_token_id": "<|vision_end|>",
            "vision_token_id": "<|vision_pad|>",
            "image_token_id": "<|image_pad|>",
            "video_token_id": "<|video_pad|>",
        }.items()
    }
    config = Qwen2VLConfig(**{**QWEN2_VL_2B, **ids})
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = Qwen2VLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(default)
    processor = Qwen2VLProcessor(
        **build_tiny_processor_parts(tokenizer), chat_template=CHAT_TEMPLATE
    )
    return Generator(
        model,
        processor,
        model_id="Qwen2-VL-2B architecture, random weights",
        revision=None,
        device=device,
        dtype=dtype,
        min_pixels=settings.gen_min_pixels,
        max_pixels=settings.gen_max_pixels,
        visual_token_budget=settings.visual_token_budget,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
    )


def measure(generator: Generator, pages: list[Page], new_tokens: int, runs: int) -> dict[str, Any]:
    generator.min_new_tokens = generator.max_new_tokens = new_tokens
    generator.answer(QUESTION, pages)  # warm-up: kernels, allocator, lazy imports
    results = [generator.answer(QUESTION, pages) for _ in range(runs)]
    assert all(r.completion_tokens == new_tokens for r in results)

    def median(values: list[float]) -> float:
        return statistics.median(values)

    prepare = median([r.prepare_seconds for r in results])
    ttft = median([r.first_token_seconds for r in results])
    total = median([r.seconds for r in results])
    decode = median([(new_tokens - 1) / (r.seconds - r.first_token_seconds) for r in results])
    return {
        "pages": len(pages),
        "page_pixels": f"{pages[0].image.width}x{pages[0].image.height}",
        "image_tokens": results[0].image_tokens,
        "prompt_tokens": results[0].prompt_tokens,
        "new_tokens": new_tokens,
        "runs": runs,
        "prepare_seconds": round(prepare, 4),
        "first_token_seconds": round(ttft, 4),
        "total_seconds": round(total, 4),
        "decode_tokens_per_second": round(decode, 1),
        "end_to_end_tokens_per_second": round(new_tokens / total, 1),
        # Ratios against the processor/prompt-building time of the same runs.
        "first_token_over_prepare": round(ttft / prepare, 2),
        "total_over_prepare": round(total / prepare, 2),
    }


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    threads, load = torch.get_num_threads(), os.getloadavg()[0]
    # Other work on the machine skews CPU figures: the load average says how much there was.
    return (
        f"{os.cpu_count()}-core {platform.machine()} CPU, {threads} torch threads, no GPU, "
        f"load average {load:.1f} at the end"
    )


def markdown(mode: str, command: str, info: dict[str, Any], figures: dict[str, Any]) -> str:
    f = figures
    return "\n".join(
        [
            f"Command: `{command}`",
            f"Machine: {info['machine']}; torch {info['torch']}, "
            f"transformers {info['transformers']}.",
            f"Model: {info['model']} ({info['dtype']}); pixel limits per page "
            f"{info['gen_min_pixels']}..{info['gen_max_pixels']}, visual-token budget "
            f"{info['visual_token_budget']}.",
            f"Input: {f['pages']} pages of {f['page_pixels']} px -> {f['image_tokens']} image "
            f"tokens ({f['prompt_tokens']} prompt tokens in all), {f['new_tokens']} new tokens "
            f"forced, median of {f['runs']} runs after a warm-up.",
            "",
            "| figure | value |",
            "|---|---|",
            f"| prepare (open images, chat template, processor) | {f['prepare_seconds']:.3f} s |",
            "| time to first token (prepare + vision tower + prefill) | "
            f"{f['first_token_seconds']:.3f} s ({f['first_token_over_prepare']}x prepare) |",
            f"| decode speed after the first token | {f['decode_tokens_per_second']} tokens/s |",
            f"| whole answer | {f['total_seconds']:.3f} s ({f['total_over_prepare']}x prepare, "
            f"{f['end_to_end_tokens_per_second']} tokens/s end to end) |",
        ]
        + (
            [
                "",
                "Pipeline overhead only: the tiny model (hidden size 64) says nothing about the "
                "speed of the 2B model; it shows what the processor, prompt and streaming "
                "thread cost around it.",
            ]
            if mode == "tiny"
            else []
        )
    )


def write_block(mode: str, text: str) -> Path:
    path = ROOT / "docs" / "BENCHMARKS.md"
    start, end = f"<!-- bench/generation.py {mode} -->", f"<!-- /bench/generation.py {mode} -->"
    doc = path.read_text(encoding="utf-8")
    if start not in doc or end not in doc:
        raise SystemExit(f"{path} has no {start} ... {end} block to replace")
    before, rest = doc.split(start, 1)
    _, after = rest.split(end, 1)
    path.write_text(f"{before}{start}\n{text}\n{end}{after}", encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="full-size 2B architecture (GPU)")
    parser.add_argument("--device", default=None, help="default: cuda with --full, else cpu")
    parser.add_argument("--new-tokens", type=int, default=None, help="default: 32 tiny, 128 full")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    parser.add_argument("--write", action="store_true", help="update docs/BENCHMARKS.md")
    args = parser.parse_args()

    import transformers

    mode = "full" if args.full else "tiny"
    device = torch.device(args.device or ("cuda" if args.full else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run --full on a GPU machine (or pass --device cpu)")
    settings = Settings(_env_file=None, device=device.type)  # the defaults, pixel limits included
    with tempfile.TemporaryDirectory() as tmp:
        if args.full:
            generator = full_generator(settings, device)
        else:
            generator = tiny_generator(settings, Path(tmp))
        new_tokens = args.new_tokens or (128 if args.full else 32)
        figures = measure(generator, letter_pages(settings.render_dpi), new_tokens, args.runs)
    info = {
        "mode": mode,
        "machine": machine(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": generator.model_id if args.full else "tiny random Qwen2-VL (tests/tiny_models.py)",
        "dtype": str(generator.dtype).removeprefix("torch."),
        "gen_min_pixels": settings.gen_min_pixels,
        "gen_max_pixels": settings.gen_max_pixels,
        "visual_token_budget": settings.visual_token_budget,
    }
    command = "python bench/generation.py" + (" --full" if args.full else "")
    if args.json:
        print(json.dumps({**info, **figures}, indent=2))
    else:
        print(markdown(mode, command, info, figures))
    if args.write:
        print(f"wrote {write_block(mode, markdown(mode, command, info, figures))}", file=sys.stderr)


if __name__ == "__main__":
    main()
