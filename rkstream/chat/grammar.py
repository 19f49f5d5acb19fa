"""Grammars for engines with constrained decoding (llama.cpp): when a request
requires a tool call, the answer is sampled so that it can only be one call,
in the family's own markup, to a declared tool."""

from __future__ import annotations

import json

from rkstream.chat.output import Markup

_JSON_RULES = r'''
object ::= "{" ws ( string ":" ws value ( "," ws string ":" ws value )* )? ws "}"
array ::= "[" ws ( value ( "," ws value )* )? ws "]"
value ::= object | array | string | number | "true" | "false" | "null"
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" hex hex hex hex ) )* "\""
hex ::= [0-9a-fA-F]
number ::= "-"? ( "0" | [1-9] [0-9]* ) ( "." [0-9]+ )? ( [eE] [-+]? [0-9]+ )?
ws ::= " "?
'''


def _gbnf_text(text: str) -> str:
    return json.dumps(text)  # a GBNF literal is a JSON-style string


def call_grammar(markup: Markup, names: tuple[str, ...],
                 arguments_rules: str | None = None) -> str | None:
    """A GBNF grammar that lets the model write exactly one call to one of
    ``names`` in the family's markup, for engines with constrained decoding
    (llama.cpp) when a call is required.

    Args:
        arguments_rules: rules whose ``tool-args`` rule is the arguments (one
            tool's JSON Schema, turned into GBNF by the engine); without them,
            any JSON object.

    None when the family has no call markup.
    """
    if not names:
        return None
    if markup.call is not None:
        opening, closing = markup.call
        key = "parameters" if opening.startswith("<|action_start|>") else "arguments"
        head, middle, tail = opening + '\n{"name": "', f'", "{key}": ', "}\n" + closing
    elif markup.json_call:
        head, middle, tail = '{"name": "', '", "parameters": ', "}"
    else:
        return None
    root = (f"root ::= {_gbnf_text(head)} tool-name {_gbnf_text(middle)} tool-args "
            f"{_gbnf_text(tail)}")
    name = " | ".join(_gbnf_text(n) for n in names)
    rules = arguments_rules or f"tool-args ::= object{_JSON_RULES}"
    return f"{root}\ntool-name ::= {name}\n{rules.strip()}\n"
