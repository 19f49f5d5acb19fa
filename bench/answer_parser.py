"""How much the answer parser delays plain text, and what it costs per token.

Issue 11 asks that text before a tool call streams at once: only characters
that could begin a tag are held, and only until they cannot be, so the extra
delay on plain text is zero tokens. This feeds answers token by token through
:class:`rkstream.chat.output.OutputParser` with tools declared and the Qwen3
markup (``<think>`` and ``<tool_call>``), and counts, for each token, whether
all of its text came out at once (delay 0) or how many tokens later it did.

    python bench/answer_parser.py
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

from rkstream.chat.output import HERMES, THINK, Markup, OutputParser, ReasoningPiece, TextPiece

PROSE = ("The quick brown fox jumps over the lazy dog. " * 40).strip()
CODE = ("for (int i = 0; i < n; i++) { if (a[i] <= b) x = a < b ? a : b; }\n"
         "<div class=\"x\"><p>Hello</p></div> <tool>not a call</tool> <th>cell</th>\n") * 20
CJK = "你好，世界！今天天气很好。🎉 naïve café — ok. " * 30
CALL = ('Let me check that.\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "Zürich", "days": 3}}\n</tool_call>')
QWEN3 = Markup(think=THINK, call=HERMES)


def word_tokens(text: str) -> list[str]:
    """The stand-in's word tokens: a run of non-blanks and the blanks after it."""
    return re.findall(r"\S+\s*|\s+", text)


def char_tokens(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def delays(tokens: list[str]) -> tuple[list[int], float]:
    """For each token, how many tokens later its last character came out; and
    the parser's time per token in microseconds."""
    parser = OutputParser(QWEN3, frozenset({"get_weather"}))
    arrived: list[int] = []  # token index of every character fed
    out = 0  # characters that came out
    done_at: dict[int, int] = {}
    started = time.perf_counter()
    for index, token in enumerate(tokens):
        arrived.extend([index] * len(token))
        for piece in parser.feed(token):
            if isinstance(piece, (TextPiece, ReasoningPiece)):
                for position in range(out, out + len(piece.text)):
                    if position < len(arrived):
                        done_at[arrived[position]] = index
                out += len(piece.text)
    elapsed = time.perf_counter() - started
    end = len(tokens)
    for piece in parser.finish():
        if isinstance(piece, (TextPiece, ReasoningPiece)):
            for position in range(out, out + len(piece.text)):
                if position < len(arrived):
                    done_at[arrived[position]] = end
            out += len(piece.text)
    return [done_at.get(i, i) - i for i in range(len(tokens))], elapsed / len(tokens) * 1e6


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    print("| answer | tokenised as | tokens | delayed tokens | max delay (tokens) | "
          "parser µs/token |")
    print("|---|---|---|---|---|---|")
    for name, text in (("English prose", PROSE), ("code and HTML with '<'", CODE),
                       ("CJK, emoji, accents", CJK)):
        for how, tokens in (("words", word_tokens(text)), ("1 char", char_tokens(text, 1)),
                            ("3 chars", char_tokens(text, 3))):
            runs = [delays(tokens) for _ in range(5)]
            late = runs[0][0]
            cost = statistics.median(r[1] for r in runs)
            print(f"| {name} | {how} | {len(tokens)} | {sum(1 for d in late if d)} | "
                  f"{max(late)} | {cost:.2f} |")
    tokens = char_tokens(CALL, 1)
    late, cost = delays(tokens)
    text_part = len("Let me check that.\n")
    print(f"| text then a tool call | 1 char | {len(tokens)} | "
          f"{sum(1 for d in late[:text_part] if d)} of the {text_part} text tokens | "
          f"{max(late[:text_part])} | {cost:.2f} |")


if __name__ == "__main__":
    main()
