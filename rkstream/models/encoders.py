"""Vision encoders shared by file: one loaded encoder per (file, preset), counted by
the models that use it, released when the last of them unloads."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from rkstream.config import Settings
from rkstream.models.table import ModelSpec, file_size
from rkstream.vision.service import VisionService

VisionFactory = Callable[[Settings], VisionService]  # blocking: runs off the loop


@dataclass
class _Shared:
    service: VisionService
    users: int
    size: int


class SharedEncoders:
    """The loaded encoders, by (file, preset)."""

    def __init__(self, factory: VisionFactory) -> None:
        self._factory = factory
        self._loaded: dict[tuple[str, str], _Shared] = {}

    @staticmethod
    def _key(settings: Settings) -> tuple[str, str]:
        return settings.vision.encoder, settings.vision.preset

    def used_bytes(self) -> int:
        return sum(shared.size for shared in self._loaded.values())

    def extra_bytes(self, spec: ModelSpec) -> int:
        """What loading ``spec``'s encoder would add (0: none, or already loaded)."""
        if not spec.settings.vision.encoder or self._key(spec.settings) in self._loaded:
            return 0
        return file_size(spec.encoder_file)

    async def take(self, spec: ModelSpec, settings: Settings) -> VisionService:
        """The encoder ``settings`` name, loaded (off the loop) if it is not yet."""
        key = self._key(settings)
        shared = self._loaded.get(key)
        if shared is None:
            loop = asyncio.get_running_loop()
            service = await loop.run_in_executor(None, self._factory, settings)
            shared = self._loaded[key] = _Shared(service, 0, file_size(spec.encoder_file))
        shared.users += 1
        return shared.service

    async def drop(self, vision: VisionService) -> None:
        """One model less uses ``vision``; the last one closes it."""
        for key, shared in list(self._loaded.items()):
            if shared.service is vision:
                shared.users -= 1
                if shared.users <= 0:
                    del self._loaded[key]
                    await vision.close()
                return
