"""Typed settings: defaults, then config.toml, then RKSTREAM_* variables, then CLI.

Each field carries its description and what is allowed, so one definition
documents, validates and sets the default. A bad value is refused at start
with a ConfigError naming the key (``section.key``) and what is allowed.

- :mod:`.values`: how a setting is declared (``opt``) and the parse hooks of
  text settings with a shape of their own (``vision.mean``, origin and key
  lists, the host); :func:`parsed` gives callers their structured value, so
  none of them parses or checks again;
- :mod:`.settings`: the sections and their fields;
- :mod:`.load`: the layers, the checks, ``rkstream config``'s listing and the
  configured vision preset;
- :mod:`.file`: the default config.toml, written from the fields.
"""

from rkstream.config.load import (
    describe_settings,
    load_settings,
    parsed,
    vision_preset,
    with_overrides,
)
from rkstream.config.settings import (
    ENV_KEYS,
    BoardSettings,
    ChatSettings,
    LimitSettings,
    LlamaCppSettings,
    RKLLMSettings,
    SamplingSettings,
    ServerSettings,
    Settings,
    VisionSettings,
)

__all__ = [
    "ENV_KEYS", "BoardSettings", "ChatSettings", "LimitSettings", "LlamaCppSettings",
    "RKLLMSettings", "SamplingSettings", "ServerSettings", "Settings", "VisionSettings",
    "describe_settings", "load_settings", "parsed", "vision_preset", "with_overrides",
]
