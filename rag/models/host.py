"""`ModelHost`: the loaded retriever and answer writer, shared by every library that uses them.

One process serves many libraries (rag/libraries.py) with one GPU: libraries whose model
settings agree share one host, so a model is loaded (and downloaded) once, and every host of
the process shares one device lock, so model calls never overlap on the device.
"""

from __future__ import annotations

import threading
from typing import Any

from rag.config import Settings
from rag.errors import UserError
from rag.models.download import DOWNLOADS
from rag.models.loading import ModelDownloading
from rag.models.protocols import AnswerWriter, PageRetriever

MODELS = ("retriever", "generator")

# The settings a loaded model depends on: libraries that agree on these share it.
RETRIEVER_SETTINGS = (
    *("retriever_model", "retriever_revision", "device", "dtype", "max_visual_tokens"),
    "batch_size",
)
GENERATOR_SETTINGS = (
    *("generator_model", "generator_revision", "device", "dtype", "answer_url"),
    *("answer_timeout", "gen_min_pixels", "gen_max_pixels", "max_new_tokens", "temperature"),
)


def host_key(settings: Settings) -> tuple[Any, ...]:
    """Equal for two settings whose loaded models can be shared."""
    names = (*RETRIEVER_SETTINGS, *GENERATOR_SETTINGS)
    return tuple(str(getattr(settings, name)) for name in names)


class ModelHost:
    """Loads the retriever and the generator once, on first use. A caller that finds the
    other thread downloading one is not kept waiting for gigabytes (`ModelDownloading`); a
    failed load keeps its one-line reason until a load succeeds."""

    def __init__(
        self,
        settings: Settings,
        *,
        retriever: PageRetriever | None = None,
        generator: AnswerWriter | None = None,
        device_lock: threading.Lock | None = None,
    ) -> None:
        self.settings = settings
        self.models: dict[str, Any] = {"retriever": retriever, "generator": generator}
        # One model call at a time on the device (one GPU, many callers, many libraries).
        self.lock = device_lock or threading.Lock()
        # Loading is not a model call: a lock per model, so one serves while the other loads.
        self._load_locks = {name: threading.Lock() for name in MODELS}
        self.loading: set[str] = set()
        self.errors: dict[str, str] = {}  # model -> why its last load failed, one line
        self.loaded_here: set[str] = set()  # loaded from settings (not given to the host)

    def loaded(self, which: str) -> Any:
        """The model if loaded, else None (never loads)."""
        return self.models[which]

    def set(self, which: str, model: Any) -> None:
        self.models[which] = model
        self.errors.pop(which, None)

    def get(self, which: str) -> Any:
        """The model, loaded now if needed (see the class)."""
        if self.models[which] is None:
            self._load(which)
        return self.models[which]

    def _load(self, which: str) -> None:
        lock = self._load_locks[which]
        while not lock.acquire(timeout=0.25):
            if which in self.loading and (refusal := self._downloading(which)):
                raise refusal
        try:
            if self.models[which] is not None:  # loaded while this caller waited
                return
            self.loading.add(which)
            try:
                if which == "retriever":
                    from rag.models.retriever import Retriever

                    model: Any = Retriever.load(self.settings)
                else:
                    from rag.models import load_answerer

                    model = load_answerer(self.settings)
            except Exception as exc:
                self.errors[which] = load_reason(exc, which, self.settings)
                raise
            finally:
                self.loading.discard(which)
            self.set(which, model)
            self.loaded_here.add(which)
        finally:
            lock.release()

    def _downloading(self, which: str) -> ModelDownloading | None:
        """The refusal to wait for `which`, if one of its files is being downloaded now."""
        if which == "retriever":
            from rag.models.retriever import SPEC as spec
        else:
            from rag.models.generator import SPEC as spec
        active = [d for d in DOWNLOADS.active() if d.kind == spec.kind]
        if not active:
            return None
        d = active[0]
        meanwhile = (
            "visual and hybrid search work once it is done; text search works now (`--mode text`)"
            if which == "retriever"
            else "answers are written once it is done; finding pages works now (`pagerag search`)"
        )
        return ModelDownloading(
            f"the {spec.kind} model ({d.model_id}) is still downloading from the Hugging Face "
            f"Hub, {d.describe()}; {meanwhile}",
            model_id=d.model_id,
            reason="downloading",
            setting=spec.setting,
        )


def load_reason(exc: Exception, which: str, settings: Settings) -> str:
    """Why a model did not load, on one line; a `ModelLoadError` names the setting to change."""
    if isinstance(exc, UserError):
        return " ".join(str(exc).split())
    model = settings.retriever_model if which == "retriever" else settings.generator_model
    first = (str(exc).strip().splitlines() or [""])[0]
    return (
        f"loading the model '{model}' failed ({type(exc).__name__}: {first}); the server log "
        "has the details"
    )
