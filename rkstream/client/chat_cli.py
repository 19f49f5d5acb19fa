"""``rkstream chat``: a terminal chat on :class:`rkstream.client.Client`, for a
board reached over SSH (its arguments are in rkstream/cli.py).

- The conversation is kept and sent whole each turn (``/reset`` starts again).
- A line that ends with ``\\`` goes on on the next line (multi-line input).
- Ctrl-C stops the answer; a second Ctrl-C (or one at the prompt, or Ctrl-D) quits.
- After each answer, its tokens, tokens/s and time to the first token go to stderr,
  with the server that answered the first time and whenever it changes.
- Each chat (and each ``/reset``) has a fresh conversation key, so a load balancer
  keeps its turns on the board whose KV cache holds the conversation.
- While the request waits in the server's queue, ``(waiting, N ahead)`` goes to
  stderr (on a terminal, one line rewritten in place).
- ``--image PATH`` (or ``/image PATH``) attaches an image to the next message.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
from pathlib import Path
from typing import Any, TextIO

from rkstream.client.connection import DEFAULT_URL
from rkstream.client.conversation import new_conversation_key
from rkstream.client.errors import RkstreamClientError
from rkstream.client.events import (
    Created,
    Done,
    Queued,
    ReasoningDelta,
    Started,
    TextDelta,
    ToolCall,
    image_part,
)
from rkstream.client.sync import Client

HELP = ("commands: /reset (forget the conversation), /image PATH (attach to the next "
        "message), /quit; end a line with \\ to go on on the next line; Ctrl-C stops the "
        "answer, a second one quits")


class _Quit(Exception):
    pass


class Chat:
    """One terminal session: reads turns from ``stdin``, streams answers to ``out``."""

    def __init__(self, client: Client, args: argparse.Namespace, stdin: TextIO,
                 out: TextIO, err: TextIO) -> None:
        self.client = client
        self.args = args
        self.stdin, self.out, self.err = stdin, out, err
        self.tty = stdin.isatty()
        self.err_tty = err.isatty()
        self.history: list[dict[str, Any]] = []
        self.images: list[str] = []
        self.server: str | None = None  # the server named in the last stats line
        self.waiting = ""  # the "(waiting...)" status shown, if any

    def run(self) -> int:
        if self.tty:
            try:
                import readline  # noqa: F401 - line editing and ↑ history for input()
            except ImportError:
                pass
        for path in self.args.image:
            self.attach(path)
        while True:
            try:
                text = self.read_turn()
            except KeyboardInterrupt:
                self.err.write("\n")
                return 130
            except EOFError:
                return 0
            if text is None:
                return 0
            try:
                if text.startswith("/"):
                    self.command(text)
                else:
                    self.turn(text)
            except _Quit:
                return 0
            except KeyboardInterrupt:  # the second Ctrl-C, while the answer stopped
                self.err.write("\n")
                return 130
            except RkstreamClientError as exc:
                self.err.write(f"rkstream: {exc.code}: {exc.message}\n")

    def read_turn(self) -> str | None:
        """One message; lines ending with a backslash go on. None at the end of input."""
        lines: list[str] = []
        while True:
            if self.tty:
                line = input("… " if lines else "you> ")
            else:
                line = self.stdin.readline()
                if not line:
                    return "\n".join(lines) if lines else None
                line = line.rstrip("\n")
            if line.endswith("\\"):
                lines.append(line[:-1])
                continue
            lines.append(line)
            text = "\n".join(lines)
            if text.strip():
                return text
            lines = []

    def command(self, text: str) -> None:
        name, _, rest = text.partition(" ")
        if name in ("/quit", "/exit"):
            raise _Quit
        if name == "/reset":
            self.history.clear()
            self.client.new_conversation()  # a new key: the balancer may pick another board
            self.err.write("(the conversation is forgotten)\n")
        elif name == "/image" and rest.strip():
            self.attach(rest.strip())
        else:
            self.err.write(HELP + "\n")

    def attach(self, path: str) -> None:
        self.images.append(self.client.upload_image(Path(path).expanduser()))
        self.err.write(f"(image {path} attached to the next message)\n")

    def turn(self, text: str) -> None:
        content: Any = text
        if self.images:
            content = [image_part(i) for i in self.images] + [{"type": "text", "text": text}]
            self.images = []
        self.history.append({"role": "user", "content": content})
        params: dict[str, Any] = {}
        if self.args.max_tokens is not None:
            params["max_tokens"] = self.args.max_tokens
        if self.args.temperature is not None:
            params["temperature"] = self.args.temperature
        stream = self.client.stream(self.history, model=self.args.model, **params)
        stopped = False
        done: Done | None = None
        try:
            while done is None:
                try:
                    event = stream.next(0.1)
                    self.show(event)
                    done = event if isinstance(event, Done) else None
                except queue.Empty:
                    continue
                except StopIteration:
                    break
                except KeyboardInterrupt:
                    if stopped:
                        raise
                    stopped = True  # the first Ctrl-C stops the answer; wait for its end
                    stream.cancel()
        except RkstreamClientError:
            self.wait_status(None)
            self.history.pop()
            self.out.write("\n")
            raise
        self.wait_status(None)
        self.out.write("\n")
        self.out.flush()
        self.history.append({"role": "assistant", "content": stream.text})
        if done is not None:
            self.stats(done, stopped)

    def show(self, event: Any) -> None:
        if isinstance(event, (Created, Queued)):
            ahead = event.queue_position
            self.wait_status(f"(waiting, {ahead} ahead)" if ahead > 0 else None)
            return
        if isinstance(event, (Started, TextDelta, ReasoningDelta, ToolCall, Done)):
            self.wait_status(None)
        if isinstance(event, TextDelta):
            self.out.write(event.text)
            self.out.flush()
        elif isinstance(event, ReasoningDelta) and self.tty:
            self.out.write(f"\x1b[2m{event.text}\x1b[0m")
            self.out.flush()
        elif isinstance(event, ToolCall):
            self.out.write(f"\n[tool call {event.name}({event.arguments})]")

    def wait_status(self, text: str | None) -> None:
        """Show the queue status (None: clear it); on a terminal, in place."""
        if text == (self.waiting or None):
            return
        if self.err_tty:
            self.err.write("\r\x1b[K" + (text or ""))
        elif text:
            self.err.write(text + "\n")
        self.waiting = text or ""
        self.err.flush()

    def stats(self, done: Done, stopped: bool) -> None:
        timings = done.timings
        parts = [f"{done.usage.output_tokens} tokens"]
        if timings.predicted_per_second:
            parts.append(f"{timings.predicted_per_second:.1f} tokens/s")
        if timings.ttft_ms is not None:
            parts.append(f"first token {timings.ttft_ms:.0f} ms")
        status = " (stopped)" if stopped else (
            f" ({done.status})" if done.status != "completed" else "")
        server = ""
        if done.server_id is not None and done.server_id != self.server:
            server = f"; server {done.server_id}" + (
                f" (was {self.server})" if self.server is not None else "")
            self.server = done.server_id
        self.err.write(f"[{', '.join(parts)}{status}{server}]\n")
        self.err.flush()


def chat_command(args: argparse.Namespace) -> int:
    """Run ``rkstream chat``; the exit code (130 when a second Ctrl-C quit)."""
    client: Client | None = None
    try:
        client = Client(args.url or DEFAULT_URL,
                        api_key=args.key or os.environ.get("RKSTREAM_API_KEY"),
                        conversation=new_conversation_key())
        if args.system:
            client.update_session(instructions=args.system)
        session = client.session
        if session is not None and sys.stdin.isatty():
            print(f"rkstream chat: {session.model.id} on {client.aio.url} ({HELP})",
                  file=sys.stderr)
        return Chat(client, args, sys.stdin, sys.stdout, sys.stderr).run()
    except RkstreamClientError as exc:
        print(f"rkstream chat: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if client is not None:
            client.close()
