"""Tiny random Qwen2-VL family models, saved like the published checkpoints, for offline tests.

Nothing here downloads anything: the tokenizer is trained in-process, the models are random, and
everything is written with `save_pretrained` so tests load it through the production code path.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2VLConfig
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

# Qwen2-VL's special tokens, in the order of the real vocabulary (151643...).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2-VL-Instruct's chat template, so a generator built from the same tokenizer can use
# `apply_chat_template` exactly like the real processor.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = (
    "Describe the image. What is the revenue in 2015? Which table shows the results?",
    "The quick brown fox jumps over the lazy dog. Charts, tables, figures and pages.",
    "user assistant system You are a helpful assistant. Picture Video Page 1 2 3 4 5 6 7 8 9 0",
    "Quarterly report: profit, loss, growth, margin, total, average, percent (%), $ 1,234.56",
)

# Small enough that a page becomes a handful of 28x28 merged patches.
MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 64 * 28 * 28


def build_tiny_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained in-process, with Qwen2-VL's special tokens and chat template."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
    )


def build_tiny_qwen2vl_config(tokenizer: PreTrainedTokenizerFast) -> Qwen2VLConfig:
    """A Qwen2-VL config with hidden size 64, 2 text layers and a 1-block vision tower."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            # head_dim 16 -> 8 rotary frequencies split over (time, height, width).
            "rope_parameters": {"rope_type": "default", "mrope_section": [4, 2, 2]},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": 64,  # the merger's output must match the text hidden size
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def build_tiny_processor_parts(tokenizer: PreTrainedTokenizerFast) -> dict[str, object]:
    """Keyword arguments for Qwen2VLProcessor (or ColQwen2Processor) with small images."""
    return {
        "image_processor": Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS),
        "video_processor": Qwen2VLVideoProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS),
        "tokenizer": tokenizer,
    }


def to_legacy_layout(weights: Path, prefix: str = "") -> None:
    """Rename saved weights to the transformers 4 layout that vidore's checkpoints use.

    transformers 5 names the text tower `language_model.*`; checkpoints published before it
    (vidore/colqwen2-base, the vidore/colqwen2-v1.0 adapter) say `model.*`, and loading must map
    them back. `prefix` is "base_model.model." for a PEFT adapter's weights.
    """
    tensors = load_file(weights)
    old, new = f"{prefix}language_model.", f"{prefix}model."
    renamed = {new + k[len(old) :] if k.startswith(old) else k: v for k, v in tensors.items()}
    save_file(renamed, weights, metadata={"format": "pt"})


def build_tiny_colqwen(out_dir: Path, seed: int = 0, legacy_layout: bool = False) -> Path:
    """A random ColQwen2 and its ColQwen2Processor, saved in colpali-engine's format."""
    from colpali_engine.models import ColQwen2, ColQwen2Processor

    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer()
    ColQwen2(build_tiny_qwen2vl_config(tokenizer)).save_pretrained(out_dir)
    ColQwen2Processor(**build_tiny_processor_parts(tokenizer)).save_pretrained(out_dir)
    if legacy_layout:
        to_legacy_layout(out_dir / "model.safetensors")
    return out_dir


def build_tiny_generator(out_dir: Path, seed: int = 0) -> Path:
    """A random Qwen2VLForConditionalGeneration and its Qwen2VLProcessor (with chat template)."""
    from transformers import Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer()
    config = build_tiny_qwen2vl_config(tokenizer)
    Qwen2VLForConditionalGeneration(config).save_pretrained(out_dir)
    parts = build_tiny_processor_parts(tokenizer)
    Qwen2VLProcessor(**parts, chat_template=CHAT_TEMPLATE).save_pretrained(out_dir)
    return out_dir


def build_tiny_colqwen_adapter(
    base_dir: Path, out_dir: Path, seed: int = 1, legacy_layout: bool = True
) -> Path:
    """A LoRA adapter over `base_dir` with the processor files, like vidore/colqwen2-v1.0.

    LoRA B starts at zero in PEFT; it is filled with noise here so that the adapter visibly changes
    the embeddings (a test can then tell whether it was applied).
    """
    from colpali_engine.models import ColQwen2, ColQwen2Processor
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    base = ColQwen2.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=8,
        lora_alpha=8,
        lora_dropout=0.0,
        init_lora_weights="gaussian",
        bias="none",
        task_type="FEATURE_EXTRACTION",
        target_modules=(
            "(.*(model).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$"
            "|.*(custom_text_proj).*$)"
        ),
    )
    with warnings.catch_warnings():  # peft calls an API transformers 5 deprecated
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
        peft_model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    peft_model.save_pretrained(out_dir)
    adapter_config = out_dir / "adapter_config.json"
    data = json.loads(adapter_config.read_text())
    data["base_model_name_or_path"] = str(base_dir)
    adapter_config.write_text(json.dumps(data, indent=2))
    ColQwen2Processor.from_pretrained(base_dir).save_pretrained(out_dir)
    if legacy_layout:
        to_legacy_layout(out_dir / "adapter_model.safetensors", prefix="base_model.model.")
    return out_dir
