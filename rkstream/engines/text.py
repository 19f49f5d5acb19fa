"""Text plumbing shared by engines: UTF-8 stitching, stop sequences, a token estimate."""

from __future__ import annotations

import codecs
import math

# Without a tokenizer call on RKLLM, text is counted at 3 bytes a token: most
# text runs near 4 (English) and code near 3, so this leaves a margin.
BYTES_PER_TOKEN = 3


def estimate_tokens(text: str) -> int:
    """A generous token count for ``text`` (see BYTES_PER_TOKEN)."""
    return math.ceil(len(text.encode("utf-8")) / BYTES_PER_TOKEN)


class Utf8Stitcher:
    """Joins RKLLM_RUN_WAITING bytes with the following NORMAL step.

    Whether the runtime repeats held bytes in the next NORMAL step is not
    documented, so both behaviours are accepted: a step that starts with the
    held bytes repeats them (they are dropped), a step that does not (it starts
    with UTF-8 continuation bytes) continues them (they are prepended). An
    incremental decoder then emits only complete characters.
    """

    def __init__(self) -> None:
        self._held = b""
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def waiting(self, data: bytes) -> None:
        """Record the bytes of a WAITING step (cumulative or not)."""
        if self._held and data.startswith(self._held):
            self._held = data
        else:
            self._held += data

    def normal(self, data: bytes) -> str:
        """Return the complete characters a NORMAL step makes available."""
        if self._held:
            if not data.startswith(self._held):
                data = self._held + data
            self._held = b""
        return self._decoder.decode(data)

    def flush(self) -> str:
        """End of run: whatever is still held, with U+FFFD for a broken tail."""
        held, self._held = self._held, b""
        return self._decoder.decode(held, final=True)


class StopMatcher:
    """Cuts the text at the first stop sequence.

    Text that might be the start of a stop sequence is held back until the
    next piece shows whether it is; the held text is released by
    :meth:`flush` when the run ends without a match.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False
        self.matched: str | None = None  # the stop sequence that ended the text

    def feed(self, text: str) -> str:
        """Return the text that can be released now."""
        if self.stopped:
            return ""
        if not self._stops:
            return text
        buf = self._pending + text
        hits = [(i, s) for i, s in ((buf.find(s), s) for s in self._stops) if i >= 0]
        if hits:
            at, self.matched = min(hits, key=lambda hit: hit[0])
            self.stopped = True
            self._pending = ""
            return buf[:at]
        keep = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(buf)), keep, -1):
                if buf.endswith(stop[:k]):
                    keep = k
                    break
        self._pending = buf[len(buf) - keep:]
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        pending, self._pending = self._pending, ""
        return "" if self.stopped else pending
