"""Golden renders: the exact text every built-in family makes of three conversations.

Each expected string is written out by hand from the formats in
/work/shared/reference/chat_templates.md (section 1), one turn per line. A
change to a template that changes any byte fails here: the rendered history
is what the model reads and what the KV cache is matched against.
"""

from __future__ import annotations

import json

import pytest

from rkstream.chat.format import ChatFormat
from rkstream.chat.presets import FAMILIES
from rkstream.core.messages import ImagePart, Message, TextPart
from rkstream.core.request import Tool

# (a) a system prompt and three user turns
CHAT = (
    Message("system", (TextPart("You are terse."),)),
    Message("user", (TextPart("Hi"),)),
    Message("assistant", (TextPart("Hello!"),)),
    Message("user", (TextPart("What is 2+2?"),)),
    Message("assistant", (TextPart("4"),)),
    Message("user", (TextPart("And 3+3?"),)),
)
# (b) an image, then the question about it
IMAGE = (Message("user", (ImagePart(image_id="img1"), TextPart("What is in this picture?"))),)
# (c) a declared tool, the assistant's call (as rkstream writes it), and its result
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
RESULT = '{"temperature": 18}'
TOOL = (
    Message("system", (TextPart("You are terse."),)),
    Message("user", (TextPart("Weather in Paris?"),)),
    Message("assistant", (TextPart(CALL),)),
    Message("tool", (TextPart(RESULT),)),
)
WEATHER = Tool("get_weather", "Current weather of a city",
               {"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"]})

# ChatML, used by Qwen, InternLM, MiniCPM and SmolLM
CHATML_CHAT = (
    "<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\nHello!<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    "<|im_start|>assistant\n4<|im_end|>\n"
    "<|im_start|>user\nAnd 3+3?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
QWEN_TOOLS = (
    "# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "description": "Current weather '
    'of a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, '
    '"required": ["city"]}}}\n'
    "</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n"
    "<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call><|im_end|>\n"
)
QWEN_TOOL_TURNS = (
    "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
    "<|im_start|>assistant\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    "<|im_end|>\n"
    "<|im_start|>user\n<tool_response>\n"
    '{"temperature": 18}'
    "\n</tool_response><|im_end|>\n"
    "<|im_start|>assistant\n"
)
CHATML_TOOL_ROLE = (
    "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
    "<|im_start|>assistant\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    "<|im_end|>\n"
    '<|im_start|>tool\n{"temperature": 18}<|im_end|>\n'
    "<|im_start|>assistant\n"
)
LLAMA3_SYSTEM = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\n"
    "Today Date: 26 Jul 2024\n\n"
)
SMOLLM3_SYSTEM = (
    "<|im_start|>system\n"
    "## Metadata\n\n"
    "Knowledge Cutoff Date: June 2025\n"
    "Today Date: 26 Jul 2024\n"
    "Reasoning Mode: /think\n\n"
    "## Custom Instructions\n\n"
)
SMOLLM3_THINKING_PERSONA = (
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face. Your role as an "
    "assistant involves thoroughly exploring questions through a systematic thinking process "
    "before providing the final precise and accurate solutions. This requires engaging in a "
    "comprehensive cycle of analysis, summarizing, exploration, reassessment, reflection, "
    "backtracking, and iteration to develop well-considered thinking process. Please structure "
    "your response into two main sections: Thought and Solution using the specified format: "
    "<think> Thought section </think> Solution section. In the Thought section, detail your "
    "reasoning process in steps. Each step should include detailed considerations such as "
    "analysing questions, summarizing relevant findings, brainstorming new ideas, verifying the "
    "accuracy of the current steps, refining any errors, and revisiting previous steps. In the "
    "Solution section, based on various attempts, explorations, and reflections from the "
    "Thought section, systematically present the final solution that you deem correct. The "
    "Solution section should be logical, accurate, and concise and detail necessary steps "
    "needed to reach the conclusion.\n\n"
)
R1_BOS = "<｜begin▁of▁sentence｜>"
R1_EOS = "<｜end▁of▁sentence｜>"

SYSTEM_AND_THREE_TURNS = {
    "qwen2": "<|im_start|>system\nYou are terse.<|im_end|>\n" + CHATML_CHAT,
    "qwen2-vl": "<|im_start|>system\nYou are terse.<|im_end|>\n" + CHATML_CHAT,
    "qwen3": "<|im_start|>system\nYou are terse.<|im_end|>\n" + CHATML_CHAT,
    "llama3": (
        LLAMA3_SYSTEM + "You are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nAnd 3+3?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "gemma": (
        "<bos><start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n"
        "<start_of_turn>model\n4<end_of_turn>\n"
        "<start_of_turn>user\nAnd 3+3?<end_of_turn>\n"
        "<start_of_turn>model\n"
    ),
    "phi3": (
        "<|system|>\nYou are terse.<|end|>\n"
        "<|user|>\nHi<|end|>\n"
        "<|assistant|>\nHello!<|end|>\n"
        "<|user|>\nWhat is 2+2?<|end|>\n"
        "<|assistant|>\n4<|end|>\n"
        "<|user|>\nAnd 3+3?<|end|>\n"
        "<|assistant|>\n"
    ),
    "deepseek-r1": (
        R1_BOS + "You are terse."
        "<｜User｜>Hi"
        "<｜Assistant｜>Hello!" + R1_EOS +
        "<｜User｜>What is 2+2?"
        "<｜Assistant｜>4" + R1_EOS +
        "<｜User｜>And 3+3?"
        "<｜Assistant｜><think>\n"
    ),
    "internlm2": "<s><|im_start|>system\nYou are terse.<|im_end|>\n" + CHATML_CHAT,
    "minicpm": "<|im_start|>system\nYou are terse.<|im_end|>\n" + CHATML_CHAT,
    "smollm2": "<|im_start|>system\nYou are terse.<|im_end|>\n" + CHATML_CHAT,
    # No <|im_end|> after the system block without tools: SmolLM3's own quirk.
    "smollm3": SMOLLM3_SYSTEM + "You are terse.\n\n" + CHATML_CHAT,
}

CHATML_IMAGE = (
    "<|im_start|>user\n<image>What is in this picture?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
IMAGE_TURN = {
    "qwen2": ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
              "assistant.<|im_end|>\n" + CHATML_IMAGE),
    "qwen2-vl": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" + CHATML_IMAGE,
    "qwen3": CHATML_IMAGE,
    "llama3": (
        LLAMA3_SYSTEM + "<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n<image>What is in this picture?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "gemma": (
        "<bos><start_of_turn>user\n<image>What is in this picture?<end_of_turn>\n"
        "<start_of_turn>model\n"
    ),
    "phi3": "<|user|>\n<image>What is in this picture?<|end|>\n<|assistant|>\n",
    "deepseek-r1": R1_BOS + "<｜User｜><image>What is in this picture?<｜Assistant｜><think>\n",
    "internlm2": "<s>" + CHATML_IMAGE,
    "minicpm": CHATML_IMAGE,
    "smollm2": ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                "Hugging Face<|im_end|>\n" + CHATML_IMAGE),
    "smollm3": SMOLLM3_SYSTEM + SMOLLM3_THINKING_PERSONA + CHATML_IMAGE,
}

TOOL_TURN = {
    "qwen2": "<|im_start|>system\nYou are terse.\n\n" + QWEN_TOOLS + QWEN_TOOL_TURNS,
    # Qwen2-VL's template has no tools: the tool result keeps its role.
    "qwen2-vl": "<|im_start|>system\nYou are terse.<|im_end|>\n" + CHATML_TOOL_ROLE,
    "qwen3": "<|im_start|>system\nYou are terse.\n\n" + QWEN_TOOLS + QWEN_TOOL_TURNS,
    "llama3": (
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
        "<|start_header_id|>assistant<|end_header_id|>\n\n" + CALL + "<|eot_id|>"
        # the official template passes a tool result through tojson: a string is quoted
        "<|start_header_id|>ipython<|end_header_id|>\n\n" + json.dumps(RESULT) + "<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    # No tool role and no tools in the template: the result is a user turn.
    "gemma": (
        "<bos><start_of_turn>user\nYou are terse.\n\nWeather in Paris?<end_of_turn>\n"
        "<start_of_turn>model\n" + CALL + "<end_of_turn>\n"
        "<start_of_turn>user\n" + RESULT + "<end_of_turn>\n"
        "<start_of_turn>model\n"
    ),
    "phi3": (
        "<|system|>\nYou are terse.<|end|>\n"
        "<|user|>\nWeather in Paris?<|end|>\n"
        "<|assistant|>\n" + CALL + "<|end|>\n"
        "<|user|>\n" + RESULT + "<|end|>\n"
        "<|assistant|>\n"
    ),
    "deepseek-r1": (
        R1_BOS + "You are terse."
        "<｜User｜>Weather in Paris?"
        "<｜Assistant｜>" + CALL + R1_EOS +
        "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>" + RESULT + "<｜tool▁output▁end｜>"
        "<｜tool▁outputs▁end｜>"
        "<｜Assistant｜><think>\n"
    ),
    "internlm2": (
        "<s><|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>system name=<|plugin|>\n"
        '[{"name": "get_weather", "description": "Current weather of a city", "parameters": '
        '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]'
        "<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n" + CALL + "<|im_end|>\n"
        "<|im_start|>environment name=<|plugin|>\n" + RESULT + "<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "minicpm": "<|im_start|>system\nYou are terse.<|im_end|>\n" + CHATML_TOOL_ROLE,
    "smollm2": "<|im_start|>system\nYou are terse.<|im_end|>\n" + CHATML_TOOL_ROLE,
    "smollm3": (
        SMOLLM3_SYSTEM + "You are terse.\n\n"
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
        "<|im_start|>assistant\n" + CALL + "<|im_end|>\n"
        "<|im_start|>user\n" + RESULT + "<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
}


def chat_format(name: str) -> ChatFormat:
    # A fixed date: Llama 3.2 and SmolLM3 write today's date otherwise.
    return ChatFormat.preset(name, variables={"date_string": "26 Jul 2024"})


def test_every_family_has_its_goldens() -> None:
    for table in (SYSTEM_AND_THREE_TURNS, IMAGE_TURN, TOOL_TURN):
        assert list(table) == list(FAMILIES)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_system_and_three_turns(name: str) -> None:
    fmt = chat_format(name)
    assert fmt.render(CHAT, None) == SYSTEM_AND_THREE_TURNS[name]
    # The same system prompt given as instructions renders the same.
    assert fmt.render(CHAT[1:], "You are terse.") == SYSTEM_AND_THREE_TURNS[name]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_an_image_turn(name: str) -> None:
    assert chat_format(name).render(IMAGE, None) == IMAGE_TURN[name]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_tool_turn(name: str) -> None:
    assert chat_format(name).render(TOOL, None, tools=(WEATHER,)) == TOOL_TURN[name]
