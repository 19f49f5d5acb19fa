"""One llama.cpp model and the one thread that owns it.

The owner thread loads the model, formats the conversation with the model's
own chat template, and runs generation token by token; between tokens it
checks whether the run was cancelled or hit a stop sequence, so a cancel
takes effect within one token. Text reaches the loop through the same
:class:`BridgedRun` as the RKLLM engine.
"""

from __future__ import annotations

import asyncio
import codecs
import ctypes
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np

from rkstream.config import LlamaCppSettings
from rkstream.core.messages import IMAGE_PLACEHOLDER
from rkstream.core.owner import OwnerThread
from rkstream.engines.base import EngineInstance, Job, TextSink
from rkstream.engines.prompt import render_prompt
from rkstream.engines.run import BridgedRun, RunFacts
from rkstream.errors import EngineInitError
from rkstream.log import engine_log


class LlamaRun(BridgedRun):
    """A run on one llama.cpp model; the owner thread reads its flags."""

    def _abort(self) -> None:
        pass  # the owner thread checks should_stop before every token


def _messages(job: Job) -> list[dict[str, str]]:
    out = [{"role": "system", "content": job.instructions}] if job.instructions else []
    return out + [{"role": m.role, "content": m.text_with(IMAGE_PLACEHOLDER)}
                  for m in job.messages]


class LlamaInstance(EngineInstance):
    """Owns one ``llama_cpp.Llama`` through one thread.

    Args:
        settings: the [llamacpp] settings.
        model_path: the GGUF file.
        index: which instance this is (thread name, logs).
    """

    def __init__(self, settings: LlamaCppSettings, model_path: Path, index: int) -> None:
        self.settings = settings
        self.model_path = model_path
        self.index = index
        self._owner = OwnerThread(f"llama-owner-{index}")
        self._llm: Any = None
        self._format: Callable[[list[dict[str, str]]], tuple[str, bool]] | None = None
        self.n_ctx = 0
        self.n_embd = 0
        self.metadata: dict[str, str] = {}  # the GGUF's key/values
        self._is_eog: Callable[[int], bool] = lambda token: False
        self._perf: Callable[[], Any] = lambda: None
        self._perf_reset: Callable[[], Any] = lambda: None
        self._needs_reset = False
        self.fim_tokens: tuple[int, int, int] | None = None  # prefix, suffix, middle
        self.gguf_template: tuple[str, str, str] | None = None  # the file's template, BOS, EOS
        self._grammar_text: str | None = None
        self._compiled_grammar: Any = None
        self._bos_text = ""
        self._vocab_lock = threading.Lock()  # count_tokens against close

    # -- owner thread ------------------------------------------------------------
    def _load_sync(self) -> None:
        try:
            import llama_cpp
            from llama_cpp import llama_chat_format
        except ImportError as exc:
            raise EngineInitError(
                "the CPU engine needs llama-cpp-python; run `rkstream setup` (it builds it "
                f"for this machine) ({exc})") from None
        started = time.perf_counter()
        try:
            llm = llama_cpp.Llama(
                model_path=str(self.model_path), n_ctx=self.settings.n_ctx,
                n_batch=self.settings.n_batch, n_threads=self.settings.n_threads or None,
                seed=self.settings.seed, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise EngineInitError(f"llama.cpp could not load {self.model_path}: {exc}") from None
        self._llm = llm
        self.n_ctx = llm.n_ctx()
        self.n_embd = llm.n_embd()
        self.metadata = dict(llm.metadata)
        template = llm.metadata.get("tokenizer.chat_template")
        if template:
            eos = llm.detokenize([llm.token_eos()], special=True).decode(errors="replace")
            bos = llm.detokenize([llm.token_bos()], special=True).decode(errors="replace")
            self.gguf_template = (template, bos, eos)
            formatter = llama_chat_format.Jinja2ChatFormatter(template, eos_token=eos,
                                                              bos_token=bos)

            def apply(messages: list[dict[str, str]]) -> tuple[str, bool]:
                result = formatter(messages=cast(Any, messages))
                return result.prompt, bool(result.added_special)
            self._format = apply
        if llm.token_bos() >= 0:
            self._bos_text = llm.detokenize([llm.token_bos()], special=True).decode(
                errors="replace")
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        fim = [llama_cpp.llama_vocab_fim_pre(vocab), llama_cpp.llama_vocab_fim_suf(vocab),
               llama_cpp.llama_vocab_fim_mid(vocab)]
        self.fim_tokens = (fim[0], fim[1], fim[2]) if min(fim) >= 0 else None
        self._is_eog = lambda token: bool(llama_cpp.llama_vocab_is_eog(vocab, token))
        self._perf = lambda: llama_cpp.llama_perf_context(llm.ctx)
        self._perf_reset = lambda: llama_cpp.llama_perf_context_reset(llm.ctx)
        engine_log.info("instance %d loaded %s in %.0f ms (context %d, embedding width %d)",
                        self.index, self.model_path.name,
                        (time.perf_counter() - started) * 1000, self.n_ctx, self.n_embd)

    def _prompt(self, job: Job) -> tuple[str, bool]:
        if job.prompt is not None:  # rendered by rkstream's chat format, or raw text
            text = job.prompt.text
            return text, bool(self._bos_text) and text.startswith(self._bos_text)
        if self._format is not None:
            return self._format(_messages(job))
        # No template in the file: a plain transcript.
        return render_prompt(job.messages, job.instructions)[0] + "\n", False

    def _tokens(self, job: Job) -> list[int]:
        prompt, has_bos = self._prompt(job)
        return list(self._llm.tokenize(prompt.encode(), add_bos=not has_bos, special=True))

    def count_tokens(self, text: str) -> int:
        """The tokens of a rendered prompt, as :meth:`_tokens` makes them.

        Called off the owner thread, which may be generating: llama_tokenize
        reads only the model's vocabulary, fixed once loaded, into buffers of
        its own, and touches no context, KV cache or sampler. The lock keeps
        :meth:`_close_sync` from freeing the model meanwhile.
        """
        with self._vocab_lock:
            if self._llm is None:
                raise RuntimeError("the model is closed")
            has_bos = bool(self._bos_text) and text.startswith(self._bos_text)
            return len(self._llm.tokenize(text.encode(), add_bos=not has_bos, special=True))

    def _fim_tokens(self, fim: tuple[str, str]) -> list[int]:
        """<pre> prefix <suf> suffix <mid>: the model writes what goes between,
        with no chat template."""
        if self.fim_tokens is None:
            raise RuntimeError("this model defines no fill-in-the-middle tokens")
        pre, suf, mid = self.fim_tokens
        llm = self._llm
        bos = [llm.token_bos()] if llm.metadata.get("tokenizer.ggml.add_bos_token") == "true" \
            else []
        return (bos + [pre] + list(llm.tokenize(fim[0].encode(), add_bos=False, special=False))
                + [suf] + list(llm.tokenize(fim[1].encode(), add_bos=False, special=False))
                + [mid])

    def _multimodal_prefill(self, job: Job, facts: RunFacts) -> list[int] | None:
        """Evaluate text and image embeddings in order; return the ids to sample from.

        Images enter the KV cache as embeddings (a llama_batch with ``embd``)
        where their ``<image>`` placeholders stand; the ids list holds token 0
        there so the sampler's bookkeeping stays aligned.
        """
        import llama_cpp

        llm = self._llm
        for image in job.images:
            if image.embedding.shape[1] != self.n_embd:
                facts.error_code = "encoder_error"
                facts.error_message = (
                    f"the vision encoder gives {image.embedding.shape[1]} floats per token "
                    f"but this model's embedding size is {self.n_embd}; use an encoder "
                    "made for this model")
                return None
        prompt, has_bos = self._prompt(job)
        segments = prompt.split(IMAGE_PLACEHOLDER)
        pieces = [list(llm.tokenize(seg.encode(), add_bos=(i == 0 and not has_bos),
                                    special=True)) for i, seg in enumerate(segments)]
        total = sum(map(len, pieces)) + sum(i.embedding.shape[0] for i in job.images)
        facts.prompt_tokens = total
        if total + 1 > self.n_ctx:
            return None
        llm.reset()
        self._needs_reset = True  # the cache now holds image rows behind token 0
        ids: list[int] = []
        for index, tokens in enumerate(pieces):
            if index > 0:
                rows = np.ascontiguousarray(job.images[index - 1].embedding, dtype=np.float32)
                self._eval_embeddings(llama_cpp, rows)
                ids += [0] * rows.shape[0]
            if tokens:
                llm.eval(tokens)
                ids += tokens
        return ids

    def _eval_embeddings(self, llama_cpp: Any, rows: np.ndarray) -> None:
        llm, count = self._llm, rows.shape[0]
        batch = llama_cpp.llama_batch_init(count, self.n_embd, 1)
        try:
            batch.n_tokens = count
            ctypes.memmove(batch.embd, rows.ctypes.data, rows.nbytes)
            for i in range(count):
                batch.pos[i] = llm.n_tokens + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = False
            if llama_cpp.llama_decode(llm.ctx, batch) != 0:
                raise RuntimeError("llama_decode refused the image embeddings")
        finally:
            llama_cpp.llama_batch_free(batch)
        llm.input_ids[llm.n_tokens:llm.n_tokens + count] = 0
        llm.n_tokens += count

    def _cached_prefix(self, tokens: list[int]) -> int:
        """How many of ``tokens`` llama-cpp-python's generate() will take from the KV
        cache instead of evaluating (it reuses the longest matching prefix)."""
        llm = self._llm
        if llm.n_tokens <= 0 or not tokens:
            return 0
        held = llm.input_ids[:llm.n_tokens]
        longest = 0
        for a, b in zip(held, tokens, strict=False):
            if a != b:
                break
            longest += 1
        return min(longest, len(tokens) - 1)  # the last token is evaluated again

    def _run_sync(self, run: LlamaRun) -> None:
        run.start_s = time.perf_counter()
        facts = RunFacts(tokens=0, prompt_tokens=0, prompt_ms=None, predicted_ms=None,
                         first_text_s=None, start_s=run.start_s, end_s=run.start_s)
        try:
            if not run.should_stop:
                self._generate(run, facts)
        except Exception as exc:  # reported as a failed request, not a crash
            engine_log.exception("llama.cpp generation failed")
            facts.error_code = "runtime_error"
            facts.error_message = f"llama.cpp failed during generation: {exc}"
        facts.first_text_s = run.first_text_s
        facts.end_s = time.perf_counter()
        run.finish(facts)

    def _generate(self, run: LlamaRun, facts: RunFacts) -> None:
        llm, sampling = self._llm, run.job.sampling
        if self._needs_reset:  # never reuse a cache that holds image rows
            llm.reset()
            self._needs_reset = False
        if run.job.fim is not None:
            tokens = self._fim_tokens(run.job.fim)
            facts.prompt_tokens = len(tokens)
        elif run.job.images:
            ids = self._multimodal_prefill(run.job, facts)
            if ids is None and facts.error_code is not None:
                return
            tokens = ids or []
        else:
            tokens = self._tokens(run.job)
            facts.prompt_tokens = len(tokens)
            facts.cached_tokens = self._cached_prefix(tokens)
        room = self.n_ctx - facts.prompt_tokens
        if room < 1 or not tokens:
            facts.error_code = "context_overflow"
            facts.error_message = (
                f"the prompt is {facts.prompt_tokens} tokens, but this model's context "
                f"holds {self.n_ctx}; shorten the conversation")
            return
        limit = min(run.max_tokens, room)
        grammar = self._grammar(run.job.grammar)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        generated: list[int] = []
        self._perf_reset()
        for token in llm.generate(
                tokens, top_k=sampling.top_k, top_p=sampling.top_p, temp=sampling.temperature,
                repeat_penalty=sampling.repeat_penalty,
                frequency_penalty=sampling.frequency_penalty,
                presence_penalty=sampling.presence_penalty, reset=True, grammar=grammar):
            if run.should_stop or self._is_eog(token):
                break
            piece = llm.detokenize([token], prev_tokens=tokens + generated)
            generated.append(token)
            text = decoder.decode(piece)
            if text:
                run.emit(text)
            if len(generated) >= limit:
                break
        tail = decoder.decode(b"", final=True)
        if tail:
            run.emit(tail)
        facts.tokens = len(generated)
        facts.context_full = len(generated) >= limit and limit < run.max_tokens
        perf = self._perf()
        facts.prompt_ms, facts.predicted_ms = perf.t_p_eval_ms, perf.t_eval_ms
        facts.prompt_tokens -= facts.cached_tokens  # what this run's prefill processed

    def _grammar(self, text: str | None) -> Any:
        """The compiled grammar of ``text`` (kept: one request's tools are
        usually the next one's too)."""
        if text is None:
            return None
        if self._grammar_text != text:
            from llama_cpp.llama_grammar import LlamaGrammar

            self._compiled_grammar = LlamaGrammar.from_string(text, verbose=False)
            self._grammar_text = text
        else:
            self._compiled_grammar.reset()
        return self._compiled_grammar

    def _close_sync(self) -> None:
        with self._vocab_lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None

    # -- event loop ----------------------------------------------------------------
    async def load(self) -> None:
        self._owner.start()
        await self._owner.call(self._load_sync)

    def start(self, job: Job, sink: TextSink) -> LlamaRun:
        run = LlamaRun(job, sink, asyncio.get_running_loop(), job.sampling.max_tokens)
        self._owner.submit(lambda: self._run_sync(run))
        return run

    async def close(self) -> None:
        await self._owner.stop(self._close_sync)
