"""Ten-turn conversations: time to first token per turn, with KV-cache reuse and without.

The client keeps the history and sends the whole conversation every turn, as
chat frontends do: a ~1,000-token system prompt, then ten short user turns,
through /v1/chat/completions, streamed. TTFT is the time from sending the
request to the first chunk that carries content.

* ``standin``: the stand-in runtime at a board-like speed (prefill ~340
  tokens/s as a 1.5B w8a8 model on RK3588, ~4 bytes a token; decode 16.7
  tokens/s), rendered as ChatML (``chat.family = qwen2``) with
  ``rkllm.kv_reuse`` = history, runtime and off; then Qwen3, whose format drops
  the reasoning of earlier answers, with ``chat.history_rewrite`` = keep and
  reprefill (the stand-in's reply holds a ``<think>`` block).
* ``cpu``: the CPU engine with the bundled SmolLM2-135M through rkstream, and
  llama-cpp-python's own OpenAI server on the same GGUF, greedy, one after the
  other on the same machine.

    python bench/conversation.py                  # both parts (about 4 minutes)
    python bench/conversation.py --quick          # 4 turns, fewer modes
    python bench/conversation.py --part standin   # or --part cpu; --ws adds /ws
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgpack

from rkstream.engines.llamacpp.model import resolve_model

from common import free_port, wait_ready  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TURN_TIMEOUT_S = 120.0  # one turn; turn 1 on the CPU engine takes ~10 s
DEADLINE_S = 540.0  # the whole benchmark stops here, done or not
QUIET = 0.15  # CPU share used by others below which a CPU-engine run starts

# Board-like stand-in speed: 340 tokens/s at ~4 bytes a token is 1e6 / 1360
# = 735 us a byte; 16.7 tokens/s decode is 60 ms a token (rkllm_perf.md,
# Qwen2.5-1.5B w8a8).
PREFILL_US_PER_BYTE = 735
TOKEN_DELAY_US = 60_000
STANDIN_REPLY = "Noted. I will keep that in mind and plan the next step with you."
THINK_REPLY = ("<think>\nThe traveller added a wish; check it against the rules and "
               "the plan so far.\n</think>\n\n" + STANDIN_REPLY)
# Greedy on both servers, so they generate the same text from the same history.
GREEDY = {"temperature": 0.0, "top_k": 1, "top_p": 1.0, "repeat_penalty": 1.0}

USER_TURNS = (
    "Hi! I want to spend a week in Portugal in May. Where should I start?",
    "I like old towns and good food more than beaches.",
    "We are two adults and travel by train only.",
    "Our budget is about 1,500 euros without flights.",
    "Is Porto worth three nights, or is two enough?",
    "What about a day trip from Lisbon to Sintra?",
    "My partner is vegetarian. Any dishes to look for?",
    "Which days are museums closed, usually?",
    "Please suggest a rough plan for day four.",
    "Thanks! Summarise the whole week in five lines.",
)


def system_prompt(words: int = 760) -> str:
    """A deterministic system prompt of about 1,000 SmolLM2 tokens (~4.3 bytes each)."""
    rng = random.Random(10)
    topics = ("train tickets", "museum hours", "local food", "old town walks", "budgets",
              "hotel choice", "day trips", "weather", "safety", "opening times",
              "regional wine", "festivals", "accessibility", "public holidays")
    actions = ("check", "mention", "compare", "explain", "confirm", "list", "estimate")
    details = ("the price range", "a cheaper option", "the closing day", "the travel time",
               "a quieter alternative", "what to book ahead", "the walking distance",
               "the best time of day", "a rainy-day plan", "what locals recommend")
    out = ["You are Atlas, a careful travel planner for trips in Portugal. Answer in "
           "short, friendly sentences and follow these house rules."]
    count, rule = len(out[0].split()), 1
    while count < words:
        sentence = (f"Rule {rule}: when the traveller asks about {rng.choice(topics)}, "
                    f"{rng.choice(actions)} {rng.choice(details)} and "
                    f"{rng.choice(actions)} {rng.choice(details)}.")
        out.append(sentence)
        count += len(sentence.split())
        rule += 1
    return " ".join(out)


@dataclass
class Turn:
    """One answered turn, as the client saw it."""

    ttft_ms: float
    total_ms: float
    text: str
    prompt_n: int | None  # prompt tokens processed (prefilled) by this turn
    cache_n: int | None  # prompt tokens taken from the KV cache


@dataclass
class Series:
    """The turns of one conversation on one server configuration."""

    name: str
    turns: list[Turn]
    busy: float = 0.0  # CPU share others used just before the run


def _deadline_left(started: float) -> float:
    left = DEADLINE_S - (time.monotonic() - started)
    if left <= 0:
        raise SystemExit("conversation.py: past its time budget; stopping")
    return left


def cpu_busy(seconds: float = 1.0) -> float:
    """The share of all CPUs busy over ``seconds`` (from /proc/stat), 0 to 1."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def wait_quiet(limit_s: float = 60.0) -> float:
    """Wait, at most ``limit_s``, until other processes leave the CPUs alone (on two
    cores one busy process halves llama.cpp's prefill); return the last busy share."""
    deadline = time.monotonic() + limit_s
    busy = cpu_busy()
    while busy > QUIET and time.monotonic() < deadline:
        busy = cpu_busy(2.0)
    return busy


# -- clients -------------------------------------------------------------------------
async def openai_turn(session: aiohttp.ClientSession, base: str, messages: list[dict[str, str]],
                      max_tokens: int) -> Turn:
    """One streamed /v1/chat/completions request."""
    body = {"model": "bench", "messages": messages, "stream": True, "max_tokens": max_tokens,
            "stream_options": {"include_usage": True}, **GREEDY}
    parts: list[str] = []
    timings: dict[str, Any] = {}
    usage: dict[str, Any] = {}
    first = None
    started = time.perf_counter()
    async with session.post(f"{base}/v1/chat/completions", json=body) as response:
        if response.status != 200:
            raise SystemExit(f"HTTP {response.status}: {(await response.text())[:300]}")
        async for raw in response.content:  # one SSE line at a time
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise SystemExit(f"stream error: {chunk['error']}")
            for choice in chunk.get("choices") or ():
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    if first is None:
                        first = time.perf_counter()
                    parts.append(piece)
            timings = chunk.get("timings") or timings
            usage = chunk.get("usage") or usage
    end = time.perf_counter()
    if first is None:
        raise SystemExit("a turn produced no content")
    prompt_n, cache_n = timings.get("prompt_n"), timings.get("cache_n")
    if prompt_n is None and usage:  # a server without llama.cpp's timings object
        cache_n = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        prompt_n = usage.get("prompt_tokens", 0) - (cache_n or 0)
    return Turn((first - started) * 1000, (end - started) * 1000, "".join(parts),
                prompt_n, cache_n)


async def ws_turn(ws: aiohttp.ClientWebSocketResponse[bool], messages: list[dict[str, str]],
                  max_tokens: int, request_id: str) -> Turn:
    """One response.create on /ws; prompt_n and cache_n from response.done."""
    request = {"type": "response.create", "request_id": request_id, "input": messages,
               "params": {"max_tokens": max_tokens, **GREEDY}}
    parts: list[str] = []
    first = None
    started = time.perf_counter()
    await ws.send_bytes(msgpack.packb(request))
    while True:
        msg = await ws.receive(timeout=TURN_TIMEOUT_S)
        if msg.type != aiohttp.WSMsgType.BINARY:
            raise SystemExit(f"/ws closed or sent {msg.type}")
        event = msgpack.unpackb(msg.data)
        if event["type"] == "response.output_text.delta":
            if first is None:
                first = time.perf_counter()
            parts.append(event["delta"])
        elif event["type"] == "response.done":
            break
    end = time.perf_counter()
    if first is None or event["status"] != "completed":
        raise SystemExit(f"/ws turn failed: {event}")
    timings = event["timings"]
    return Turn((first - started) * 1000, (end - started) * 1000, "".join(parts),
                timings["prompt_n"], timings["cache_n"])


async def converse(base: str, system: str, turns: Sequence[str], max_tokens: int,
                   *, ws: bool = False) -> list[Turn]:
    """The whole chat, the client keeping the history; ``ws`` uses /ws, else OpenAI."""
    messages = [{"role": "system", "content": system}]
    out: list[Turn] = []
    timeout = aiohttp.ClientTimeout(total=TURN_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        socket = await session.ws_connect(f"{base}/ws", max_msg_size=0) if ws else None
        try:
            if socket is not None:
                await socket.receive(timeout=10)  # session.created
            for i, user in enumerate(turns):
                messages.append({"role": "user", "content": user})
                if socket is not None:
                    turn = await ws_turn(socket, messages, max_tokens, f"t{i}")
                else:
                    turn = await openai_turn(session, base, messages, max_tokens)
                messages.append({"role": "assistant", "content": turn.text})
                out.append(turn)
        finally:
            if socket is not None:
                await socket.close()
    return out


# -- servers -------------------------------------------------------------------------
async def wait_http(server: subprocess.Popen[bytes], url: str, seconds: float = 60) -> None:
    """Poll ``url`` until it answers 200 (llama-cpp-python's server has no /health)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        for _ in range(int(seconds * 10)):
            if server.poll() is not None:
                raise SystemExit(f"the server exited with {server.returncode}")
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.1)
    raise SystemExit(f"the server at {url} did not start")


class Server:
    """A server subprocess on 127.0.0.1 for one ``async with`` block, always stopped."""

    def __init__(self, command: list[str], port: int, *, rkstream: bool, log: Path) -> None:
        self.command, self.port, self.rkstream, self.log = command, port, rkstream, log
        self.process: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{port}"

    async def __aenter__(self) -> Server:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.command, cwd=REPO, stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL)
        try:
            if self.rkstream:
                await wait_ready(self.process, self.port, seconds=60)
            else:
                await wait_http(self.process, f"{self.base}/v1/models")
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def rkstream_command(port: int, *settings: str, standin_model: Path | None = None) -> list[str]:
    command = [sys.executable, "-m", "rkstream", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning"]
    if standin_model is not None:
        command += ["--standin", "--model", str(standin_model)]
    for item in settings:
        command += ["--set", item]
    return command


# -- part 1: the stand-in --------------------------------------------------------------
def write_standin_model(path: Path, reply: str) -> None:
    """A stand-in model file: board-like prefill and decode, a fixed reply."""
    escaped = reply.replace("\\", "\\\\").replace("\n", "\\n")
    path.write_text("#rkstream-standin\n"
                    f"prefill_us_per_byte = {PREFILL_US_PER_BYTE}\n"
                    f"token_delay_us = {TOKEN_DELAY_US}\n"
                    f"reply = \"{escaped}\"\n")


# (column name, chat family, extra settings)
STANDIN_MODES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("history", "qwen2", ("rkllm.kv_reuse=history",)),
    ("runtime", "qwen2", ("rkllm.kv_reuse=runtime",)),
    ("off", "qwen2", ("rkllm.kv_reuse=off",)),
    ("qwen3 keep", "qwen3", ("rkllm.kv_reuse=history", "chat.history_rewrite=keep")),
    ("qwen3 reprefill", "qwen3",
     ("rkllm.kv_reuse=history", "chat.history_rewrite=reprefill")),
)


async def standin_part(args: argparse.Namespace, tmp: Path, started: float) -> list[Series]:
    plain, thinking = tmp / "chatml.rkllm", tmp / "thinking.rkllm"
    write_standin_model(plain, STANDIN_REPLY)
    write_standin_model(thinking, THINK_REPLY)
    system = system_prompt()
    modes = [m for m in STANDIN_MODES if not args.quick or m[0] in ("history", "off")]
    out: list[Series] = []
    for name, family, settings in modes:
        _deadline_left(started)
        port = free_port()
        model = thinking if family == "qwen3" else plain
        command = rkstream_command(port, f"chat.family={family}", "rkllm.max_context_len=8192",
                                   *settings, standin_model=model)
        async with Server(command, port, rkstream=True, log=tmp / "servers.log") as server:
            turns = await converse(server.base, system, args.user_turns, args.max_tokens)
            out.append(Series(name, turns))
            if args.ws and name == "history":  # the same chat over /ws, a fresh cache
                async with Server(rkstream_command(
                        (p := free_port()), f"chat.family={family}",
                        "rkllm.max_context_len=8192", *settings, standin_model=model),
                        p, rkstream=True, log=tmp / "servers.log") as ws_server:
                    turns = await converse(ws_server.base, system, args.user_turns,
                                           args.max_tokens, ws=True)
                out.append(Series("history /ws", turns))
        print(f"  stand-in {name}: done", file=sys.stderr)
    return out


# -- part 2: the CPU engine ------------------------------------------------------------
def llama_server_command(port: int, *options: str) -> list[str]:
    """llama-cpp-python's own OpenAI server on the bundled GGUF, rkstream's context size."""
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(resolve_model("")),
            "--n_ctx", "4096", "--host", "127.0.0.1", "--port", str(port),
            "--verbose", "false", *options]


async def cpu_part(args: argparse.Namespace, tmp: Path, started: float) -> list[Series]:
    system = system_prompt()
    warm = [{"role": "user", "content": "Hello"}]
    # llama-cpp-python's server with its own defaults (logits_all = true: logits
    # for every prompt token), then like for like with rkstream's Llama() (the
    # last token's only).
    configs = (("rkstream", True, ("engine=llamacpp", "llamacpp.n_ctx=4096")),
               ("llama-cpp-python server", False, ()),
               ("llama-cpp-python server, logits_all off", False, ("--logits_all", "false")))
    runs: dict[str, list[Series]] = {name: [] for name, _, _ in configs}
    for repeat in range(args.repeats):  # interleaved, so a slow spell hits all alike
        for name, ours, options in configs:
            _deadline_left(started)
            port = free_port()
            command = rkstream_command(port, *options) if ours \
                else llama_server_command(port, *options)
            async with Server(command, port, rkstream=ours, log=tmp / "servers.log") as server:
                timeout = aiohttp.ClientTimeout(total=TURN_TIMEOUT_S)
                async with aiohttp.ClientSession(timeout=timeout) as session:
                    await openai_turn(session, server.base, warm, 4)  # first-call allocations
                busy = wait_quiet()
                turns = await converse(server.base, system, args.user_turns, args.max_tokens)
                runs[name].append(Series(name, turns, busy))
            print(f"  CPU {name} ({repeat + 1}/{args.repeats}): done", file=sys.stderr)
    return [median_series(series) for series in runs.values()]


def median_series(runs: list[Series]) -> Series:
    """Turn by turn, the median TTFT and total time of repeated runs of one server."""
    turns = [Turn(statistics.median(r.turns[i].ttft_ms for r in runs),
                  statistics.median(r.turns[i].total_ms for r in runs),
                  runs[0].turns[i].text, runs[0].turns[i].prompt_n, runs[0].turns[i].cache_n)
             for i in range(len(runs[0].turns))]
    return Series(runs[0].name, turns, max(r.busy for r in runs))


# -- tables ------------------------------------------------------------------------
def _tokens(turn: Turn) -> str:
    if turn.prompt_n is None:
        return "-"
    return f"{turn.prompt_n}/{turn.cache_n if turn.cache_n is not None else '-'}"


def standin_table(series: list[Series]) -> str:
    head = "| turn | " + " | ".join(f"{s.name} TTFT ms" for s in series) + " | " + \
        " | ".join(f"{s.name} prompt_n/cache_n" for s in series) + " |"
    rows = [head, "|---" * (1 + 2 * len(series)) + "|"]
    for i in range(len(series[0].turns)):
        cells = [f"{s.turns[i].ttft_ms:,.0f}" for s in series]
        cells += [_tokens(s.turns[i]) for s in series]
        rows.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    if len(series[0].turns) >= 2:
        ratio = [f"{s.turns[-1].ttft_ms / s.turns[1].ttft_ms:.2f}x" for s in series]
        rows.append("| last / 2nd | " + " | ".join(ratio) + " |" + " |" * len(series))
    return "\n".join(rows)


def cpu_table(series: list[Series]) -> str:
    head = "| turn | " + " | ".join(f"{s.name} TTFT ms | {s.name} total ms" for s in series) \
        + " | rkstream prompt_n/cache_n |"
    rows = [head, "|---" * (2 + 2 * len(series)) + "|"]
    for i in range(len(series[0].turns)):
        cells = [f"{s.turns[i].ttft_ms:,.0f} | {s.turns[i].total_ms:,.0f}" for s in series]
        rows.append(f"| {i + 1} | " + " | ".join(cells) + f" | {_tokens(series[0].turns[i])} |")
    follow = [statistics.median(t.ttft_ms for t in s.turns[1:]) for s in series]
    rows.append("| median of turns 2+ | " + " | ".join(
        f"{f:,.0f} | {statistics.median(t.total_ms for t in s.turns[1:]):,.0f}"
        for f, s in zip(follow, series, strict=True)) + " | |")
    rows.append("| sum of all turns | " + " | ".join(
        f"{sum(t.ttft_ms for t in s.turns):,.0f} | {sum(t.total_ms for t in s.turns):,.0f}"
        for s in series) + " | |")
    texts = [t.text for t in series[0].turns]
    same = ", ".join(f"{s.name}: {'yes' if [t.text for t in s.turns] == texts else 'no'}"
                     for s in series[1:])
    rows.append(f"\nSame answers as {series[0].name}: {same}")
    return "\n".join(rows)


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="4 turns; stand-in modes history and off only")
    parser.add_argument("--part", choices=("all", "standin", "cpu"), default="all")
    parser.add_argument("--ws", action="store_true", help="also run the stand-in chat over /ws")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=0,
                        help="CPU-engine conversations per server (default 2, --quick 1)")
    args = parser.parse_args()
    args.user_turns = USER_TURNS[:4] if args.quick else USER_TURNS
    args.repeats = args.repeats or (1 if args.quick else 2)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rkstream-conversation-") as folder:
        tmp = Path(folder)
        try:
            standin = await standin_part(args, tmp, started) \
                if args.part in ("all", "standin") else []
            cpu = await cpu_part(args, tmp, started) if args.part in ("all", "cpu") else []
        except BaseException:
            log = tmp / "servers.log"
            if log.is_file():  # the servers' last words say why
                sys.stderr.write(log.read_text(errors="replace")[-3000:])
            raise
    system = system_prompt()
    print(f"{len(args.user_turns)} turns, system prompt {len(system.encode()):,} bytes, "
          f"max_tokens {args.max_tokens}, greedy; {os.cpu_count()} CPUs; "
          f"{time.monotonic() - started:.0f} s")
    if standin:
        print(f"\nStand-in, prefill {PREFILL_US_PER_BYTE} us/byte (~340 tokens/s), "
              f"{TOKEN_DELAY_US // 1000} ms/token; prompt_n/cache_n count the stand-in's "
              "word tokens\n")
        print(standin_table(standin))
    if cpu:
        print(f"\nCPU engine, {resolve_model('').name}\n")
        print(cpu_table(cpu))


if __name__ == "__main__":
    asyncio.run(main())
