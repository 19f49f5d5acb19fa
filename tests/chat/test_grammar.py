"""The grammars that make llama.cpp write exactly one tool call."""

from __future__ import annotations

import pytest

from rkstream.chat.grammar import call_grammar
from rkstream.chat.output import HERMES, THINK, Markup

QWEN = Markup(call=HERMES)
LLAMA = Markup(json_call=True, json_call_prefix="<|python_tag|>")


@pytest.mark.parametrize("markup", [QWEN, LLAMA, Markup(call=("<|action_start|><|plugin|>",
                                                               "<|action_end|>"))])
def test_call_grammars_compile(markup: Markup) -> None:
    from llama_cpp.llama_grammar import LlamaGrammar

    grammar = call_grammar(markup, ("get_weather", "add"))
    assert grammar is not None and '"get_weather" | "add"' in grammar
    LlamaGrammar.from_string(grammar, verbose=False)
    schema_rules = 'tool-args ::= "{" space "}" space\nspace ::= " "?'
    LlamaGrammar.from_string(call_grammar(markup, ("add",), schema_rules) or "", verbose=False)


def test_no_call_markup_no_grammar() -> None:
    assert call_grammar(Markup(think=THINK), ("add",)) is None
    assert call_grammar(QWEN, ()) is None
