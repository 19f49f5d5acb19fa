"""The CPU engine through rkstream vs llama-cpp-python's own API, same run.

Both generate greedily from the same chat-formatted prompts with the bundled
SmolLM2-135M-Instruct (or --model). Each run's user message differs from its
first word, so on both paths only the template's system part can come from
the prompt cache. "direct" calls Llama.generate in this
process; "rkstream /ws" is a server process and a WebSocket client. The
ratio is what rkstream's streaming costs.

    python bench/cpu_engine.py [--runs 5] [--tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rkstream.client import AsyncClient, Done, TextDelta
from rkstream.engines.llamacpp.model import resolve_model
from rkstream.engines.llamacpp.threads import default_threads

from common import free_port, wait_ready  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PROMPT = "Story {}: write a short story about a robot who learns to paint."


def direct(model: Path, runs: int, tokens: int) -> list[tuple[float, float]]:
    """(ttft_ms, tokens/s) per run, calling llama-cpp-python directly."""
    import llama_cpp
    from llama_cpp import llama_chat_format

    # The threads rkstream decodes with (llamacpp.n_threads = 0), so both paths match.
    llm = llama_cpp.Llama(model_path=str(model), n_ctx=4096, verbose=False,
                          n_threads=default_threads(1))
    template = llm.metadata["tokenizer.chat_template"]
    fmt = llama_chat_format.Jinja2ChatFormatter(
        template, eos_token=llm.detokenize([llm.token_eos()], special=True).decode(),
        bos_token=llm.detokenize([llm.token_bos()], special=True).decode())
    out = []
    for i in range(runs + 1):  # the first run warms up
        prompt = fmt(messages=[{"role": "user", "content": PROMPT.format(i)}]).prompt
        started = time.perf_counter()
        toks = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        first = None
        n = 0
        for _token in llm.generate(toks, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
            if first is None:
                first = time.perf_counter()
            n += 1
            if n >= tokens:
                break
        end = time.perf_counter()
        assert first is not None
        out.append(((first - started) * 1000, (n - 1) / (end - first)))
    llm.close()
    return out[1:]



async def through_rkstream(model: Path, runs: int, tokens: int
                           ) -> list[tuple[float, float, float]]:
    """(ttft_ms, tokens/s, server-reported tokens/s) per run, over /ws."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "rkstream", "serve", "--host", "127.0.0.1", "--port",
         str(port), "--set", "engine=llamacpp", "--set", f"llamacpp.model={model}",
         "--log-level", "warning"], cwd=REPO)
    out = []
    try:
        await wait_ready(server, port)
        async with AsyncClient(f"127.0.0.1:{port}") as client:
            for i in range(runs + 1):
                started = time.perf_counter()
                first = None
                async for event in client.stream(
                        PROMPT.format(i), max_tokens=tokens, temperature=0, top_k=1,
                        top_p=1.0, repeat_penalty=1.0):
                    if isinstance(event, TextDelta) and first is None:
                        first = time.perf_counter()
                    elif isinstance(event, Done):
                        end = time.perf_counter()
                        done = event
                assert first is not None
                n = done.usage.output_tokens
                out.append(((first - started) * 1000, (n - 1) / (end - first),
                            done.timings.predicted_per_second or 0.0))
    finally:
        server.terminate()
        server.wait(10)
    return out[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--model", default="")
    args = parser.parse_args()
    model = resolve_model(args.model)
    plain = direct(model, args.runs, args.tokens)
    served = asyncio.run(through_rkstream(model, args.runs, args.tokens))
    d_ttft = statistics.median(t for t, _ in plain)
    d_tps = statistics.median(r for _, r in plain)
    s_ttft = statistics.median(t for t, _, _ in served)
    s_tps = statistics.median(r for _, r, _ in served)
    s_engine = statistics.median(e for _, _, e in served)
    print(f"model {model.name}, {args.tokens} tokens, median of {args.runs} runs")
    print("| path | TTFT ms | tokens/s seen by the client | tokens/s by the engine's counters |")
    print("|---|---|---|---|")
    print(f"| llama-cpp-python direct | {d_ttft:.1f} | {d_tps:.1f} | - |")
    print(f"| rkstream /ws | {s_ttft:.1f} | {s_tps:.1f} | {s_engine:.1f} |")
    print(f"| rkstream / direct | {s_ttft / d_ttft:.2f}x | {s_tps / d_tps:.3f} | - |")


if __name__ == "__main__":
    main()
