"""ChatTemplate: the transformers-like sandbox, and loading [chat] template."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import pytest

from rkstream.chat.template import ChatTemplate, load_template
from rkstream.errors import ChatTemplateError, ConfigError, RkstreamError

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\\n' }}{% endif %}")
HI = [{"role": "user", "content": "Hi"}]


def render(source: str, **variables: object) -> str:
    return ChatTemplate(source).render(HI, **variables)  # type: ignore[arg-type]


def test_blocks_are_trimmed_and_stripped_as_in_transformers() -> None:
    source = ("{% for m in messages %}\n    {% if true %}\n[{{ m.content }}]\n"
              "    {% endif %}\n{% endfor %}\n")
    assert render(source) == "[Hi]\n"  # the template's final newline is dropped too


def test_loop_controls_and_the_generation_block() -> None:
    source = ("{% for n in [1, 2, 3, 4] %}{% if n == 2 %}{% continue %}{% endif %}"
              "{% if n == 4 %}{% break %}{% endif %}{{ n }}{% endfor %}"
              "{% generation %}<{{ messages[0].content }}>{% endgeneration %}")
    assert render(source) == "13<Hi>"


def test_tojson_keeps_unicode_and_takes_the_json_dumps_arguments() -> None:
    value = {"b": "é", "a": [1, 2]}
    assert render("{{ v | tojson }}", v=value) == '{"b": "é", "a": [1, 2]}'
    assert render("{{ v | tojson(indent=2, sort_keys=true) }}", v=value) == json.dumps(
        value, ensure_ascii=False, indent=2, sort_keys=True)
    assert render("{{ v | tojson(separators=(',', ':')) }}", v=value) == '{"b":"é","a":[1,2]}'
    assert render("{{ v | tojson(ensure_ascii=true) }}", v="é") == '"\\u00e9"'


def test_special_tokens_default_to_the_templates_own_and_kwargs_override() -> None:
    template = ChatTemplate("{{ bos_token }}|{{ eos_token }}|{{ extra }}",
                            bos_token="<s>", eos_token="</s>")
    assert template.render(HI, extra=1) == "<s>|</s>|1"
    assert template.render(HI, bos_token="", eos_token="E", extra=2) == "|E|2"


def test_strftime_now_is_the_local_date() -> None:
    assert render("{{ strftime_now('%Y-%m-%d') }}") == datetime.now().strftime("%Y-%m-%d")


def test_raise_exception_becomes_a_chat_template_error_with_its_message() -> None:
    template = ChatTemplate("{% if messages[0].role == 'user' %}"
                            "{{ raise_exception('System role not supported') }}{% endif %}")
    with pytest.raises(ChatTemplateError, match="^System role not supported$") as caught:
        template.render(HI)
    assert isinstance(caught.value, RkstreamError) and isinstance(caught.value, ValueError)


def test_the_sandbox_refuses_unsafe_access() -> None:
    # An unsafe attribute is undefined: it prints as nothing and cannot be used further.
    assert render("[{{ ''.__class__ }}]") == "[]"
    with pytest.raises(ChatTemplateError, match="sandbox refused.*unsafe"):
        render("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ChatTemplateError, match="sandbox refused"):
        render("{{ messages.append(1) }}")  # immutable: no changing the inputs
    with pytest.raises(ChatTemplateError, match="sandbox refused"):
        render("{{ messages[0].update(role='system') }}")


def test_a_failing_template_names_the_error() -> None:
    with pytest.raises(ChatTemplateError, match=r"the inline template: rendering failed: "
                                                r"TypeError: .*"):
        render("{{ messages[0].content + 1 }}")


def test_a_template_that_does_not_compile_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^x\.jinja: the chat template does not compile: "
                                          r".*'endfor'.* \(line 1\)"):
        ChatTemplate("{% for m in messages %}", origin="x.jinja")


# Loading


def at(path: Path) -> str:
    """The path as a regular expression, for matching error messages."""
    return re.escape(str(path))


def write_json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


def test_tokenizer_config_with_a_string_template(tmp_path: Path) -> None:
    path = write_json(tmp_path / "tokenizer_config.json", {
        "chat_template": CHATML, "bos_token": "<s>",
        "eos_token": {"content": "<|im_end|>", "lstrip": False, "special": True}})
    template = load_template(str(path))
    assert (template.origin, template.bos_token, template.eos_token) == (
        str(path), "<s>", "<|im_end|>")
    assert template.render(HI) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_tokenizer_config_with_a_list_of_named_templates(tmp_path: Path) -> None:
    path = write_json(tmp_path / "tokenizer_config.json", {"chat_template": [
        {"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": CHATML}]})
    template = load_template(str(path))
    assert template.source == CHATML and template.bos_token == template.eos_token == ""


def test_a_list_without_a_default_names_what_it_has(tmp_path: Path) -> None:
    path = write_json(tmp_path / "tokenizer_config.json",
                      {"chat_template": [{"name": "tool_use", "template": "{{ 1 }}"}]})
    with pytest.raises(ConfigError, match=rf'^{at(path)}: chat_template is a list without a '
                                          rf'"default" template \(names: tool_use\)$'):
        load_template(str(path))


def test_a_jinja_file_takes_the_tokens_of_the_config_beside_it(tmp_path: Path) -> None:
    jinja = tmp_path / "chat_template.jinja"
    jinja.write_text("{{ bos_token }}{{ messages[0].content }}\n", encoding="utf-8")
    template = load_template(str(jinja))
    assert template.origin == str(jinja) and template.render(HI) == "Hi"
    write_json(tmp_path / "tokenizer_config.json", {"bos_token": "<bos>", "eos_token": None})
    template = load_template(str(jinja))
    assert (template.bos_token, template.eos_token) == ("<bos>", "")
    assert template.render(HI) == "<bos>Hi"


def test_a_config_without_the_key_uses_the_jinja_file_beside_it(tmp_path: Path) -> None:
    config = write_json(tmp_path / "tokenizer_config.json", {"eos_token": "<|eot_id|>"})
    with pytest.raises(ConfigError, match=rf"^{at(config)} has no chat_template key, and there is "
                                          r"no chat_template.jinja beside it; \[chat\] template "
                                          r"must be a tokenizer_config.json, a .jinja file, or "
                                          r"the template text itself$"):
        load_template(str(config))
    (tmp_path / "chat_template.jinja").write_text(CHATML, encoding="utf-8")
    template = load_template(str(config))
    assert template.origin == str(tmp_path / "chat_template.jinja")
    assert template.eos_token == "<|eot_id|>"


def test_inline_text_is_the_template_itself() -> None:
    template = load_template(CHATML)
    assert template.origin == "the inline [chat] template" and template.source == CHATML
    assert load_template("{{ messages[0].content }}").render(HI) == "Hi"


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", r"not valid JSON \(Expecting property name enclosed in double quotes at "
                  r"line 1\)"),
    ("[1, 2]", r"expected a JSON object \(a tokenizer_config.json\)"),
    ('{"chat_template": 3}', r"chat_template must be a string or a list of \{name, "
                             r"template\}, not int"),
    ('{"chat_template": "  "}', "chat_template is empty"),
])
def test_bad_configs_say_what_is_wrong(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "tokenizer_config.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{at(path)}: {message}$"):
        load_template(str(path))


def test_missing_empty_and_folder_paths(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "tokenizer_config.json"
    with pytest.raises(ConfigError, match=rf"^{at(missing)}: no such file; \[chat\] template must "
                                          r"be a tokenizer_config.json, a .jinja file"):
        load_template(str(missing))
    empty = tmp_path / "chat_template.jinja"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{at(empty)}: the file is empty$"):
        load_template(str(empty))
    with pytest.raises(ConfigError, match=rf"^{at(tmp_path)} is a folder; name its "
                                          r"chat_template.jinja or tokenizer_config.json$"):
        load_template(str(tmp_path))
    with pytest.raises(ConfigError, match=r"^\[chat\] template is empty"):
        load_template("  ")


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "chat_template.jinja"
    path.write_bytes(b"\xff\xfe{{ x }}")
    with pytest.raises(ConfigError, match=rf"^{at(path)}: not UTF-8 text$"):
        load_template(str(path))


def test_a_loaded_template_that_raises_names_its_message(tmp_path: Path) -> None:
    path = write_json(tmp_path / "tokenizer_config.json", {
        "chat_template": "{% if messages[0].role != 'system' %}"
                         "{{ raise_exception('Conversation must start with a system message') }}"
                         "{% endif %}"})
    template = load_template(str(path))
    with pytest.raises(ChatTemplateError, match="^Conversation must start with a system "
                                                "message$"):
        template.render(HI)
