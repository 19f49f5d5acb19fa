"""What one instance's KV cache holds, as text, and what the next run must send.

A runtime without a tokenizer call (RKLLM) cannot be asked what its cache
holds, so each instance keeps it as text: the rendered prompt it sent plus
the text it generated. A follow-up turn whose rendered conversation extends
that text exactly needs to send only what is new (``keep_history = 1``);
anything else (an edited or regenerated history, another conversation)
clears the cache and sends the whole prompt.

Images are part of the bookkeeping: each ``<image>`` placeholder is keyed by
its image's content, so another image at the same place never matches.

Modes (``rkllm.kv_reuse``):

- ``history``: as above;
- ``runtime``: send the whole prompt with ``keep_history = 0`` every time and
  let the runtime reuse the prefix it still holds (Rockchip's own recipe);
  the text here only estimates how much it reused;
- ``off``: clear before every run; every run is independent.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from rkstream.core.messages import IMAGE_PLACEHOLDER
from rkstream.engines.base import Prompt

KVMode = Literal["history", "runtime", "off"]
_MARK = "\x00"  # never in rendered text or generated text (removed from both)


def kv_mode(value: str) -> KVMode:
    """A checked ``rkllm.kv_reuse`` value."""
    if value not in ("history", "runtime", "off"):
        raise ValueError(f"unknown KV reuse mode {value!r}")
    return value  # type: ignore[return-value]


def common_prefix(a: str, b: str) -> int:
    """The length of the longest common prefix of ``a`` and ``b``."""
    n = min(len(a), len(b))
    lo, hi = 0, n
    while lo < hi:  # binary search on slices: C-speed comparisons for long chats
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def keyed(text: str, image_keys: tuple[str, ...]) -> str:
    """``text`` with each ``<image>`` replaced by a marker naming that image's content."""
    parts = text.replace(_MARK, "").split(IMAGE_PLACEHOLDER)
    out = [parts[0]]
    for i, part in enumerate(parts[1:]):
        key = image_keys[i] if i < len(image_keys) else "?"
        out.append(f"{_MARK}image:{key}{_MARK}{part}")
    return "".join(out)


def _unkeyed(text: str) -> tuple[str, int]:
    """The keyed ``text`` with placeholders back, and how many images it holds."""
    parts = text.split(_MARK)
    images = len(parts) // 2
    return "".join(p if i % 2 == 0 else IMAGE_PLACEHOLDER
                   for i, p in enumerate(parts)), images


@dataclass(frozen=True)
class KVPlan:
    """What one run sends, and how.

    Attributes:
        clear: clear the whole cache before the run.
        keep_history: ``RKLLMInferParam.keep_history`` for the run.
        send: the text to send, with ``<image>`` placeholders.
        first_image: the job's images from this index on go with this run.
        reused: characters of the keyed prompt already in the cache.
        prompt_chars: characters of the whole keyed prompt.
        held_after_prompt: what the cache holds once the prompt is in (keyed).
    """

    clear: bool
    keep_history: bool
    send: str
    first_image: int
    reused: int
    prompt_chars: int
    held_after_prompt: str


class KVText:
    """The text one instance's KV cache holds.

    Args:
        mode: ``history``, ``runtime`` or ``off``.
        end_of_turn_kept: after an answer that ended by itself, the runtime
            keeps its end-of-turn token in the cache (``rkllm.kv_end_of_turn``);
            False means the next turn's text brings it.
        keep_rewritten: when a format rewrites earlier answers, keep the
            cache as it stands instead of prefilling the rewritten history.
    """

    def __init__(self, mode: KVMode, *, end_of_turn_kept: bool = False,
                 keep_rewritten: bool = True) -> None:
        self.mode = mode
        self.end_of_turn_kept = end_of_turn_kept
        self.keep_rewritten = keep_rewritten
        self.held: str | None = ""  # None: unknown (after an error), clear first
        self._answer_start: int | None = None  # where the last generated answer begins
        self._answer = ""

    def match(self, prompt: Prompt, image_keys: tuple[str, ...] = ()) -> int:
        """How many characters of ``prompt`` the cache holds (scheduler affinity)."""
        if self.held is None or self.mode == "off":
            return 0
        return common_prefix(self.held, keyed(prompt.text, image_keys))

    def plan(self, prompt: Prompt, image_keys: tuple[str, ...] = ()) -> KVPlan:
        """Decide what the next run sends for ``prompt``."""
        full = keyed(prompt.text, image_keys)
        held = self.held
        if self.mode == "off" or held is None:
            return self._whole(full, clear=True, keep_history=self.mode == "history")
        if self.mode == "runtime":
            plan = self._whole(full, clear=False, keep_history=False)
            return replace(plan, reused=common_prefix(held, full))
        if full.startswith(held) and held:
            return self._extend(held, full[len(held):], len(full))
        if prompt.rewrites_history and self.keep_rewritten:
            tail = self._after_rewritten_answer(held, full, prompt.end_of_turn)
            if tail is not None:
                # The cache keeps the answer as generated, but later turns render it
                # rewritten: remember the rendering, so they extend it.
                return replace(self._extend(held, tail, len(full)), held_after_prompt=full)
        return self._whole(full, clear=bool(held), keep_history=True)

    def settle(self, plan: KVPlan, generated: str, *, natural_end: bool, failed: bool,
               end_of_turn: str) -> None:
        """Record what reached the cache once the run has ended.

        Args:
            generated: all text the runtime generated, stop sequences included.
            natural_end: the answer ended by itself (not cut by a limit, a
                stop sequence, a cancel or an error).
            failed: the runtime failed: what the cache holds is unknown.
        """
        if failed:
            self.held, self._answer_start = None, None
            return
        answer = generated.replace(_MARK, "")
        held = plan.held_after_prompt + answer
        if natural_end and self.end_of_turn_kept:
            held += end_of_turn
        self.held = held
        self._answer_start = len(plan.held_after_prompt)
        self._answer = answer

    def clear(self) -> None:
        """The cache was cleared outside a run (a chat-template change)."""
        self.held, self._answer_start = "", None

    # -- helpers -----------------------------------------------------------------------
    def _whole(self, full: str, *, clear: bool, keep_history: bool) -> KVPlan:
        send, _ = _unkeyed(full)
        return KVPlan(clear=clear, keep_history=keep_history, send=send, first_image=0,
                      reused=0, prompt_chars=len(full), held_after_prompt=full)

    def _extend(self, held: str, tail: str, prompt_chars: int) -> KVPlan:
        send, _ = _unkeyed(tail)
        _, images_held = _unkeyed(held)
        return KVPlan(clear=False, keep_history=True, send=send, first_image=images_held,
                      reused=prompt_chars - len(tail), prompt_chars=prompt_chars,
                      held_after_prompt=held + tail)

    def _after_rewritten_answer(self, held: str, full: str, end_of_turn: str) -> str | None:
        """The new text after the last answer, if ``full`` differs from the cache only
        inside that answer (the format rewrote it, e.g. without its reasoning)."""
        start = self._answer_start
        if start is None or not end_of_turn or full[:start] != held[:start]:
            return None
        end = full.find(end_of_turn, start)
        if end < 0:
            return None
        shown = full[start:end].strip()
        if not self._answer.rstrip().endswith(shown):
            return None  # the client changed the answer: the cache is stale
        return full[end + len(end_of_turn):] if self.end_of_turn_kept else full[end:]
