"""The KV bookkeeping: what a run sends, and what the cache holds afterwards."""

from __future__ import annotations

from rkstream.engines.base import Prompt
from rkstream.engines.kv import KVText, common_prefix, keyed

EOT = "<|im_end|>"


def chatml(*turns: str, answer_open: bool = True) -> str:
    """A ChatML conversation: user, assistant, user, ... then the generation prompt."""
    out = ""
    for i, text in enumerate(turns):
        role = "user" if i % 2 == 0 else "assistant"
        out += f"<|im_start|>{role}\n{text}{EOT}\n"
    return out + ("<|im_start|>assistant\n" if answer_open else "")


def prompt(text: str, rewrites: bool = False) -> Prompt:
    return Prompt(text, EOT, rewrites)


def test_common_prefix() -> None:
    assert common_prefix("abcdef", "abcxyz") == 3
    assert common_prefix("", "abc") == 0 and common_prefix("abc", "abc") == 3
    long = "x" * 10_000
    assert common_prefix(long + "a", long + "b") == 10_000


def test_follow_up_sends_only_the_new_turn() -> None:
    kv = KVText("history")
    first = kv.plan(prompt(chatml("hi")))
    assert (first.clear, first.keep_history, first.send) == (False, True, chatml("hi"))
    kv.settle(first, "Hello!", natural_end=True, failed=False, end_of_turn=EOT)
    second = kv.plan(prompt(chatml("hi", "Hello!", "how are you?")))
    assert not second.clear and second.keep_history
    # The end-of-turn did not reach the cache (the default), so it comes first.
    assert second.send == f"{EOT}\n<|im_start|>user\nhow are you?{EOT}\n<|im_start|>assistant\n"
    assert second.reused == len(chatml("hi")) + len("Hello!")


def test_end_of_turn_kept_by_the_runtime() -> None:
    kv = KVText("history", end_of_turn_kept=True)
    first = kv.plan(prompt(chatml("hi")))
    kv.settle(first, "Hello!", natural_end=True, failed=False, end_of_turn=EOT)
    second = kv.plan(prompt(chatml("hi", "Hello!", "more")))
    assert second.send == f"\n<|im_start|>user\nmore{EOT}\n<|im_start|>assistant\n"


def test_a_cut_answer_keeps_exactly_what_was_generated() -> None:
    kv = KVText("history", end_of_turn_kept=True)
    first = kv.plan(prompt(chatml("count")))
    kv.settle(first, "1 2 3", natural_end=False, failed=False, end_of_turn=EOT)
    assert kv.held == chatml("count") + "1 2 3"  # no end-of-turn after a cut


def test_edited_history_clears_and_sends_everything() -> None:
    kv = KVText("history")
    first = kv.plan(prompt(chatml("hi")))
    kv.settle(first, "Hello!", natural_end=True, failed=False, end_of_turn=EOT)
    edited = kv.plan(prompt(chatml("hi", "Something else", "next")))
    assert edited.clear and edited.keep_history
    assert edited.send == chatml("hi", "Something else", "next") and edited.reused == 0


def test_an_error_makes_the_cache_unknown() -> None:
    kv = KVText("history")
    first = kv.plan(prompt(chatml("hi")))
    kv.settle(first, "Hel", natural_end=False, failed=True, end_of_turn=EOT)
    again = kv.plan(prompt(chatml("hi")))
    assert again.clear and again.send == chatml("hi")


def test_images_are_matched_by_content() -> None:
    kv = KVText("history")
    text = "<|im_start|>user\n<image>what is this?<|im_end|>\n<|im_start|>assistant\n"
    first = kv.plan(prompt(text), ("cat",))
    assert first.first_image == 0 and first.send == text
    kv.settle(first, "A cat.", natural_end=True, failed=False, end_of_turn=EOT)
    follow = text + "A cat.<|im_end|>\n<|im_start|>user\n<image>and this?<|im_end|>\n" \
        "<|im_start|>assistant\n"
    same = kv.plan(prompt(follow), ("cat", "dog"))
    assert not same.clear and same.first_image == 1 and same.send.count("<image>") == 1
    other = KVText("history")
    other.settle(other.plan(prompt(text), ("cat",)), "A cat.", natural_end=True,
                 failed=False, end_of_turn=EOT)
    swapped = other.plan(prompt(follow), ("fox", "dog"))  # another first image
    assert swapped.clear and swapped.first_image == 0
    assert keyed("a<image>b", ("k",)) != keyed("a<image>b", ("j",))


def test_rewritten_answer_keeps_the_cache_or_reprefills() -> None:
    generated = "<think>\nthe user greets\n</think>\n\nHello!"
    follow = prompt(chatml("hi", "Hello!", "next"), rewrites=True)
    keep = KVText("history")
    keep.settle(keep.plan(prompt(chatml("hi"), rewrites=True)), generated, natural_end=True,
                failed=False, end_of_turn=EOT)
    plan = keep.plan(follow)
    assert not plan.clear and plan.send.startswith(EOT + "\n<|im_start|>user\nnext")
    # Turn after turn: the rewritten rendering is what later prompts extend.
    keep.settle(plan, generated, natural_end=True, failed=False, end_of_turn=EOT)
    third = keep.plan(prompt(chatml("hi", "Hello!", "next", "Hello!", "last"), rewrites=True))
    assert not third.clear and third.send.startswith(EOT + "\n<|im_start|>user\nlast")
    again = KVText("history", keep_rewritten=False)
    again.settle(again.plan(prompt(chatml("hi"), rewrites=True)), generated,
                 natural_end=True, failed=False, end_of_turn=EOT)
    assert again.plan(follow).clear
    changed = KVText("history")
    changed.settle(changed.plan(prompt(chatml("hi"), rewrites=True)), generated,
                   natural_end=True, failed=False, end_of_turn=EOT)
    assert changed.plan(prompt(chatml("hi", "Bye!", "next"), rewrites=True)).clear


def test_runtime_and_off_modes() -> None:
    runtime = KVText("runtime")
    first = runtime.plan(prompt(chatml("hi")))
    assert (first.clear, first.keep_history) == (False, False)
    runtime.settle(first, "Hello!", natural_end=True, failed=False, end_of_turn=EOT)
    second = runtime.plan(prompt(chatml("hi", "Hello!", "more")))
    assert not second.clear and not second.keep_history
    assert second.send == chatml("hi", "Hello!", "more")  # everything, every time
    assert second.reused == len(chatml("hi")) + len("Hello!")
    off = KVText("off")
    off.settle(off.plan(prompt(chatml("hi"))), "Hello!", natural_end=True, failed=False,
               end_of_turn=EOT)
    plan = off.plan(prompt(chatml("hi", "Hello!", "more")))
    assert plan.clear and not plan.keep_history and plan.reused == 0
    assert off.match(prompt(chatml("hi"))) == 0


def test_match_is_the_held_prefix() -> None:
    kv = KVText("history")
    kv.settle(kv.plan(prompt(chatml("hi"))), "Hello!", natural_end=True, failed=False,
              end_of_turn=EOT)
    assert kv.match(prompt(chatml("hi", "Hello!", "x"))) == len(chatml("hi") + "Hello!")
    assert kv.match(prompt(chatml("other"))) < len(chatml("hi"))
