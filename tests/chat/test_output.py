"""The output parser: text, reasoning and tool calls, split however the tokens fall."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

import pytest

from rkstream.chat.output import (
    HERMES,
    THINK,
    CallArguments,
    CallBegin,
    CallDone,
    Markup,
    OutputParser,
    Piece,
    ReasoningPiece,
    TextPiece,
    held_prefix,
)

QWEN = Markup(call=HERMES)
QWEN3 = Markup(think=THINK, call=HERMES)
LLAMA = Markup(json_call=True, json_call_prefix="<|python_tag|>")
TOOLS = frozenset({"get_weather", "add"})


@dataclass
class Answer:
    text: str = ""
    reasoning: str = ""
    names: list[str] = field(default_factory=list)
    streamed: dict[int, str] = field(default_factory=dict)
    done: list[CallDone] = field(default_factory=list)
    order: list[str] = field(default_factory=list)


def collect(pieces: list[Piece], answer: Answer) -> None:
    for piece in pieces:
        if isinstance(piece, TextPiece):
            answer.text += piece.text
            kind = "text"
        elif isinstance(piece, ReasoningPiece):
            answer.reasoning += piece.text
            kind = "reasoning"
        elif isinstance(piece, CallBegin):
            answer.names.append(piece.name)
            answer.streamed[piece.index] = ""
            kind = "begin"
        elif isinstance(piece, CallArguments):
            answer.streamed[piece.index] += piece.text
            kind = "arguments"
        else:
            answer.done.append(piece)
            kind = "done"
        if not answer.order or answer.order[-1] != kind:
            answer.order.append(kind)


def parse(markup: Markup, chunks: list[str], tools: frozenset[str] = TOOLS,
          thinking_open: bool = False) -> Answer:
    parser = OutputParser(markup, tools, thinking_open=thinking_open)
    answer = Answer()
    for chunk in chunks:
        collect(parser.feed(chunk), answer)
    collect(parser.finish(), answer)
    return answer


def splits(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    out, at = [], 0
    while at < len(text):
        size = rng.randint(1, 4)
        out.append(text[at:at + size])
        at += size
    return out


def every_split(text: str) -> list[list[str]]:
    return [list(text), [text]] + [splits(text, seed) for seed in range(20)]


def test_plain_text_is_never_held() -> None:
    parser = OutputParser(QWEN3, TOOLS)
    for word in ["Hello", " world", ", no", " tags", " here."]:
        assert parser.feed(word) == [TextPiece(word)]


def test_only_what_could_start_a_tag_is_held() -> None:
    parser = OutputParser(QWEN, TOOLS)
    assert parser.feed("a <") == [TextPiece("a ")]
    assert parser.feed("b") == [TextPiece("<b")]  # "<b" cannot start <tool_call>
    assert parser.feed(" <tool") == [TextPiece(" ")]
    assert parser.feed("box>") == [TextPiece("<toolbox>")]
    assert held_prefix("x <tool_c", ("<tool_call>",)) == 7


QWEN_CALL = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": '
             '{"city": "Paris", "unit": "°C \\"x\\" {}"}}\n</tool_call>')


@pytest.mark.parametrize("chunks", every_split(QWEN_CALL))
def test_qwen_call_split_anywhere(chunks: list[str]) -> None:
    answer = parse(QWEN, chunks)
    assert answer.text == "Let me check.\n"
    assert answer.names == ["get_weather"]
    (done,) = answer.done
    assert done.problem is None and done.call.name == "get_weather"
    assert json.loads(done.call.arguments) == {"city": "Paris", "unit": '°C "x" {}'}
    assert answer.streamed[0] == done.call.arguments  # the pieces join to the whole


def test_name_comes_first_and_arguments_stream() -> None:
    parser = OutputParser(QWEN, TOOLS)
    pieces = parser.feed('<tool_call>\n{"name": "add", "arguments": {"a": 1,')
    assert pieces[0] == CallBegin(0, pieces[0].call_id, "add")  # type: ignore[union-attr]
    assert pieces[1] == CallArguments(0, '{"a": 1,')
    assert parser.feed(' "b": 2}') == [CallArguments(0, ' "b": 2}')]


def test_two_calls_and_text_between() -> None:
    text = ('<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>\n'
            '<tool_call>\n{"name": "add", "arguments": {"a": 2}}\n</tool_call>')
    for chunks in every_split(text):
        answer = parse(QWEN, chunks)
        assert [d.call.arguments for d in answer.done] == ['{"a": 1}', '{"a": 2}']
        assert [d.index for d in answer.done] == [0, 1]
        assert answer.text == ""
        assert len({d.call.id for d in answer.done}) == 2


QWEN3_ANSWER = "<think>\nThe user greets.\nSo greet back.\n</think>\n\nHello there!"


@pytest.mark.parametrize("chunks", every_split(QWEN3_ANSWER))
def test_reasoning_then_answer(chunks: list[str]) -> None:
    answer = parse(QWEN3, chunks)
    assert answer.reasoning == "The user greets.\nSo greet back."
    assert answer.text == "Hello there!"
    assert answer.order == ["reasoning", "text"]


@pytest.mark.parametrize("chunks", every_split("Thinking inside.\n</think>\n\nDone."))
def test_an_answer_that_starts_inside_thinking(chunks: list[str]) -> None:
    answer = parse(Markup(think=THINK), chunks, thinking_open=True)
    assert (answer.reasoning, answer.text) == ("Thinking inside.", "Done.")


def test_thinking_then_a_call() -> None:
    text = ('<think>\nNeed weather.\n</think>\n\n<tool_call>\n{"name": "get_weather", '
            '"arguments": {"city": "Oslo"}}\n</tool_call>')
    for chunks in every_split(text):
        answer = parse(QWEN3, chunks)
        assert answer.reasoning == "Need weather."
        assert answer.text == "" and answer.done[0].call.name == "get_weather"


def test_without_tools_the_tags_are_text() -> None:
    answer = parse(QWEN, [QWEN_CALL], tools=frozenset())
    assert answer.text == QWEN_CALL and answer.done == []


@pytest.mark.parametrize("body, problem", [
    ('{"name": "add", "arguments": {"a": 1', "its JSON is broken"),
    ('{"name": "nope", "arguments": {}}', "'nope' is not one of the declared tools"),
    ('[1, 2]', 'it is not a JSON object with a "name"'),
])
def test_bad_calls_are_returned_with_the_problem(body: str, problem: str) -> None:
    answer = parse(QWEN, [f"<tool_call>\n{body}\n</tool_call>"])
    (done,) = answer.done
    assert done.problem == problem
    assert answer.streamed[0] == done.call.arguments


def test_a_call_cut_off_says_so() -> None:
    answer = parse(QWEN, ['<tool_call>\n{"name": "add", "arguments": {"a": 1'])
    (done,) = answer.done
    assert done.call.arguments == '{"a": 1'
    assert done.problem is not None and "ended inside the call" in done.problem


def test_a_complete_call_without_its_close_tag_is_fine() -> None:
    # parallel_tool_calls false stops at the close tag, so it never arrives.
    answer = parse(QWEN, ['<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n'])
    (done,) = answer.done
    assert (done.call.arguments, done.problem) == ('{"a": 1}', None)


def test_arguments_given_as_a_string() -> None:
    answer = parse(QWEN, ['<tool_call>\n{"name": "add", "arguments": "{\\"a\\": 1}"}\n'
                          '</tool_call>'])
    assert answer.done[0].call.arguments == '{"a": 1}' and answer.done[0].problem is None


LLAMA_CALL = '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Rome"}}'


@pytest.mark.parametrize("text", [LLAMA_CALL, LLAMA_CALL[len("<|python_tag|>"):]])
def test_llama_json_call(text: str) -> None:
    for chunks in every_split(text):
        answer = parse(LLAMA, chunks)
        assert answer.text == ""
        assert answer.done[0].call.arguments == '{"city": "Rome"}'


def test_llama_json_that_is_not_a_call_is_text() -> None:
    for chunks in every_split('{"answer": 42}'):
        assert parse(LLAMA, chunks).text == '{"answer": 42}'
    assert parse(LLAMA, ["Sure", ": {}"]).text == "Sure: {}"
