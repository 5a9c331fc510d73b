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


# -- Other model families (tests/rag/models/test_families.py) ---------------------------------
# Each is the family's own config class with a 2-layer, 64-wide text tower and a 1-block vision
# tower, saved with the family's processor, so `Retriever.load` / `Generator.load` read it the
# way they read a published checkpoint.

# Idefics3-style processors (ColIdefics3 = ColSmol, ColModernVBert) need these as single tokens.
IDEFICS3_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|begin_of_text|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<global-img>",
    "<image>",
    *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
)
# Idefics3-style tiles: 64-pixel tiles of 16-pixel patches (4x4), pixel-shuffled 2x2 into
# 2x2 = 4 tokens; pages resized to 2 tiles on their longest side.
TILE = 64
TILE_TOKENS = 4
# Qwen3-VL's tokens cover 32x32 pixels (16-pixel patches, merged 2x2).
QWEN3_MIN_PIXELS = 4 * 32 * 32
QWEN3_MAX_PIXELS = 64 * 32 * 32


def build_tiny_idefics3_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained in-process, with the Idefics3 processors' special tokens."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(IDEFICS3_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=list(IDEFICS3_TOKENS[1:]),
        model_max_length=32768,
    )


def _qwen_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


def _qwen_text(tokenizer: PreTrainedTokenizerFast, **extra: object) -> dict[str, object]:
    ids = _qwen_ids(tokenizer)
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "mrope_section": [4, 2, 2]},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        **extra,
    }


def _qwen_vision_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    ids = _qwen_ids(tokenizer)
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }


def build_tiny_qwen25vl_config(tokenizer: PreTrainedTokenizerFast) -> object:
    """Qwen2.5-VL: 14-pixel patches, windowed vision attention (one full-attention block)."""
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config=_qwen_text(tokenizer),
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "out_hidden_size": 64,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [0],
        },
        **_qwen_vision_ids(tokenizer),
    )


def _qwen3_vision() -> dict[str, object]:
    return {
        "depth": 1,
        "hidden_size": 32,
        "intermediate_size": 64,
        "out_hidden_size": 64,
        "num_heads": 2,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 64,
    }


def _qwen3_rope() -> dict[str, object]:
    return {"rope_type": "default", "mrope_section": [4, 2, 2], "mrope_interleaved": True}


def build_tiny_qwen3vl_config(tokenizer: PreTrainedTokenizerFast) -> object:
    """Qwen3-VL: 16-pixel patches, DeepStack features from the one vision block."""
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(
        text_config=_qwen_text(tokenizer, head_dim=16, rope_parameters=_qwen3_rope()),
        vision_config={**_qwen3_vision(), "deepstack_visual_indexes": [0]},
        **_qwen_vision_ids(tokenizer),
    )


def build_tiny_qwen35_config(tokenizer: PreTrainedTokenizerFast) -> object:
    """Qwen3.5: one linear-attention (Gated DeltaNet) and one full-attention text layer."""
    from transformers import Qwen3_5Config

    text = _qwen_text(
        tokenizer,
        head_dim=16,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        layer_types=["linear_attention", "full_attention"],
        rope_parameters={**_qwen3_rope(), "partial_rotary_factor": 1.0},
    )
    return Qwen3_5Config(
        text_config=text, vision_config=_qwen3_vision(), **_qwen_vision_ids(tokenizer)
    )


def _tiled_vision() -> dict[str, object]:
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": TILE,
        "patch_size": 16,
    }


def build_tiny_idefics3_config(tokenizer: PreTrainedTokenizerFast) -> object:
    """Idefics3 (SmolVLM's architecture): a Llama text tower, pixel shuffle 2."""
    from transformers import Idefics3Config

    pad = tokenizer.pad_token_id
    return Idefics3Config(
        text_config={
            "model_type": "llama",
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "pad_token_id": pad,
        },
        vision_config=_tiled_vision(),
        scale_factor=2,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=pad,
    )


def build_tiny_modernvbert_config(tokenizer: PreTrainedTokenizerFast) -> object:
    """ModernVBert: a ModernBERT text encoder and a SigLIP vision tower, pixel shuffle 2."""
    from transformers import ModernVBertConfig

    return ModernVBertConfig(
        text_config={
            "model_type": "modernbert",
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 4096,
            "pad_token_id": tokenizer.pad_token_id,
            "global_attn_every_n_layers": 1,
            "local_attention": 16,
        },
        vision_config={"model_type": "siglip_vision_model", **_tiled_vision()},
        pixel_shuffle_factor=2,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )


def _qwen3_processor_parts(tokenizer: PreTrainedTokenizerFast) -> dict[str, object]:
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    limits = {"min_pixels": QWEN3_MIN_PIXELS, "max_pixels": QWEN3_MAX_PIXELS}
    return {
        "image_processor": Qwen2VLImageProcessor(patch_size=16, **limits),
        "video_processor": Qwen3VLVideoProcessor(patch_size=16),
        "tokenizer": tokenizer,
    }


def _tiled_processor_parts(tokenizer: PreTrainedTokenizerFast) -> dict[str, object]:
    from transformers.models.idefics3.image_processing_idefics3 import Idefics3ImageProcessor

    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": 2 * TILE}, max_image_size={"longest_edge": TILE}
    )
    return {"image_processor": image_processor, "tokenizer": tokenizer, "image_seq_len": 4}


def build_tiny_retriever(family: str, out_dir: Path, seed: int = 0) -> Path:
    """A random retriever of `family` (a registry name) and its processor, saved."""
    import colpali_engine.models as colpali

    recipes = {
        "ColQwen2": ("ColQwen2", "ColQwen2Processor", build_tiny_qwen2vl_config),
        "ColQwen2.5": ("ColQwen2_5", "ColQwen2_5_Processor", build_tiny_qwen25vl_config),
        "ColQwen3": ("ColQwen3", "ColQwen3Processor", build_tiny_qwen3vl_config),
        "ColQwen3.5": ("ColQwen3_5", "ColQwen3_5Processor", build_tiny_qwen35_config),
        "ColIdefics3": ("ColIdefics3", "ColIdefics3Processor", build_tiny_idefics3_config),
        "ColModernVBert": (
            "ColModernVBert",
            "ColModernVBertProcessor",
            build_tiny_modernvbert_config,
        ),
    }
    model_name, processor_name, config = recipes[family]
    torch.manual_seed(seed)
    tiled = family in ("ColIdefics3", "ColModernVBert")
    tokenizer = build_tiny_idefics3_tokenizer() if tiled else build_tiny_tokenizer()
    getattr(colpali, model_name)(config(tokenizer)).save_pretrained(out_dir)
    if tiled:
        parts = _tiled_processor_parts(tokenizer)
    elif family in ("ColQwen3", "ColQwen3.5"):
        parts = _qwen3_processor_parts(tokenizer)
    else:
        parts = build_tiny_processor_parts(tokenizer)
    getattr(colpali, processor_name)(**parts).save_pretrained(out_dir)
    return out_dir


def build_tiny_answerer(family: str, out_dir: Path, seed: int = 0) -> Path:
    """A random answerer of `family` (a registry name), its processor and chat template."""
    import transformers

    recipes = {
        "Qwen2-VL": ("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"),
        "Qwen2.5-VL": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"),
        "Qwen3-VL": ("Qwen3VLForConditionalGeneration", "Qwen3VLProcessor"),
    }
    configs = {
        "Qwen2-VL": build_tiny_qwen2vl_config,
        "Qwen2.5-VL": build_tiny_qwen25vl_config,
        "Qwen3-VL": build_tiny_qwen3vl_config,
    }
    model_name, processor_name = recipes[family]
    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer()
    getattr(transformers, model_name)(configs[family](tokenizer)).save_pretrained(out_dir)
    qwen3 = family == "Qwen3-VL"
    parts = _qwen3_processor_parts(tokenizer) if qwen3 else build_tiny_processor_parts(tokenizer)
    processor = getattr(transformers, processor_name)(**parts, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out_dir)
    return out_dir


def build_tiny_adapter(base_dir: Path, out_dir: Path, family: str, seed: int = 1) -> Path:
    """A non-zero LoRA adapter over the retriever in `base_dir`, with the processor files, as
    vidore publishes its retrievers (colSmol-256M over colSmol-256M-base ...)."""
    import colpali_engine.models as colpali
    from peft import LoraConfig, get_peft_model

    names = {"ColIdefics3": ("ColIdefics3", "ColIdefics3Processor", "linear")}
    model_name, processor_name, projection = names[family]
    torch.manual_seed(seed)
    base = getattr(colpali, model_name).from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=4,
        lora_alpha=4,
        lora_dropout=0.0,
        init_lora_weights="gaussian",
        bias="none",
        task_type="FEATURE_EXTRACTION",
        target_modules=f"(.*(text_model).*(q_proj|v_proj).*$|^{projection}$)",
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
    getattr(colpali, processor_name).from_pretrained(base_dir).save_pretrained(out_dir)
    return out_dir
