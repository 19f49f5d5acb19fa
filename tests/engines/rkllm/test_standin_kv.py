"""The stand-in runtime's KV cache model, driven directly through ctypes.

lib/README.md ("The KV cache") describes the model: the cache holds bytes
(the effective input of each run, then what it generated), a run with
``keep_history = 1`` prefills only its own bytes, one with ``keep_history = 0``
reuses the prefix it shares with the cache, and ``reply_mode = context``
answers with the FNV-1a 64 digest of the cache, so a test can say what the
cache must hold and check it. Every test runs on both ABI lines.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rkstream.core.embeddings import ImageEmbedding, ImageTags

from conftest import ModelFactory, Records
from helpers import context_reply
from native import Natives

LINES = ("1.3", "1.2")
TAGS = ImageTags("<img>", "</img>", "<pad>")
DEFAULT_PREFIX = "<|im_start|>user\n"
DEFAULT_POSTFIX = "<|im_end|>\n<|im_start|>assistant\n"


def tokens(text: str) -> int:
    """The stand-in's token count of text on its own: its words."""
    return len(text.split())


def common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.encode(), b.encode(), strict=False):
        if x != y:
            break
        n += 1
    return n


@pytest.fixture(params=LINES)
def native(request: pytest.FixtureRequest, standin_libs: dict[str, Path],
           standin_model: ModelFactory, records: Records) -> Iterator[Natives]:
    line = str(request.param)
    with Natives(standin_libs[line], line, standin_model, records.path, tags=TAGS) as natives:
        yield natives


def chatml(*turns: tuple[str, str]) -> str:
    return "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns)


SYSTEM = ("system", "You are a terse assistant. Answer in few words, always.")
OPEN = "<|im_start|>assistant\n"


def test_keep_history_prefills_only_the_new_turn(native: Natives, records: Records) -> None:
    nat = native(reply="x y")
    nat.pass_through()
    turn1 = chatml(SYSTEM, ("user", "hello there")) + OPEN
    first = nat.run(turn1, keep_history=True)
    assert first.text == "x y" and first.prefill_tokens == tokens(turn1)
    kv = turn1 + "x y"
    turn2 = "<|im_end|>\n" + chatml(("user", "and now héllo 世界")) + OPEN
    second = nat.run(turn2, keep_history=True)
    assert second.prefill_tokens == tokens(turn2)
    run1, run2 = records.all("run")[-2:]
    assert (run1["kv_before"], run1["kv_reused"]) == (0, 0)
    assert run1["prefill_bytes"] == len(turn1.encode()) and run1["kv_text_new"] == turn1
    assert run2["kv_before"] == run2["kv_reused"] == len(kv.encode())
    assert run2["prefill_bytes"] == len(turn2.encode()) and run2["kv_text_new"] == turn2
    assert run2["history_tokens"] == tokens(turn1) + 2
    kv += turn2 + "x y"
    end1, end2 = records.all("run_end")[-2:]
    assert end1["kv_after"] == len((turn1 + "x y").encode())
    assert end2["kv_after"] == len(kv.encode())
    assert end2["prefill_tokens"] == tokens(turn2)
    # tokens add up: each run's input words and its generated tokens
    assert end2["kv_tokens_after"] == nat.kv_size() == tokens(turn1) + tokens(turn2) + 4
    assert nat.runtime.functions.rkllm_clear_kv_cache(nat.handle, 0, None, None) == 0
    assert nat.kv_size() == 0 and records.all("clear_kv_cache")[-1]["kv_after"] == 0


def test_default_template_wraps_each_run(native: Natives, records: Records) -> None:
    nat = native()
    result = nat.run("hello there", keep_history=True)
    assert result.text == "Echo: hello there" and result.prefill_tokens == 2
    again = nat.run("and more", keep_history=True)
    assert again.text == "Echo: and more" and again.prefill_tokens == 2
    run1, run2 = records.all("run")[-2:]
    assert run1["kv_text_new"] == DEFAULT_PREFIX + "hello there" + DEFAULT_POSTFIX
    assert run2["kv_text_new"] == DEFAULT_PREFIX + "and more" + DEFAULT_POSTFIX
    assert run2["kv_reused"] == len((run1["kv_text_new"] + "Echo: hello there").encode())
    # template text holds no tokens
    assert nat.kv_size() == 2 + 3 + 2 + 3
    # a new template clears the cache
    nat.pass_through()
    assert nat.kv_size() == 0
    nat.run("hello there", keep_history=True)
    assert records.all("run")[-1]["kv_text_new"] == "hello there"


def test_runtime_reuses_a_shared_prefix(native: Natives, records: Records) -> None:
    nat = native(reply="sure thing")
    nat.pass_through()
    conv1 = chatml(SYSTEM, ("user", "first question")) + OPEN
    nat.run(conv1, keep_history=False)
    conv2 = conv1 + "sure thing<|im_end|>\n" + chatml(("user", "second one")) + OPEN
    second = nat.run(conv2, keep_history=False)
    run = records.all("run")[-1]
    reused = len((conv1 + "sure thing").encode())
    new = conv2.encode()[reused:].decode()
    assert run["kv_before"] == run["kv_reused"] == reused
    assert run["prefill_bytes"] == len(new.encode()) and run["kv_text_new"] == new
    assert second.prefill_tokens == tokens(new)
    # an edited history: only the part before the edit is reused
    conv3 = conv2.replace("first question", "first QUESTION")
    third = nat.run(conv3, keep_history=False)
    run = records.all("run")[-1]
    kv = conv2 + "sure thing"
    cut = common_prefix(kv, conv3)
    new = conv3.encode()[cut:].decode()
    assert run["kv_before"] == len(kv.encode()) and run["kv_reused"] == cut
    assert run["kv_text_new"] == new and third.prefill_tokens == tokens(new)
    assert records.all("run_end")[-1]["kv_after"] == len((conv3 + "sure thing").encode())
    # the same conversation again: only its last word is computed again
    nat.run(conv3, keep_history=False)
    run = records.all("run")[-1]
    assert run["kv_text_new"] == OPEN and run["kv_reused"] == len(conv3.encode()) - len(OPEN)


def test_reuse_can_be_turned_off(native: Natives, records: Records) -> None:
    nat = native(reply="ok", auto_prefix_reuse=0)
    nat.pass_through()
    conv = chatml(SYSTEM, ("user", "question")) + OPEN
    nat.run(conv, keep_history=False)
    result = nat.run(conv + "ok<|im_end|>\n" + chatml(("user", "next")) + OPEN,
                     keep_history=False)
    run = records.all("run")[-1]
    assert run["kv_reused"] == 0 and run["kv_before"] == len((conv + "ok").encode())
    assert result.prefill_tokens == tokens(run["kv_text_new"])
    # a directive turns it back on for one run
    nat.run(conv + "[[auto_prefix_reuse=1]]", keep_history=False)
    assert records.all("run")[-1]["kv_reused"] > 0


@pytest.mark.parametrize("kept", [False, True])
def test_context_reply_proves_what_the_cache_holds(native: Natives, records: Records,
                                                  kept: bool) -> None:
    nat = native(reply_mode="context", end_of_turn="<|im_end|>",
                 kv_keeps_end_of_turn=int(kept))
    nat.pass_through()
    eot = "<|im_end|>" if kept else ""
    turn1 = chatml(SYSTEM, ("user", "hi")) + OPEN
    reply1 = nat.run(turn1, keep_history=True).text
    assert reply1 == context_reply(turn1)
    kv = turn1 + reply1 + eot
    turn2 = ("\n" if kept else "<|im_end|>\n") + chatml(("user", "again")) + OPEN
    reply2 = nat.run(turn2, keep_history=True).text
    kv += turn2
    assert reply2 == context_reply(kv)
    kv += reply2 + eot
    assert records.all("run_end")[-1]["kv_after"] == len(kv.encode())
    # the whole conversation with keep_history = 0: the cache ends up the same
    conv = kv + "\n" + chatml(("user", "third")) + OPEN
    reply3 = nat.run(conv, keep_history=False).text
    assert reply3 == context_reply(conv)
    assert records.all("run")[-1]["kv_reused"] == len(kv.encode())


def test_images_in_the_history(native: Natives, records: Records) -> None:
    nat = native(reply="a cat")
    nat.pass_through()
    image = ImageEmbedding(np.full((4, 16), 0.5, dtype=np.float32), (32, 32))
    conv1 = chatml(SYSTEM, ("user", "<image>what is this?")) + OPEN
    first = nat.run(conv1, keep_history=True, images=(image,))
    assert first.prefill_tokens == tokens(conv1) + 4
    assert nat.kv_size() == tokens(conv1) + 4 + 2
    # a text-only follow-up with keep_history = 1 appends after the image
    follow = "<|im_end|>\n" + chatml(("user", "sure?")) + OPEN
    assert nat.run(follow, keep_history=True).prefill_tokens == tokens(follow)
    # keep_history = 0 never reuses past an image: it is prefilled again
    conv2 = conv1 + "a cat" + follow + "a cat<|im_end|>\n" + chatml(("user", "ok")) + OPEN
    again = nat.run(conv2, keep_history=False, images=(image,))
    run = records.all("run")[-1]
    assert run["kv_reused"] == len(conv1[:conv1.index("<image>")].encode())
    assert again.prefill_tokens == tokens(run["kv_text_new"]) + 4
    assert nat.kv_size() == tokens(conv2) + 4 + 2
