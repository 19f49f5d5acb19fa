"""The models this server serves, by name: the top-level model and every
``[models.<name>]`` entry, each with the settings it runs with.

An entry's settings are the top-level ones with the entry's keys laid over
them (its engine section's model and context, its chat format, its vision
encoder), so the engines still see one :class:`Settings` per model.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from rkstream.config import Settings, parsed
from rkstream.config.load import entry_engine
from rkstream.config.settings import ModelEntry
from rkstream.core.keep_alive import FOREVER
from rkstream.errors import ConfigError, RequestError

BUNDLED_NAME = "SmolLM2-135M-Instruct"  # the bundled model's name, when it is not installed


@dataclass(frozen=True)
class ModelSpec:
    """One servable model.

    Attributes:
        name: what requests call it.
        settings: the settings it runs with, as if it were the only model.
        engine: ``rkllm``, ``llamacpp``, or ``auto`` (the top-level model, whose
            engine is chosen when it loads).
        keep_alive_s: seconds it stays loaded after its last request
            (``math.inf`` = kept) unless a request says otherwise.
        default: requests that name no model get this one.
        aliases: more names it answers to (``*`` matches anything).
    """

    name: str
    settings: Settings
    engine: str
    keep_alive_s: float
    default: bool = False
    aliases: tuple[str, ...] = ()  # more names, * matching anything

    @property
    def model_file(self) -> Path | None:
        """The file the model loads from (None: the bundled model is missing)."""
        if self.engine == "rkllm" or (self.engine == "auto" and self.settings.rkllm.model
                                      and self.settings.engine != "llamacpp"):
            return Path(self.settings.rkllm.model) if self.settings.rkllm.model else None
        if self.settings.llamacpp.model:
            return Path(self.settings.llamacpp.model)
        from rkstream.engines.llamacpp.model import bundled_model

        return bundled_model()

    @property
    def encoder_file(self) -> Path | None:
        encoder = self.settings.vision.encoder
        return Path(encoder) if encoder else None

    @property
    def on_npu(self) -> bool:
        """Whether it runs on the RKLLM runtime (so shares the NPU); for auto, the
        configuration's guess before the load decides."""
        return self.engine == "rkllm" or (self.engine == "auto"
                                          and self.settings.engine != "llamacpp"
                                          and bool(self.settings.rkllm.model))

    def size_bytes(self) -> int:
        """What it takes in memory, estimated from its files: the model file once
        per instance (each instance loads its own copy). The encoder is counted
        by the pool, once per file, since models share it."""
        return file_size(self.model_file) * self.settings.instances

    def describe(self) -> dict[str, object]:
        """For ``rkstream config``, ``session.created`` and the model lists."""
        model = self.model_file
        return {"name": self.name, "engine": self.engine,
                "file": str(model) if model is not None else None,
                "vision": self.encoder_file is not None, "default": self.default}


def file_size(path: Path | None) -> int:
    try:
        return os.stat(path).st_size if path is not None else 0
    except OSError:
        return 0


def _stem(path: str) -> str:
    return Path(path).stem


def top_level_name(settings: Settings) -> str:
    """The name the [rkllm]/[llamacpp] model is served under: its file name
    without the extension (as ModelInfo.id)."""
    if settings.engine != "llamacpp" and settings.rkllm.model:
        return _stem(settings.rkllm.model)
    if settings.llamacpp.model:
        return _stem(settings.llamacpp.model)
    from rkstream.engines.llamacpp.model import bundled_model

    bundled = bundled_model()
    return bundled.stem if bundled is not None else BUNDLED_NAME


def entry_settings(top: Settings, name: str, entry: ModelEntry) -> Settings:
    """The settings ``[models.<name>]`` runs with."""
    kind = entry_engine(name, entry)
    chat = replace(top.chat, template=entry.chat_template, family=entry.chat_family)
    vision = replace(top.vision, encoder=entry.vision_encoder,
                     preset=entry.vision_preset or top.vision.preset)
    rkllm, llamacpp = top.rkllm, top.llamacpp
    if kind == "rkllm":
        context = entry.context or rkllm.max_context_len
        if not 32 <= context <= 1 << 17:
            raise ConfigError(f"config: models.{name}.context = {context} is out of range for "
                              "the RKLLM runtime; use 32 to 131072 (0 = rkllm.max_context_len)")
        rkllm = replace(rkllm, model=entry.model, max_context_len=context)
    else:
        llamacpp = replace(llamacpp, model=entry.model, n_ctx=entry.context or llamacpp.n_ctx)
    return replace(top, engine=kind, instances=entry.instances or top.instances, chat=chat,
                   vision=vision, rkllm=rkllm, llamacpp=llamacpp, models={})


class ModelTable:
    """Every servable model by name, in configuration order, the default first.

    Raises:
        ConfigError: two models would be served under one name.
    """

    def __init__(self, settings: Settings) -> None:
        pool = settings.pool
        keep = parsed("pool.keep_alive", pool.keep_alive)
        specs: list[ModelSpec] = []
        default_aliases: tuple[str, ...] = parsed("pool.default_aliases", pool.default_aliases)
        if not pool.default_model:
            specs.append(ModelSpec(top_level_name(settings), replace(settings, models={}),
                                   "auto" if settings.engine == "auto" else settings.engine,
                                   FOREVER, default=True, aliases=default_aliases))
        for name, entry in settings.models.items():
            own = parsed(f"models.{name}.keep_alive", entry.keep_alive)
            default = name == pool.default_model
            # The default model is kept loaded unless its entry says otherwise.
            keep_s = own if own is not None else (FOREVER if default else keep)
            if any(spec.name == name for spec in specs):
                raise ConfigError(
                    f"config: [models.{name}] has the name the [rkllm]/[llamacpp] model is "
                    f"served under ({name!r}, its file name); rename the entry, or set "
                    "pool.default_model to serve only the entries")
            aliases: tuple[str, ...] = parsed(f"models.{name}.aliases", entry.aliases)
            spec = ModelSpec(name, entry_settings(settings, name, entry),
                             entry_engine(name, entry), keep_s, default=default,
                             aliases=aliases + (default_aliases if default else ()))
            specs.insert(0, spec) if default else specs.append(spec)
        self._specs = {spec.name: spec for spec in specs}
        self.default = specs[0]

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def lookup(self, name: str | None) -> ModelSpec | None:
        """The model ``name`` means: exact, then ignoring case and an Ollama
        ``:latest`` tag, then the configured aliases in table order; the default
        for no name."""
        if not name:
            return self.default
        found = self._specs.get(name)
        if found is not None:
            return found
        wanted = _plain(name)
        for spec in self._specs.values():
            if _plain(spec.name) == wanted:
                return spec
        for spec in self._specs.values():
            if any(fnmatch.fnmatchcase(wanted, _plain(alias)) for alias in spec.aliases):
                return spec
        return None

    def find(self, name: str | None) -> ModelSpec:
        """Like :meth:`lookup`, refusing an unknown name.

        Raises:
            RequestError: ``model_not_found``, listing the served names.
        """
        spec = self.lookup(name)
        if spec is None:
            # Ollama's words first ("model 'x' not found"), which its clients know.
            raise RequestError("model_not_found",
                               f"model {name!r} not found; this server serves "
                               + ", ".join(repr(s.name) for s in self) + " (GET /v1/models "
                               "lists them)", param="model")
        return spec


def _plain(name: str) -> str:
    name = name.lower()
    return name[: -len(":latest")] if name.endswith(":latest") else name
