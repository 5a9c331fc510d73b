"""Where a model's files come from: a local directory, or a Hugging Face Hub id fetched once.

Every failure to find the files becomes a `ModelLoadError` that names the model tried and the
setting that fixes it, so the CLI, API and UI can show it as is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.errors import UserError
from rag.models.download import DOWNLOADS

# Enough to load weights, config, tokenizer and processor; never pickles (*.bin) nor other formats.
HUB_FILE_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.tiktoken")
CONFIG_FILE = "config.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"


class ModelLoadError(UserError):
    """A model could not be found or loaded; the message says which setting to change."""

    http_status = 503

    def __init__(
        self, message: str, *, model_id: str = "", reason: str = "", setting: str = ""
    ) -> None:
        super().__init__(message)
        self.model_id = model_id
        self.reason = reason
        self.setting = setting  # the variable that chooses the model, e.g. PAGERAG_RETRIEVER_MODEL


class ModelDownloading(ModelLoadError):
    """Another thread is downloading the model: callers are told so (with the progress)
    instead of waiting for gigabytes; the message says what works meanwhile."""

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "60"}


@dataclass(frozen=True)
class ModelSource:
    """A model's files, on local disk."""

    model_id: str  # as configured: a Hub id or a local path
    path: Path  # local directory holding the files
    revision: str | None  # commit hash when fetched from the Hub, else the configured revision

    @property
    def is_adapter(self) -> bool:
        """A PEFT adapter without its own full config: the weights come from its base model."""
        return (self.path / ADAPTER_CONFIG_FILE).is_file() and not (
            self.path / CONFIG_FILE
        ).is_file()

    def adapter_config(self) -> dict[str, Any]:
        return json.loads((self.path / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class ModelSpec:
    """Which model a loader is after, as its errors name it."""

    setting: str  # the environment variable that chooses the model, e.g. PAGERAG_RETRIEVER_MODEL
    kind: str  # a short description, e.g. "ColQwen2"

    def error(self, model_id: str, reason: str) -> ModelLoadError:
        return ModelLoadError(
            f"Cannot load the {self.kind} model '{model_id}': {reason}. Set {self.setting} to a "
            f"local directory containing a {self.kind} checkpoint, or connect to the internet "
            "once so it can be downloaded from the Hugging Face Hub.",
            model_id=model_id,
            reason=reason,
            setting=self.setting,
        )


def _looks_like_path(model_id: str) -> bool:
    # "org/name" is a Hub id unless it exists on disk; anything else path-shaped is a path.
    return (
        Path(model_id).is_absolute()
        or model_id.startswith((".", "~"))
        or "\\" in model_id
        or model_id.count("/") > 1
    )


def resolve_model_source(model_id: str, revision: str | None, spec: ModelSpec) -> ModelSource:
    """Find `model_id` on disk, downloading it from the Hub (or using the Hub cache) if needed."""
    local = Path(model_id).expanduser()
    if local.exists() or _looks_like_path(model_id):
        if not local.is_dir():
            raise spec.error(model_id, f"the local directory {local} does not exist")
        source = ModelSource(model_id=model_id, path=local.resolve(), revision=revision)
    else:
        source = _from_hub(model_id, revision, spec)
    if (
        not (source.path / CONFIG_FILE).is_file()
        and not (source.path / ADAPTER_CONFIG_FILE).is_file()
    ):
        raise spec.error(
            model_id, f"{source.path} has neither {CONFIG_FILE} nor {ADAPTER_CONFIG_FILE}"
        )
    return source


def _from_hub(model_id: str, revision: str | None, spec: ModelSpec) -> ModelSource:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(model_id)
    except HFValidationError as exc:
        reason = "it is neither an existing local directory nor a Hugging Face Hub id"
        raise spec.error(model_id, reason) from exc
    try:
        # The first run fetches gigabytes: its progress goes to /readyz, the UI and the log.
        with DOWNLOADS.track(model_id, spec.kind) as progress:
            path = snapshot_download(
                model_id,
                revision=revision,
                allow_patterns=[*HUB_FILE_PATTERNS],
                tqdm_class=progress,
            )
    except Exception as exc:  # offline, unreachable, not found, gated: one fix for all
        lines = str(exc).strip().splitlines()
        detail = lines[0].removeprefix("Got: ") if lines else type(exc).__name__
        if isinstance(exc, LocalEntryNotFoundError):  # not cached, and no way to fetch it
            if constants.HF_HUB_OFFLINE:
                reason = (
                    "it is not in the Hugging Face cache and HF_HUB_OFFLINE is set, which "
                    "forbids downloading it (unset HF_HUB_OFFLINE to let it download)"
                )
            else:
                reason = (
                    f"the Hub cannot be reached ({detail}) and it is not in the Hugging Face cache"
                )
        else:
            reason = f"{type(exc).__name__}: {detail}"
        raise spec.error(model_id, reason) from exc
    # The cache lays snapshots out as .../snapshots/<commit hash>.
    return ModelSource(model_id=model_id, path=Path(path), revision=Path(path).name)


def load_checkpoint(
    model_class: Any,
    source: ModelSource,
    device: Any,
    dtype: Any,
    spec: ModelSpec,
    *,
    required: str,
    what: str,
) -> Any:
    """`model_class.from_pretrained` on `source`, refusing a checkpoint that lacks the
    `required` weights: transformers would load it anyway, with those layers random."""
    try:
        model, info = model_class.from_pretrained(
            str(source.path), dtype=dtype, device_map=str(device), output_loading_info=True
        )
    except (OSError, ValueError) as exc:
        raise spec.error(source.model_id, str(exc)) from exc
    if any(k.startswith(required) for k in info.get("missing_keys", ())):
        raise spec.error(source.model_id, f"it is not a {what} checkpoint (no {required} weights)")
    return model.eval()
