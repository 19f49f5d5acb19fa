"""Compile and render a Jinja2 chat template the way transformers does.

The environment matches ``apply_chat_template``: an immutable sandbox with
``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols`` extension, a
``{% generation %}`` block (used for training masks; rendered as its body),
``tojson`` as ``json.dumps(ensure_ascii=False)`` (default separators, so the
text is byte-identical to what the model saw in training), and the globals
``raise_exception`` and ``strftime_now``.

A template is given as a ``tokenizer_config.json`` (key ``chat_template``), a
``.jinja`` file, or the Jinja text itself (see :func:`load_template`).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from jinja2 import nodes
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from rkstream.errors import ChatTemplateError, ConfigError

_SPEC_HELP = ("[chat] template must be a tokenizer_config.json, a .jinja file, or the "
              "template text itself")


class _GenerationBlock(Extension):
    """Accepts ``{% generation %}...{% endgeneration %}`` and keeps only the body."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> list[nodes.Node]:
        next(parser.stream)  # the tag name itself
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                      separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> NoReturn:
    raise ChatTemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols, _GenerationBlock])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


_ENV = _environment()

# What a template's own code may raise while rendering (a None concatenated to
# a string, an index out of range); each becomes a ChatTemplateError.
_RENDER_ERRORS = (TemplateError, TypeError, ValueError, LookupError, AttributeError,
                  ArithmeticError)


class ChatTemplate:
    """A compiled chat template.

    Attributes:
        source: the Jinja text.
        origin: where it came from, for messages ("/models/x/tokenizer_config.json").
        bos_token: the BOS text passed to the template unless a render gives one.
        eos_token: the EOS text, likewise.

    Raises:
        ConfigError: the text does not compile; the message names the origin and line.
    """

    def __init__(self, source: str, *, origin: str = "the inline template",
                 bos_token: str = "", eos_token: str = "") -> None:
        self.source = source
        self.origin = origin
        self.bos_token = bos_token
        self.eos_token = eos_token
        try:
            self._template = _ENV.from_string(source)
        except TemplateSyntaxError as e:
            raise ConfigError(f"{origin}: the chat template does not compile: {e.message} "
                              f"(line {e.lineno})") from None

    def __repr__(self) -> str:
        return f"ChatTemplate(origin={self.origin!r})"

    def render(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
               tools: list[dict[str, Any]] | None = None, bos_token: str | None = None,
               eos_token: str | None = None, **kwargs: Any) -> str:
        """Render ``messages`` (dicts with ``role`` and ``content``) to the prompt text.

        ``bos_token``/``eos_token`` default to the template's own; extra keyword
        arguments become template variables (``enable_thinking``, ``date_string``)
        and override the special tokens of the same name, as in transformers.

        Raises:
            ChatTemplateError: the template called ``raise_exception``, the
                sandbox refused an operation, or the template failed.
        """
        variables: dict[str, Any] = {
            "bos_token": self.bos_token if bos_token is None else bos_token,
            "eos_token": self.eos_token if eos_token is None else eos_token,
            **kwargs,
        }
        try:
            return self._template.render(messages=messages, tools=tools,
                                         add_generation_prompt=add_generation_prompt,
                                         **variables)
        except ChatTemplateError:
            raise
        except SecurityError as e:
            raise ChatTemplateError(f"{self.origin}: the template sandbox refused: {e}") from None
        except _RENDER_ERRORS as e:
            raise ChatTemplateError(f"{self.origin}: rendering failed: "
                                    f"{type(e).__name__}: {e}") from None


def load_template(spec: str) -> ChatTemplate:
    """Load ``[chat] template``: a file path, or the template text itself.

    - text containing ``{{`` or ``{%`` is the template;
    - a ``.json`` file is a ``tokenizer_config.json`` (or ``chat_template.json``):
      its ``chat_template`` is a string, or a list of ``{name, template}`` of which
      ``default`` is taken; without the key, a ``chat_template.jinja`` beside it is used;
    - any other file is the Jinja text (``chat_template.jinja``).

    BOS and EOS texts come from the ``tokenizer_config.json`` (beside a ``.jinja``
    file) when there is one.

    Raises:
        ConfigError: naming the file and what is wrong with it.
    """
    if "{{" in spec or "{%" in spec:
        return ChatTemplate(spec, origin="the inline [chat] template")
    if not spec.strip():
        raise ConfigError(f"[chat] template is empty; {_SPEC_HELP}")
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(f"{path}: no such file; {_SPEC_HELP}")
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; name its chat_template.jinja or "
                          f"tokenizer_config.json")
    if path.suffix.lower() == ".json":
        return _from_config(path)
    bos, eos = _tokens(path.with_name("tokenizer_config.json"))
    return ChatTemplate(_read_jinja(path), origin=str(path), bos_token=bos, eos_token=eos)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read: {e.strerror}") from None


def _read_jinja(path: Path) -> str:
    text = _read_text(path)
    if not text.strip():
        raise ConfigError(f"{path}: the file is empty")
    return text


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a JSON object (a tokenizer_config.json)")
    return config


def _from_config(path: Path) -> ChatTemplate:
    config = _read_config(path)
    bos, eos = _token(config, "bos_token"), _token(config, "eos_token")
    raw = config.get("chat_template")
    if raw is None:
        # Newer models keep the template in its own file beside the config.
        beside = path.with_name("chat_template.jinja")
        if beside.is_file():
            return ChatTemplate(_read_jinja(beside), origin=str(beside),
                                bos_token=bos, eos_token=eos)
        raise ConfigError(f"{path} has no chat_template key, and there is no "
                          f"chat_template.jinja beside it; {_SPEC_HELP}")
    return ChatTemplate(_pick(path, raw), origin=str(path), bos_token=bos, eos_token=eos)


def _pick(path: Path, raw: object) -> str:
    """The template text out of ``chat_template``: a string, or the list's ``default``."""
    if isinstance(raw, str):
        if not raw.strip():
            raise ConfigError(f"{path}: chat_template is empty")
        return raw
    if isinstance(raw, list):
        named = {entry.get("name"): entry.get("template") for entry in raw
                 if isinstance(entry, dict)}
        template = named.get("default")
        if isinstance(template, str) and template.strip():
            return template
        names = ", ".join(sorted(str(n) for n in named)) or "none"
        raise ConfigError(f"{path}: chat_template is a list without a \"default\" template "
                          f"(names: {names})")
    raise ConfigError(f"{path}: chat_template must be a string or a list of "
                      f"{{name, template}}, not {type(raw).__name__}")


def _token(config: dict[str, Any], key: str) -> str:
    # Special tokens are written as a string or as an AddedToken object.
    value = config.get(key)
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


def _tokens(path: Path) -> tuple[str, str]:
    """BOS and EOS texts of a tokenizer_config.json, if the file is there."""
    if not path.is_file():
        return "", ""
    config = _read_config(path)
    return _token(config, "bos_token"), _token(config, "eos_token")
