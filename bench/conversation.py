"""Ten-turn conversations: time to first token per turn, with KV-cache reuse and without.

The client keeps the history and sends the whole conversation every turn, as
chat frontends do: a ~1,000-token system prompt, then ten short user turns,
through /v1/chat/completions, streamed. TTFT is the time from sending the
request to the first chunk that carries content.

* Stand-in runtime at a board-like speed (prefill ~340 tokens/s as a 1.5B
  w8a8 model on RK3588, at ~4 bytes a token; decode 16.7 tokens/s), rendered
  as ChatML (``chat.family = qwen2``) with ``rkllm.kv_reuse`` = history,
  runtime and off; then Qwen3, whose format drops the reasoning of earlier
  answers, with ``chat.history_rewrite`` = keep and reprefill (the stand-in's
  reply holds a ``<think>`` block).
* CPU engine with the bundled SmolLM2-135M: rkstream, and llama-cpp-python's
  own OpenAI server on the same GGUF (``pip install fastapi uvicorn
  sse-starlette starlette-context pydantic-settings``), greedy, interleaved
  runs; each run waits for other processes to leave the CPUs alone first.

    python bench/conversation.py                  # both parts, about 6 minutes
    python bench/conversation.py --quick          # 4 turns, fewer runs (~1 minute)
    python bench/conversation.py --part standin   # or --part cpu; --ws adds /ws
    python bench/conversation.py --url http://127.0.0.1:8080   # a running server
                                                  # (on a board: compare kv_reuse modes)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgpack

from rkstream.engines.llamacpp.model import resolve_model

from common import free_port, wait_ready  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TURN_TIMEOUT_S = 120.0  # one turn; turn 1 on the CPU engine takes ~5 s
BUDGET_S = 570.0  # no run starts after this; what was measured is printed
RUN_RESERVE_S = 60.0  # the longest one run takes (a stand-in run with reuse off)
QUIET = 0.15  # share of the CPUs others may use when a CPU-engine run starts
QUIET_WAIT_S = 20.0

# Board-like stand-in speed: 340 tokens/s at ~4 bytes a token is 1e6 / 1360
# = 735 us a byte; 16.7 tokens/s decode is 60 ms a token (rkllm_perf.md,
# Qwen2.5-1.5B w8a8).
PREFILL_US_PER_BYTE = 735
TOKEN_DELAY_US = 60_000
STANDIN_REPLY = "Noted. I will keep that in mind and plan the next step with you."
THINK_REPLY = ("<think>\nThe traveller added a wish; check it against the rules and "
               "the plan so far.\n</think>\n\n" + STANDIN_REPLY)
# Greedy on both servers, so they write the same answers from the same history.
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
    """A deterministic system prompt: 4,517 bytes, 1,012 SmolLM2 tokens."""
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
    prompt_n: int | None  # prompt tokens this turn processed (prefilled)
    cache_n: int | None  # prompt tokens taken from the KV cache


@dataclass
class Series:
    """The turns of one conversation on one server configuration."""

    name: str
    turns: list[Turn]
    busy: float = 0.0  # share of the CPUs others used just before the run


class Budget:
    """The benchmark's time limit: a run starts only if it can end within it."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.skipped: list[str] = []

    def allows(self, name: str) -> bool:
        if time.monotonic() - self.started + RUN_RESERVE_S <= BUDGET_S:
            return True
        self.skipped.append(f"{name} (out of time)")
        return False

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def cpu_busy(seconds: float = 1.0) -> float:
    """The share of all CPUs busy over ``seconds``, from /proc/stat (0 to 1)."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def wait_quiet() -> float:
    """Wait a little for other processes to leave the CPUs alone, and return the busy
    share: one busy process on a 2-core machine can make a prefill seconds slower."""
    deadline = time.monotonic() + QUIET_WAIT_S
    busy = cpu_busy()
    while busy > QUIET and time.monotonic() < deadline:
        busy = cpu_busy(2.0)
    return busy


# -- clients -------------------------------------------------------------------------
async def openai_turn(session: aiohttp.ClientSession, base: str,
                      messages: list[dict[str, str]], max_tokens: int) -> Turn:
    """One streamed /v1/chat/completions request."""
    body = {"messages": messages, "stream": True, "max_tokens": max_tokens,
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


def llama_server_command(port: int, *options: str) -> list[str]:
    """llama-cpp-python's own OpenAI server on the bundled GGUF, rkstream's context size."""
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(resolve_model("")),
            "--n_ctx", "4096", "--host", "127.0.0.1", "--port", str(port),
            "--verbose", "false", *options]


# -- part 1: the stand-in --------------------------------------------------------------
def write_standin_model(path: Path, reply: str) -> None:
    """A stand-in model file: board-like prefill and decode, a fixed reply."""
    escaped = reply.replace("\\", "\\\\").replace("\n", "\\n")
    path.write_text("#rkstream-standin\n"
                    f"prefill_us_per_byte = {PREFILL_US_PER_BYTE}\n"
                    f"token_delay_us = {TOKEN_DELAY_US}\n"
                    f"reply = \"{escaped}\"\n")


# (column, chat family, settings)
STANDIN_MODES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("history", "qwen2", ("rkllm.kv_reuse=history",)),
    ("runtime", "qwen2", ("rkllm.kv_reuse=runtime",)),
    ("off", "qwen2", ("rkllm.kv_reuse=off",)),
    ("qwen3 keep", "qwen3", ("rkllm.kv_reuse=history", "chat.history_rewrite=keep")),
    ("qwen3 reprefill", "qwen3",
     ("rkllm.kv_reuse=history", "chat.history_rewrite=reprefill")),
)


async def standin_part(args: argparse.Namespace, tmp: Path, budget: Budget) -> list[Series]:
    models = {"qwen2": tmp / "chatml.rkllm", "qwen3": tmp / "thinking.rkllm"}
    write_standin_model(models["qwen2"], STANDIN_REPLY)
    write_standin_model(models["qwen3"], THINK_REPLY)
    system = system_prompt()
    runs = [(name, family, settings, False) for name, family, settings in STANDIN_MODES
            if not args.quick or name in ("history", "off")]
    if args.ws:  # the history run again over /ws, on a fresh server
        runs.insert(1, ("history /ws", "qwen2", STANDIN_MODES[0][2], True))
    out: list[Series] = []
    for name, family, settings, ws in runs:
        if not budget.allows(f"stand-in {name}"):
            continue
        port = free_port()
        command = rkstream_command(port, f"chat.family={family}", *settings,
                                   standin_model=models[family])
        async with Server(command, port, rkstream=True, log=tmp / "servers.log") as server:
            turns = await converse(server.base, system, args.user_turns, args.max_tokens,
                                   ws=ws)
        out.append(Series(name, turns))
        print(f"  stand-in {name}: done ({budget.elapsed():.0f} s)", file=sys.stderr)
    return out


# -- part 2: the CPU engine ------------------------------------------------------------
# What llama-cpp-python's [server] extra adds; the benchmark installs nothing.
SERVER_MODULES = ("fastapi", "uvicorn", "sse_starlette", "starlette_context",
                  "pydantic_settings")


async def cpu_part(args: argparse.Namespace, tmp: Path, budget: Budget) -> list[Series]:
    system = system_prompt()
    warm = [{"role": "user", "content": "Hello"}]
    cores = len(os.sched_getaffinity(0))
    # llama-cpp-python's server with its own defaults (logits_all = true: logits
    # for every prompt token), then like for like with rkstream's Llama() (the
    # last token's only). Last, rkstream decoding on every core: llama-cpp-python
    # decodes on cpu_count // 2 threads unless told, a default made for two
    # hardware threads a core.
    configs: tuple[tuple[str, bool, tuple[str, ...]], ...] = (
        ("rkstream", True, ("engine=llamacpp", "llamacpp.n_ctx=4096")),
        ("llama-cpp-python server", False, ()),
        ("llama-cpp-python server, logits_all off", False, ("--logits_all", "false")),
        (f"rkstream, n_threads={cores}", True,
         ("engine=llamacpp", "llamacpp.n_ctx=4096", f"llamacpp.n_threads={cores}")))
    missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        budget.skipped.append(f"llama-cpp-python server (missing {', '.join(missing)})")
        configs = tuple(c for c in configs if c[1])
    runs: dict[str, list[Series]] = {name: [] for name, _, _ in configs}
    for repeat in range(args.repeats):  # interleaved, so a slow spell hits all alike
        for name, ours, options in configs:
            if not budget.allows(f"CPU {name} ({repeat + 1})"):
                continue
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
            print(f"  CPU {name} ({repeat + 1}/{args.repeats}): done "
                  f"({budget.elapsed():.0f} s)", file=sys.stderr)
    return [median_series(series) for series in runs.values() if series]


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


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def ttft_table(series: list[Series]) -> str:
    """TTFT per turn, one column per run, and turn 10 against turn 2."""
    n = len(series[0].turns)
    rows = [[str(i + 1)] + [f"{s.turns[i].ttft_ms:,.0f}" for s in series] for i in range(n)]
    if n >= 2:
        rows.append([f"turn {n} / turn 2"]
                    + [f"{s.turns[-1].ttft_ms / s.turns[1].ttft_ms:.2f}x" for s in series])
    return _table(["turn"] + [f"{s.name} TTFT ms" for s in series], rows)


def tokens_table(series: list[Series]) -> str:
    """prompt_n/cache_n per turn, one column per run."""
    rows = [[str(i + 1)] + [_tokens(s.turns[i]) for s in series]
            for i in range(len(series[0].turns))]
    return _table(["turn"] + [s.name for s in series], rows)


def cpu_summary(series: list[Series]) -> str:
    """Per server: turn 1, follow-up medians, sums, and whether the answers match."""
    texts = [t.text for t in series[0].turns]
    rows = []
    for s in series:
        follow = s.turns[1:] or s.turns
        rows.append([s.name, f"{s.turns[0].ttft_ms:,.0f}",
                     f"{statistics.median(t.ttft_ms for t in follow):,.0f}",
                     f"{statistics.median(t.total_ms for t in follow):,.0f}",
                     f"{sum(t.total_ms for t in s.turns):,.0f}",
                     "yes" if [t.text for t in s.turns] == texts else "no",
                     f"{s.busy:.0%}"])
    return _table(["server", "turn 1 TTFT ms", "median TTFT ms, turns 2+",
                   "median turn ms, turns 2+", "all turns ms", f"same answers as {series[0].name}",
                   "CPU used by others at start"], rows)


async def against_url(args: argparse.Namespace) -> None:
    """One chat against a server that is already running, e.g. on a board."""
    base = args.url.rstrip("/")
    host = urllib.parse.urlsplit(base).hostname or ""
    if host != "localhost" and not host.startswith("127.") and host != "::1":
        raise SystemExit("--url: this benchmark only talks to a server on this machine "
                         "(127.0.0.1, localhost or ::1)")
    turns = await converse(base, system_prompt(), args.user_turns, args.max_tokens, ws=args.ws)
    series = [Series("/ws" if args.ws else "OpenAI", turns)]
    print(ttft_table(series))
    print("\nprompt_n/cache_n:\n")
    print(tokens_table(series))


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="4 turns; stand-in modes history and off; one run per server")
    parser.add_argument("--part", choices=("all", "standin", "cpu"), default="all")
    parser.add_argument("--ws", action="store_true", help="also run the stand-in chat over /ws")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--url", help="run the chat once against this running server "
                                      "(loopback only) instead of starting servers")
    parser.add_argument("--repeats", type=int, default=0,
                        help="CPU-engine runs per server, interleaved (default 3, --quick 1)")
    args = parser.parse_args()
    args.user_turns = USER_TURNS[:4] if args.quick else USER_TURNS
    args.repeats = args.repeats or (1 if args.quick else 3)
    budget = Budget()
    if args.url:
        await against_url(args)
        return
    standin: list[Series] = []
    cpu: list[Series] = []
    with tempfile.TemporaryDirectory(prefix="rkstream-conversation-") as folder:
        tmp = Path(folder)
        try:
            if args.part in ("all", "standin"):
                standin = await standin_part(args, tmp, budget)
            if args.part in ("all", "cpu"):
                cpu = await cpu_part(args, tmp, budget)
        except BaseException:
            log = tmp / "servers.log"
            if log.is_file():  # the servers' last words say why
                sys.stderr.write(log.read_text(errors="replace")[-3000:])
            raise
    system = system_prompt()
    print(f"{len(args.user_turns)} turns, system prompt {len(system.encode()):,} bytes, "
          f"max_tokens {args.max_tokens}, greedy, {os.cpu_count()} CPUs, "
          f"{budget.elapsed():.0f} s")
    if budget.skipped:
        print(f"Not run: {', '.join(budget.skipped)}")
    if standin:
        print(f"\nStand-in runtime, prefill {PREFILL_US_PER_BYTE} us a byte (~340 tokens/s), "
              f"{TOKEN_DELAY_US // 1000} ms a token. TTFT:\n")
        print(ttft_table(standin))
        print("\nprompt_n/cache_n (the stand-in counts a word as a token; template text "
              "counts none):\n")
        print(tokens_table(standin))
    if cpu:
        print(f"\nCPU engine, {resolve_model('').name}, median of {args.repeats} run(s) "
              "per turn. TTFT:\n")
        print(ttft_table(cpu))
        print("\nrkstream's prompt_n/cache_n (SmolLM2 tokens):\n")
        print(tokens_table(cpu[:1]))
        print()
        print(cpu_summary(cpu))
        if any(s.busy > QUIET for s in cpu):
            print(f"\nOther processes used more than {QUIET:.0%} of the CPUs when a run "
                  "started: its numbers are noisy.")


if __name__ == "__main__":
    asyncio.run(main())
