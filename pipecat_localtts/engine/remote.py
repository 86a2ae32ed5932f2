"""A token source on a serving engine: llama.cpp's ``llama-server`` or vLLM (SGLang untested).

:class:`RemoteTokenSource` plugs into :class:`~pipecat_localtts.engine.batched.BatchedEngine`
through the :class:`~pipecat_localtts.engine.source.TokenSource` seam: the engine front keeps
building prompts, parsing tokens into frames and decoding them with the local codec; only the
language model runs elsewhere. Every request streams from the server over one shared HTTP
connection pool (the server batches them), on one thread with its own event loop.

What goes over the wire:

* the prompt as token ids (never text: nothing is decoded and re-tokenized);
* the sampling (temperature, top_p, repetition penalty over the whole generation, seed) and
  the request's token budget; top-k, min-p and the other samplers of the engine are switched
  off so the distribution is the one :class:`~pipecat_localtts.engine.sampling.GenerationParams`
  describes;
* with ``constrain_audio_tokens`` (the default): the output restricted to the audio tokens
  and the stop tokens (llama-server: an equal ``logit_bias`` on each, which leaves their
  relative probabilities unchanged; vLLM: ``allowed_token_ids``). The per-position frame
  slot cannot be enforced remotely: a token outside its slot drops that frame (the parser
  keeps its place), counted in ``Request.dropped_frames``.

The generated ids come from the engine's id fields (llama-server ``/completion`` with
``return_tokens``: ``tokens``; vLLM ``/v1/completions`` with ``return_token_ids``:
``choices[0].token_ids``); a piece holding several ids is handled id by id. A request ends by
closing its stream (stop token, budget, cancel): both engines stop generating for it.

Timeouts (:class:`RemoteLM`): ``connect_timeout`` for the TCP/HTTP connection,
``first_token_timeout`` from sending a request to its first token (the server may queue it),
``token_timeout`` between two tokens. The API key goes as a bearer token and is never logged.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from loguru import logger

from pipecat_localtts.engine.source import Job, TokenSink
from pipecat_localtts.errors import EngineClosedError, GenerationError, LMServerError
from pipecat_localtts.models.base import TokenLayout

__all__ = ["LM_KINDS", "RemoteLM", "RemoteTokenSource"]

LM_KINDS = ("auto", "llama.cpp", "vllm")
_BIAS = 100.0  # llama-server logit bias on every allowed token (the rest is never sampled)
_CANCEL_POLL_S = 0.005  # how often cancelled requests are looked for


@dataclass(frozen=True)
class RemoteLM:
    """Where the speech LM runs and how to talk to it.

    Attributes:
        url: Base URL of the server (``http://host:8080``; a trailing ``/v1`` is accepted).
        kind: ``"llama.cpp"`` (``llama-server``), ``"vllm"`` (vLLM's OpenAI server; SGLang speaks
            the same API, untested), or ``"auto"``: asked of the server at start.
        model: Model name for OpenAI-style servers (``None``: the first of ``/v1/models``).
        api_key: Sent as ``Authorization: Bearer``; never logged.
        connect_timeout: Seconds to connect.
        first_token_timeout: Seconds from a request to its first token.
        token_timeout: Seconds allowed between two tokens.
        max_concurrency: Requests streaming at once (more wait here, in order).
    """

    url: str
    kind: str = "auto"
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    connect_timeout: float = 5.0
    first_token_timeout: float = 30.0
    token_timeout: float = 10.0
    max_concurrency: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url.startswith(("http://", "https://")):
            raise ValueError(f"lm_url must be an http:// or https:// URL, got {self.url!r}")
        if self.kind not in LM_KINDS:
            raise ValueError(f"lm_kind must be one of {', '.join(LM_KINDS)}, got {self.kind!r}")
        for name in ("connect_timeout", "first_token_timeout", "token_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        if not isinstance(self.max_concurrency, int) or self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be an int >= 1, got {self.max_concurrency!r}")

    @property
    def base(self) -> str:
        """The URL without a trailing slash or ``/v1``."""
        base = self.url.rstrip("/")
        return base[: -len("/v1")] if base.endswith("/v1") else base

    @property
    def key(self) -> tuple:
        """What makes two configurations the same server (engines are shared by it)."""
        return (self.base, self.kind, self.model, self.api_key, self.connect_timeout,
                self.first_token_timeout, self.token_timeout, self.max_concurrency)


class _Stream:
    """One request's streamed ids, whatever the engine: ``ids`` per piece, then the end."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.finish: str | None = None  # "stop" | "length" | other, once the server ends it

    def parse(self, line: str) -> list[int] | None:
        """Ids of one SSE line (``None``: not a data line)."""
        if not line.startswith("data:"):
            return None
        data = line[5:].strip()
        if data == "[DONE]":
            self.finish = self.finish or "length"
            return []
        event = json.loads(data)
        if "error" in event:
            raise GenerationError(f"server error: {event['error']}")
        if self.kind == "llama.cpp":
            ids = event.get("tokens") or []
            if event.get("stop"):
                self.finish = "stop" if event.get("stop_type") in ("eos", "word") else "length"
        else:
            choices = event.get("choices") or []
            if not choices:
                return []
            choice = choices[0]
            ids = choice.get("token_ids") or []
            if choice.get("finish_reason"):
                self.finish = "stop" if choice["finish_reason"] == "stop" else "length"
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise GenerationError(f"server sent token ids that are not integers: {ids!r:.80}")
        return ids


class RemoteTokenSource:
    """Generates the engine's jobs on a serving engine (see the module's docstring)."""

    def __init__(self, remote: RemoteLM, layout: TokenLayout, *, name: str = "remote") -> None:
        self.remote = remote
        self.layout = layout
        self.name = name
        self.kind: str | None = None if remote.kind == "auto" else remote.kind
        self.model: str | None = remote.model
        self._sink: TokenSink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client = None
        self._semaphore: asyncio.Semaphore | None = None
        self._lock = threading.Lock()
        self._tasks: dict[Job, asyncio.Task] = {}
        self._waiting = 0
        self._active = 0
        self._closed = False
        self._started = False
        self._allowed = allowed_ids(layout)
        self._bias_json = json.dumps([[i, _BIAS] for i in self._allowed])  # built once: 28k pairs
        self.requests_sent = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self, sink: TokenSink) -> None:
        """Connect, find the server's kind and model; raises :class:`LMServerError` naming the URL."""
        with self._lock:
            if self._closed:
                raise EngineClosedError("token source was closed")
            if self._started:
                return
            self._sink = sink
            ready = threading.Event()
            self._thread = threading.Thread(target=self._run_loop, args=(ready,), name=f"localtts-remote-{self.name}", daemon=True)
            self._thread.start()
            ready.wait()
        try:
            asyncio.run_coroutine_threadsafe(self._probe(), self._loop).result()
        except BaseException:
            self._stop_loop()
            raise
        with self._lock:
            self._started = True
        logger.info(f"remote LM: {self.kind} at {self.remote.base} (model {self.model or '-'})")

    def _run_loop(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        import httpx

        limits = httpx.Limits(max_connections=self.remote.max_concurrency, max_keepalive_connections=self.remote.max_concurrency)
        timeout = httpx.Timeout(connect=self.remote.connect_timeout, read=None, write=30.0, pool=None)
        headers = {"Authorization": f"Bearer {self.remote.api_key}"} if self.remote.api_key else {}
        self._client = httpx.AsyncClient(limits=limits, timeout=timeout, headers=headers)
        self._semaphore = asyncio.Semaphore(self.remote.max_concurrency)
        watcher = loop.create_task(self._watch_cancels())
        ready.set()
        try:
            loop.run_forever()
        finally:
            watcher.cancel()
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.gather(*asyncio.all_tasks(loop), return_exceptions=True))
            loop.run_until_complete(self._client.aclose())
            loop.close()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

    async def _probe(self) -> None:
        import httpx

        base = self.remote.base
        try:
            if self.kind in (None, "llama.cpp"):
                r = await self._client.get(f"{base}/props", timeout=self.remote.connect_timeout + 5)
                if r.status_code in (401, 403):
                    raise LMServerError(f"speech LM server at {base} refused the API key ({r.status_code})")
                if r.status_code == 200 and "default_generation_settings" in r.text:
                    self.kind = "llama.cpp"
                    return
                if self.kind == "llama.cpp":
                    raise LMServerError(f"{base} is not a llama-server: GET /props answered {r.status_code}")
            r = await self._client.get(f"{base}/v1/models", timeout=self.remote.connect_timeout + 5)
        except httpx.HTTPError as e:
            raise LMServerError(f"speech LM server at {base} is unreachable: {type(e).__name__}: {e}") from e
        if r.status_code in (401, 403):
            raise LMServerError(f"speech LM server at {base} refused the API key ({r.status_code})")
        if r.status_code != 200:
            raise LMServerError(f"speech LM server at {base}: GET /v1/models answered {r.status_code}")
        self.kind = self.kind or "vllm"
        if self.model is None:
            try:
                self.model = r.json()["data"][0]["id"]
            except (ValueError, KeyError, IndexError, TypeError) as e:
                raise LMServerError(f"speech LM server at {base} lists no model in /v1/models") from e

    def close(self, timeout: float = 10.0) -> list[Job]:
        """Cancel every request (their streams close) and stop; returns nothing left over."""
        with self._lock:
            self._closed = True
            loop = self._loop
        if loop is not None and loop.is_running():
            done = asyncio.run_coroutine_threadsafe(self._cancel_all(), loop)
            try:
                done.result(timeout)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        self._stop_loop()
        return []

    async def _cancel_all(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def running(self) -> bool:
        return self._started and not self._closed and self._thread is not None and self._thread.is_alive()

    @property
    def busy(self) -> bool:
        return bool(self._tasks)

    @property
    def active(self) -> int:
        return self._active

    @property
    def waiting(self) -> int:
        return self._waiting

    # ------------------------------------------------------------------ jobs

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._closed or not self._started or self._loop is None:
                raise EngineClosedError("token source is not running")
            self._waiting += 1
            self._loop.call_soon_threadsafe(self._spawn, job)

    def _spawn(self, job: Job) -> None:
        self._tasks[job] = asyncio.get_running_loop().create_task(self._job(job))

    async def _watch_cancels(self) -> None:
        """Cancel the stream of a request cancelled from another thread, even between tokens."""
        while True:
            await asyncio.sleep(_CANCEL_POLL_S)
            for job, task in list(self._tasks.items()):
                if job.req.cancelled and not task.done():
                    task.cancel()

    async def _job(self, job: Job) -> None:
        sink = self._sink
        assert sink is not None and self._semaphore is not None
        req = job.req
        admitted = False
        try:
            async with self._semaphore:
                self._waiting -= 1
                admitted = True
                self._active += 1
                try:
                    if req.cancelled:
                        sink.on_end(job, "cancelled")
                        return
                    req.t_start = req.t_admitted = time.perf_counter()
                    await self._stream(job, sink)
                finally:
                    self._active -= 1
        except asyncio.CancelledError:
            if not req.done:
                sink.on_end(job, "cancelled")
        except Exception as e:  # noqa: BLE001 - the request's error, reported by the engine
            error = e if isinstance(e, GenerationError) else GenerationError(f"{type(e).__name__}: {e}")
            sink.on_end(job, "error", error)
        finally:
            if not admitted:
                self._waiting -= 1
            self._tasks.pop(job, None)

    def _body(self, job: Job) -> bytes:
        p = job.req.params
        n = max(1, job.max_new - len(job.req.tokens))
        seed = job.req.sample_seed % 2**32
        if self.kind == "llama.cpp":
            body = {
                "prompt": list(job.req.prompt_ids),
                "stream": True,
                "return_tokens": True,
                "n_predict": n,
                "temperature": p.temperature,
                "top_p": p.top_p,
                "top_k": p.top_k,
                "min_p": 0.0,
                "typical_p": 1.0,
                "repeat_penalty": p.repetition_penalty,
                # The whole context, as our penalty sees every generated token (this server
                # rejects -1, "the context size", with HTTP 400).
                "repeat_last_n": len(job.req.prompt_ids) + job.max_new,
                "seed": seed,
                "samplers": ["penalties", "top_k", "temperature", "top_p"] if p.top_k else ["penalties", "temperature", "top_p"],
                "cache_prompt": True,
            }
        else:
            body = {
                "model": self.model,
                "prompt": list(job.req.prompt_ids),
                "stream": True,
                "max_tokens": n,
                "temperature": p.temperature,
                "top_p": p.top_p,
                "top_k": p.top_k or -1,
                "min_p": 0.0,
                "repetition_penalty": p.repetition_penalty,
                "seed": seed,
                "return_token_ids": True,
                "skip_special_tokens": False,
                "ignore_eos": True,
                "stop_token_ids": list(self.layout.stop_tokens),
                "min_tokens": max(0, min(self.layout.min_tokens - len(job.req.tokens), n)),
            }
        text = json.dumps(body)
        if p.constrain_audio_tokens:
            field_name = "logit_bias" if self.kind == "llama.cpp" else "allowed_token_ids"
            value = self._bias_json if self.kind == "llama.cpp" else json.dumps(self._allowed)
            text = f'{text[:-1]}, "{field_name}": {value}}}'
        return text.encode()

    async def _stream(self, job: Job, sink: TokenSink) -> None:
        base = self.remote.base
        path = "/completion" if self.kind == "llama.cpp" else "/v1/completions"
        req = job.req
        parser = _Stream(self.kind or "vllm")
        self.requests_sent += 1
        headers = {"content-type": "application/json", "accept": "text/event-stream"}
        try:
            async with self._client.stream("POST", f"{base}{path}", content=self._body(job), headers=headers) as response:
                if response.status_code != 200:
                    detail = (await response.aread())[:300].decode(errors="replace")
                    raise GenerationError(f"speech LM server {base}{path} answered HTTP {response.status_code}: {detail}")
                lines = response.aiter_lines()
                received = 0
                while True:
                    wait = self.remote.first_token_timeout if received == 0 else self.remote.token_timeout
                    try:
                        line = await asyncio.wait_for(anext(lines), wait)
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        what = "its first token" if received == 0 else "the next token"
                        raise GenerationError(f"speech LM server {base} sent no {what} within {wait:g} s") from None
                    ids = parser.parse(line)
                    if not ids:
                        continue
                    for token in ids:
                        received += 1
                        req.steps += 1
                        if req.t_prefilled is None:
                            req.t_prefilled = time.perf_counter()
                        if not sink.on_token(job, token):
                            return  # over (stop, budget or cancel): leaving closes the stream
        except GenerationError:
            raise
        except Exception as e:
            import httpx

            if isinstance(e, httpx.HTTPError):
                got = f"after {len(req.tokens)} tokens" if req.tokens else "before any token"
                raise GenerationError(f"speech LM server {base} stream broke {got}: {type(e).__name__}: {e}") from e
            raise
        # The server ended the stream itself.
        if parser.finish == "stop":
            sink.on_token(job, self.layout.stop_tokens[0])  # an end-of-generation the server saw
        elif parser.finish is None:
            got = f"after {len(req.tokens)} tokens" if req.tokens else "before any token"
            raise GenerationError(f"speech LM server {base} closed the stream {got} without finishing")
        else:
            sink.on_end(job, "length")


def allowed_ids(layout: TokenLayout) -> Sequence[int]:
    """Every id a remote engine may emit for ``layout``: the audio tokens and the stop tokens."""
    return sorted({i for s in layout.slot_starts for i in range(s, s + layout.width)} | set(layout.stop_tokens))
