"""Golden renders of tool turns: earlier calls as ``tool_calls``, results as ``tool`` turns.

A client sends an assistant's calls back with their arguments as JSON text
(OpenAI) and each result as a ``tool`` message (``tool_call_id`` on OpenAI,
``tool_name`` on Ollama). Each family writes the calls in its own markup and
the results as its model expects (/work/shared/reference/chat_templates.md
sections 1.1, 1.3, 1.4, 1.8, 1.10). The expected strings are written out by
hand; a change of any byte fails here, since the rendered history is what the
KV cache is matched against.
"""

from __future__ import annotations

import json

import pytest

from rkstream.chat.format import ChatFormat
from rkstream.chat.template import ChatTemplate
from rkstream.core.messages import Message, TextPart, ToolCall
from rkstream.core.request import Tool

WEATHER = Tool("get_weather", "Current weather of a city",
               {"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"]})
TIME = Tool("get_time", "", {"type": "object", "properties": {"city": {"type": "string"}}})

SYSTEM = Message("system", (TextPart("You are terse."),))
USER = Message("user", (TextPart("Weather in Paris?"),))
# Arguments as the JSON text an OpenAI client sends (the second one compact).
WEATHER_CALL = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
TIME_CALL = ToolCall("call_2", "get_time", '{"city":"Paris"}')
WEATHER_RESULT = Message("tool", (TextPart('{"temperature": 18}'),),
                         tool_call_id="call_1", tool_name="get_weather")
TIME_RESULT = Message("tool", (TextPart("14:05"),), tool_call_id="call_2", tool_name="get_time")

# Qwen: two calls in one assistant turn, both results.
TWO_CALLS = (SYSTEM, USER, Message("assistant", (), tool_calls=(WEATHER_CALL, TIME_CALL)),
             WEATHER_RESULT, TIME_RESULT)
# The others: one call, one result.
ONE_CALL = (SYSTEM, USER, Message("assistant", (), tool_calls=(WEATHER_CALL,)), WEATHER_RESULT)

QWEN_SYSTEM = (
    "<|im_start|>system\nYou are terse.\n\n"
    "# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "description": "Current weather '
    'of a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, '
    '"required": ["city"]}}}\n'
    '{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", '
    '"properties": {"city": {"type": "string"}}}}}\n'
    "</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n"
    "<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call><|im_end|>\n"
)
# Qwen2.5 and Qwen3 write the same turns: no content line for an empty text,
# each call in <tool_call> with its arguments as an object (the compact text
# re-encoded with json.dumps' separators), both results in one user turn.
QWEN_TURNS = (
    "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
    "<|im_start|>assistant\n"
    "<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
    "</tool_call>\n"
    "<tool_call>\n"
    '{"name": "get_time", "arguments": {"city": "Paris"}}\n'
    "</tool_call><|im_end|>\n"
    "<|im_start|>user\n"
    "<tool_response>\n"
    '{"temperature": 18}\n'
    "</tool_response>\n"
    "<tool_response>\n"
    "14:05\n"
    "</tool_response><|im_end|>\n"
    "<|im_start|>assistant\n"
)
LLAMA3 = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Environment: ipython\n"
    "Cutting Knowledge Date: December 2023\n"
    "Today Date: 26 Jul 2024\n\n"
    "You are terse.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n"
    "Given the following functions, please respond with a JSON for a function call with its "
    "proper arguments that best answers the given prompt.\n\n"
    'Respond in the format {"name": function name, "parameters": dictionary of argument '
    'name and its value}.Do not use variables.\n\n'
    "{\n"
    '    "type": "function",\n'
    '    "function": {\n'
    '        "name": "get_weather",\n'
    '        "description": "Current weather of a city",\n'
    '        "parameters": {\n'
    '            "type": "object",\n'
    '            "properties": {\n'
    '                "city": {\n'
    '                    "type": "string"\n'
    "                }\n"
    "            },\n"
    '            "required": [\n'
    '                "city"\n'
    "            ]\n"
    "        }\n"
    "    }\n"
    "}\n\n"
    "Weather in Paris?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
    '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'
    # The result goes through tojson, as in the official template: text is quoted.
    "<|start_header_id|>ipython<|end_header_id|>\n\n"
    '"{\\"temperature\\": 18}"<|eot_id|>'
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
INTERNLM2 = (
    "<s><|im_start|>system\nYou are terse.<|im_end|>\n"
    "<|im_start|>system name=<|plugin|>\n"
    '[{"name": "get_weather", "description": "Current weather of a city", "parameters": '
    '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]'
    "<|im_end|>\n"
    "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
    "<|im_start|>assistant\n"
    "<|action_start|><|plugin|>\n"
    '{"name": "get_weather", "parameters": {"city": "Paris"}}<|action_end|><|im_end|>\n'
    "<|im_start|>environment name=<|plugin|>\n"
    '{"temperature": 18}<|im_end|>\n'
    "<|im_start|>assistant\n"
)
SMOLLM3 = (
    "<|im_start|>system\n"
    "## Metadata\n\n"
    "Knowledge Cutoff Date: June 2025\n"
    "Today Date: 26 Jul 2024\n"
    "Reasoning Mode: /think\n\n"
    "## Custom Instructions\n\n"
    "You are terse.\n\n"
    "### Tools\n\n"
    "You may call one or more functions to assist with the user query.\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n\n"
    "<tools>\n"
    "{'type': 'function', 'function': {'name': 'get_weather', 'description': 'Current "
    "weather of a city', 'parameters': {'type': 'object', 'properties': {'city': {'type': "
    "'string'}}, 'required': ['city']}}}\n"
    "</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n"
    "<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>\n\n"
    "<|im_end|>\n"
    "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
    "<|im_start|>assistant\n"
    "<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
    "</tool_call><|im_end|>\n"
    # A tool result is a plain user turn, as in SmolLM3's own template.
    '<|im_start|>user\n{"temperature": 18}<|im_end|>\n'
    "<|im_start|>assistant\n"
)

GOLDEN = {
    "qwen2": (TWO_CALLS, (WEATHER, TIME), QWEN_SYSTEM + QWEN_TURNS),
    "qwen3": (TWO_CALLS, (WEATHER, TIME), QWEN_SYSTEM + QWEN_TURNS),
    "llama3": (ONE_CALL, (WEATHER,), LLAMA3),
    "internlm2": (ONE_CALL, (WEATHER,), INTERNLM2),
    "smollm3": (ONE_CALL, (WEATHER,), SMOLLM3),
}


def chat_format(name: str) -> ChatFormat:
    # A fixed date: Llama 3.2 and SmolLM3 write today's date otherwise.
    return ChatFormat.preset(name, variables={"date_string": "26 Jul 2024"})


@pytest.mark.parametrize("name", list(GOLDEN))
def test_tool_calls_and_results_render_in_the_family_markup(name: str) -> None:
    messages, tools, expected = GOLDEN[name]
    assert chat_format(name).render(messages, None, tools=tools) == expected


def test_qwen2_never_encodes_the_arguments_twice() -> None:
    out = chat_format("qwen2").render(TWO_CALLS, None, tools=(WEATHER, TIME))
    assert '\\"city\\"' not in out
    assert '"arguments": "' not in out
    assert '"arguments": {"city": "Paris"}' in out


def test_the_template_gets_arguments_as_an_object_and_the_result_ids() -> None:
    probe = ChatTemplate(
        "{% for m in messages %}{{ m.role }}"
        "{% for c in m.tool_calls or [] %} {{ c.id }} {{ c.type }} {{ c.function.name }} "
        "{{ c.function.arguments is mapping }} {{ c.function.arguments | tojson }}{% endfor %}"
        "{% if m.tool_call_id is defined %} id={{ m.tool_call_id }}{% endif %}"
        "{% if m.name is defined %} name={{ m.name }}{% endif %}"
        "{% if 'tool_calls' in m %} content={{ m.content | tojson }}{% endif %};{% endfor %}")
    no_name = Message("tool", (TextPart("14:05"),), tool_call_id="call_2")
    out = ChatFormat(probe).render((USER, ONE_CALL[2], WEATHER_RESULT, no_name), None)
    assert out.split(";") == [
        "user",
        'assistant call_1 function get_weather True {"city": "Paris"} content=""',
        "tool id=call_1 name=get_weather",
        "tool id=call_2",
        "",
    ]


BROKEN = ToolCall("call_1", "get_weather", '{"city": "Par')


@pytest.mark.parametrize("name", list(GOLDEN))
def test_broken_json_arguments_render_without_raising(name: str) -> None:
    messages = (SYSTEM, USER, Message("assistant", (), tool_calls=(BROKEN,)), WEATHER_RESULT)
    out = chat_format(name).render(messages, None, tools=(WEATHER,))
    assert "get_weather" in out.split("Weather in Paris?")[-1]


def test_broken_arguments_as_each_qwen_template_writes_them() -> None:
    messages = (USER, Message("assistant", (TextPart("Let me check."),), tool_calls=(BROKEN,)),
                WEATHER_RESULT)
    turn = "<|im_start|>assistant\nLet me check.\n<tool_call>\n{}\n</tool_call><|im_end|>\n"
    # Qwen2.5 always applies tojson: the text becomes a JSON string.
    qwen2 = chat_format("qwen2").render(messages, None, tools=(WEATHER,))
    body = '{"name": "get_weather", "arguments": ' + json.dumps(BROKEN.arguments) + "}"
    assert turn.replace("{}", body) in qwen2
    # Qwen3 writes a string as it is.
    qwen3 = chat_format("qwen3").render(messages, None, tools=(WEATHER,))
    assert turn.replace("{}", '{"name": "get_weather", "arguments": {"city": "Par}') in qwen3


def test_llama3_quotes_a_plain_text_result() -> None:
    result = Message("tool", (TextPart("18C"),), tool_call_id="call_1")
    out = chat_format("llama3").render(ONE_CALL[:3] + (result,), None, tools=(WEATHER,))
    assert out.endswith(
        '<|start_header_id|>assistant<|end_header_id|>\n\n'
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'
        '<|start_header_id|>ipython<|end_header_id|>\n\n"18C"<|eot_id|>'
        "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_llama3_writes_each_of_several_calls_as_its_own_turn() -> None:
    messages = (USER, Message("assistant", (TextPart("Checking."),),
                              tool_calls=(WEATHER_CALL, TIME_CALL)))
    out = chat_format("llama3").render(messages, None, tools=(WEATHER, TIME))
    assert out.endswith(
        '<|start_header_id|>assistant<|end_header_id|>\n\n'
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'
        '<|start_header_id|>assistant<|end_header_id|>\n\n'
        '{"name": "get_time", "parameters": {"city": "Paris"}}<|eot_id|>'
        "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_text_before_a_call_is_kept() -> None:
    messages = (USER, Message("assistant", (TextPart("Let me check."),),
                              tool_calls=(WEATHER_CALL,)))
    internlm2 = chat_format("internlm2").render(messages, None, tools=(WEATHER,))
    assert ("<|im_start|>assistant\nLet me check.<|action_start|><|plugin|>\n"
            '{"name": "get_weather", "parameters": {"city": "Paris"}}<|action_end|><|im_end|>\n'
            ) in internlm2
    smollm3 = chat_format("smollm3").render(messages, None, tools=(WEATHER,))
    assert ("<|im_start|>assistant\nLet me check.\n<tool_call>\n"
            '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
            ) in smollm3
