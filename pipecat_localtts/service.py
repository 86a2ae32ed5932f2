"""``LocalTTSService``: the Pipecat face of the local speech engine.

Text from the LLM is cut by the adaptive chunker (the service's text aggregator); each chunk
becomes an engine request; the engine thread streams PCM back to the event loop, where it is
cut into short ``TTSAudioRawFrame``s. An interruption cancels the ``run_tts`` coroutine, and
its ``finally`` cancels the engine request, which stops within one decode step.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    StartFrame,
    TTSAudioRawFrame,
)
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService
from pipecat.transcriptions.language import Language
from pipecat.utils.tracing.service_decorators import traced_tts

from pipecat_localtts.audio import EdgeFade
from pipecat_localtts.aggregator import AdaptiveTextAggregator
from pipecat_localtts.chunking import ChunkerConfig, fit_pieces, is_speakable, split_text, text_width, well_formed
from pipecat_localtts.engine.batched import BatchedEngine
from pipecat_localtts.engine.request import Request
from pipecat_localtts.engine.remote import RemoteLM
from pipecat_localtts.engine.shared import ENGINES, MODELS
from pipecat_localtts.engine.sampling import GenerationParams
from pipecat_localtts.errors import LocalTTSError, UnknownVoiceError
from pipecat_localtts.validation import check_int, check_number, check_type
from pipecat_localtts.models.base import SpeechModel
from pipecat_localtts.models.families import MODEL_TYPES, family_of, load_model
from pipecat_localtts.models.orpheus import DEFAULT_MODEL_ID, resolve_device, resolve_dtype


@dataclass
class LocalTTSSettings(TTSSettings):
    """Runtime settings of :class:`LocalTTSService` (model, voice, language)."""


async def _drop_unspeakable(text: str, text_type: str) -> str:
    """Text transform: nothing to say (punctuation, emoji, whitespace) becomes no request."""
    return text if is_speakable(text) else ""


class _AsyncSink:
    """Engine sink that hands audio to the event loop through an asyncio queue."""

    _DONE = object()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self.request: Request | None = None

    def _put(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            if self.request is not None:
                self.request.cancel()

    def on_audio(self, pcm: np.ndarray) -> None:  # engine thread
        self._put(pcm)

    def on_done(self, request: Request) -> None:  # engine thread
        self._put(self._DONE)

    async def audio(self, keepalive: Callable[[], None], interval: float) -> AsyncIterator[np.ndarray]:
        """Audio pieces until the request ends; raises the request's error, if any.

        ``keepalive`` is called every ``interval`` seconds that pass without audio: the
        engine is still at work on the request (prefill, other requests, a loaded CPU).
        """
        while True:
            try:
                async with asyncio.timeout(interval):
                    item = await self._queue.get()
            except TimeoutError:
                keepalive()
                continue
            if item is self._DONE:
                break
            yield item
        assert self.request is not None
        if self.request.error is not None:
            raise self.request.error


class LocalTTSService(TTSService):
    """Pipecat TTS service that speaks with a local speech-token LM (Orpheus on SNAC, NeuTTS
    on NeuCodec: the family is read from the checkpoint).

    Args:
        model: Hugging Face hub id, local checkpoint directory, or a loaded model
            (:class:`~pipecat_localtts.models.orpheus.OrpheusModel`,
            :class:`~pipecat_localtts.models.neutts.NeuTTSModel`, e.g. ``tiny_orpheus()``).
        voice: Voice name (Orpheus English: tara, leah, jess, leo, dan, mia, zac, zoe; NeuTTS:
            a reference's name). ``None``: the model's first voice.
        device: Torch device for the model; ``None`` picks CUDA when available.
        dtype: Weight dtype; ``None`` picks bf16 on CUDA, fp32 on CPU.
        voices: Orpheus: the voice names a checkpoint that is not the English fine-tune knows.
            NeuTTS: name → reference recording, a ``NeuTTSVoice`` or ``(codes, transcript)``
            (codes as ``.pt`` / ``.npy``; default: the checkpoint's ``voices/`` directory).
            Ignored for a loaded model object (it carries its own).
        params: Sampling and max-token guard (``None``: the family's defaults, e.g. the
            Orpheus reference's).
        chunking: How LLM text is cut into chunks (first chunk fast, then sentences).
        frames_per_decode: Minimum codec frames per window once audio flows (1 = lowest
            latency; frames waiting for a busy codec are decoded together anyway).
        max_batch: Requests the shared engine decodes together (``None``: the engine's
            default per device); applies when this service starts the model's engine.
        edge_fade_ms: Fade-in and fade-out at each utterance's edges, so consecutive chunks
            join without a click (0 disables; the audio between the edges is unchanged).
        lm_url: Run the speech LM on a serving engine at this URL (``http://host:8080``:
            llama.cpp's ``llama-server`` or vLLM) instead of in this process; ``model`` then
            only provides the tokenizer and the codec (no LM weights are loaded). A
            :class:`~pipecat_localtts.engine.remote.RemoteLM` gives the timeouts too.
        lm_kind: ``"auto"`` (asked of the server), ``"llama.cpp"`` or ``"vllm"``.
        lm_model: The model name an OpenAI-style server serves (``None``: its first).
        lm_api_key: Bearer token for the server (never logged).
        settings: Pipecat settings delta (model/voice/language), applied over the above.
        **kwargs: Passed to Pipecat's ``TTSService`` (``sample_rate``, ``text_transforms``...).
            Audio is produced at the codec's 24 kHz; another ``sample_rate`` is resampled
            here, flushing at the end of every utterance.
    """

    Settings = LocalTTSSettings
    _settings: LocalTTSSettings

    def __init__(
        self,
        *,
        model: str | os.PathLike[str] | SpeechModel = DEFAULT_MODEL_ID,
        voice: str | None = None,
        device: str | None = None,
        dtype: Any = None,
        voices: Sequence[str] | Mapping[str, Any] | None = None,
        params: GenerationParams | None = None,
        chunking: ChunkerConfig | None = None,
        frames_per_decode: int = 1,
        max_batch: int | None = None,
        edge_fade_ms: float = 5.0,
        lm_url: str | RemoteLM | None = None,
        lm_kind: str = "auto",
        lm_model: str | None = None,
        lm_api_key: str | None = None,
        settings: LocalTTSSettings | None = None,
        **kwargs: Any,
    ) -> None:
        # Wrong types fail here, naming the argument, not at the first request.
        if isinstance(model, os.PathLike):
            model = os.fspath(model)
        allowed = "a hub id or directory (str or os.PathLike) or a loaded model (OrpheusModel, NeuTTSModel)"
        check_type("model", model, (str, *MODEL_TYPES), allowed)
        if isinstance(model, str) and not model.strip():
            raise ValueError(f"model must be {allowed}, got an empty string")
        check_type("voice", voice, (str, type(None)), "a voice name (str) or None")
        if isinstance(voices, Mapping):
            if not voices or not all(isinstance(v, str) for v in voices):
                raise TypeError(f"voices must map voice names (str) to references, got {voices!r}")
        elif voices is not None and (
            isinstance(voices, str)
            or not isinstance(voices, Sequence)
            or not all(isinstance(v, str) for v in voices)
        ):
            raise TypeError(
                f"voices must be a sequence of voice names (str), a mapping of names to references, "
                f"or None, got {voices!r}"
            )
        check_type("params", params, (GenerationParams, type(None)), "a GenerationParams or None")
        check_type("chunking", chunking, (ChunkerConfig, type(None)), "a ChunkerConfig or None")
        check_int("frames_per_decode", frames_per_decode, "an int >= 1")
        if frames_per_decode < 1:
            raise ValueError(f"frames_per_decode must be >= 1, got {frames_per_decode}")
        if max_batch is not None:
            check_int("max_batch", max_batch, "an int >= 1 or None")
            if max_batch < 1:
                raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        check_number("edge_fade_ms", edge_fade_ms, "a finite number >= 0")
        if edge_fade_ms < 0:
            raise ValueError(f"edge_fade_ms must be >= 0, got {edge_fade_ms}")
        check_type("lm_url", lm_url, (str, RemoteLM, type(None)), "an http(s) URL, a RemoteLM or None")
        if isinstance(lm_url, str):
            lm_url = RemoteLM(lm_url, kind=lm_kind, model=lm_model, api_key=lm_api_key)
        self._remote: RemoteLM | None = lm_url
        loaded = model if isinstance(model, MODEL_TYPES) else None
        model_name = loaded.name if loaded is not None else str(model)
        # The voices known now: the model's, the names given, a family's fixed set (Orpheus);
        # a NeuTTS checkpoint's references are known once it is loaded.
        if loaded is not None:
            known: tuple[str, ...] | None = tuple(loaded.voices)
        elif voices:
            known = tuple(voices)
        else:
            known = family_of(model).voices
        if voice is None and known:
            voice = known[0]
        default_settings = self.Settings(model=model_name, voice=voice, language=Language.EN)
        if settings is not None:
            default_settings.apply_update(settings)
        native_rate = loaded.sample_rate if loaded is not None else 24000
        kwargs.setdefault("sample_rate", native_rate)
        # Every failure here is reported as an ErrorFrame, so Pipecat's detector of silently
        # failing providers must not write the service off after a few failed turns (three
        # turns with an unknown voice would otherwise leave it unusable after the fix).
        kwargs.setdefault("max_consecutive_zero_audio_contexts", 0)
        transforms = [("*", _drop_unspeakable), *(kwargs.pop("text_transforms", None) or [])]
        aggregator = kwargs.pop("text_aggregator", None)  # Pipecat's own argument: ours by default
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            settings=default_settings,
            text_transforms=transforms,
            **kwargs,
        )
        self._chunking = chunking or ChunkerConfig()
        self._text_aggregator = aggregator or AdaptiveTextAggregator(self._chunking)
        self._params = params or (loaded.default_params if loaded is not None else None)
        self._frames_per_decode = frames_per_decode
        self._max_batch = max_batch
        self._edge_fade_ms = edge_fade_ms
        self._model_source = model
        self._model: SpeechModel | None = loaded
        self._device = device
        self._dtype = dtype
        self._voices = voices  # what the loader gets
        if known is not None and self._settings.voice is not None and self._settings.voice not in known:
            raise UnknownVoiceError(f"unknown voice {self._settings.voice!r}; known voices: {', '.join(known)}")
        self._engine: BatchedEngine | None = None
        self._owns_model = False  # the model came from the shared cache for this service
        # This service's recent requests (with their text), newest last: the engine keeps none.
        self._request_log: deque[Request] = deque(maxlen=256)
        self._load_error: Exception | None = None
        # Contexts whose failure run_tts has reported (an ErrorFrame), until they end.
        self._failed_contexts: set[str] = set()
        self._split_logged_for: str | None = None  # the last context whose text had to be split
        self._load_lock = asyncio.Lock()

    # ------------------------------------------------------------------ lifecycle

    def can_generate_metrics(self) -> bool:
        """TTFB and usage metrics are supported."""
        return True

    @property
    def engine(self) -> BatchedEngine | None:
        """The running engine, shared by every service of the same model (``None`` before
        :meth:`load` / ``start`` and after stop)."""
        return self._engine

    @property
    def model(self) -> SpeechModel | None:
        """The loaded model object, once loaded."""
        return self._model

    @property
    def requests(self) -> Sequence[Request]:
        """This service's recent engine requests (the last 256), oldest first."""
        return self._request_log

    async def load(self) -> None:
        """Load the model (off the event loop) and join its shared engine; idempotent.

        Called by ``start()``; call it earlier to pay the load time before the pipeline runs.
        Services given the same model object, or the same hub id or directory on the same
        device and dtype, share the weights and one batched engine.

        Raises:
            ModelLoadError: The weights could not be had.
        """
        async with self._load_lock:
            if self._engine is not None and self._engine.running:
                return
            if self._engine is not None:  # a dead engine: let it go before taking a new one
                await self._close_engine()
            if self._model is None:
                model = await asyncio.to_thread(self._load_shared_model)
                self._model, self._owns_model = model, True
                if self._settings.voice is None:  # the checkpoint's first reference
                    self._settings.voice = model.voices[0]
                model.check_voice(str(self._settings.voice))
            if self._params is None:
                self._params = self._model.default_params
            settings = {
                "max_batch": self._max_batch,
                "max_tokens": self._params.max_tokens,
                "frames_per_decode": self._frames_per_decode,
            }
            self._engine = await asyncio.to_thread(ENGINES.acquire, self._model, remote=self._remote, **settings)
            if self._model.synthetic:
                logger.warning(f"{self}: model {self._model.name} is synthetic (random weights): noise")

    def _load_shared_model(self) -> SpeechModel:
        """The model of ``self._model_source`` from the process-wide cache (blocking)."""
        device = resolve_device(self._device)
        with_lm = self._remote is None  # the LM on a server: only the tokenizer and the codec
        dtype = str(resolve_dtype(self._dtype, device)) if with_lm else "no-lm"
        key = (str(self._model_source), str(device), dtype)

        def load() -> SpeechModel:
            return load_model(str(self._model_source), device=device, dtype=self._dtype, voices=self._voices, lm=with_lm)

        return MODELS.acquire(key, load)

    async def start(self, frame: StartFrame) -> None:
        """Start the service and load the model without blocking the event loop."""
        await super().start(frame)
        try:
            await self.load()
            self._load_error = None
        except Exception as e:
            self._load_error = e
            await self.push_error(error_msg=f"{self}: {e}", exception=e)

    async def stop(self, frame: EndFrame) -> None:
        """Finish what is queued, then shut the engine down."""
        await super().stop(frame)
        await self._close_engine()

    async def cancel(self, frame: CancelFrame) -> None:
        """Stop at once: cancel the engine's work and shut it down."""
        await super().cancel(frame)
        await self._close_engine()

    async def _close_engine(self) -> None:
        """Let the shared engine go (the last user closes it), off the event loop."""
        engine, self._engine = self._engine, None
        if engine is not None:
            # Our requests were cancelled when run_tts ended; others' go on.
            await asyncio.to_thread(ENGINES.release, engine)
        if self._owns_model and self._model is not None:
            MODELS.release(self._model)
            self._owns_model = False

    # ------------------------------------------------------------------ synthesis

    def _submit(self, text: str) -> _AsyncSink:
        if self._engine is None:
            reason = self._load_error or "the model is not loaded"
            raise LocalTTSError(f"cannot synthesize: {reason}")
        sink = _AsyncSink(asyncio.get_running_loop())
        sink.request = self._engine.submit(text, str(self._settings.voice), self._params, sink)
        sink.request.text = text  # the service's own record; the engine keeps no text
        self._request_log.append(sink.request)
        return sink

    def _audio_frames(
        self, pcm: np.ndarray, context_id: str, resampler: Any, *, last: bool = False
    ) -> list[TTSAudioRawFrame]:
        """float32 PCM -> int16 frames of at most one codec frame (~85 ms) each."""
        assert self._model is not None
        if resampler is not None:
            pcm = resampler.resample_chunk(pcm, last=last)
        if pcm.size == 0:
            return []
        audio = (np.clip(pcm, -1.0, 1.0) * 32767.0).astype(np.int16)
        step = self._model.codec.samples_per_frame * self.sample_rate // self._model.sample_rate
        return [
            TTSAudioRawFrame(
                audio=audio[i : i + step].tobytes(),
                sample_rate=self.sample_rate,
                num_channels=1,
                context_id=context_id,
            )
            for i in range(0, audio.size, step)
        ]

    @property
    def _fade_samples(self) -> int:
        assert self._model is not None
        return round(self._edge_fade_ms * self._model.sample_rate / 1000)

    def _new_resampler(self) -> Any:
        assert self._model is not None
        if self.sample_rate == self._model.sample_rate:
            return None
        import soxr

        return soxr.ResampleStream(self._model.sample_rate, self.sample_rate, 1, dtype="float32")

    def _requests(self, text: str, context_id: str) -> list[str]:
        """The texts of the engine requests for ``text``: chunks, each a prompt that fits."""
        text = well_formed(text)
        # Aggregated LLM text is already chunked; a long TTSSpeakFrame text is not.
        long = text_width(text) > self._chunking.max_chunk_chars
        chunks = split_text(text, self._chunking) if long else [text]
        pieces = [piece for chunk in chunks for piece in self._fit_prompt(chunk)]
        if len(pieces) > len(chunks) and self._split_logged_for != context_id:
            self._split_logged_for = context_id  # once per turn, however many chunks
            logger.warning(
                f"{self}: text over the {self._model.prompt_budget}-token prompt budget (emoji, rare "
                f"scripts?) in this turn: split further, {len(pieces)} pieces of {len(chunks)} chunks"
            )
        return [piece for piece in pieces if is_speakable(piece)]

    def _fit_prompt(self, text: str) -> list[str]:
        """``text`` in pieces whose prompts fit the engine's prompt budget.

        Chunks are bounded in characters, but one character can be several tokens (up to 4
        byte-level tokens for emoji or rare CJK), and a prompt longer than the budget eats
        the room for audio or does not fit the cache at all. Such a chunk is halved, at a
        space if it has one, until every piece fits.
        """
        if self._model is None:  # not loaded: _submit says so
            return [text]
        model, voice = self._model, str(self._settings.voice)
        return fit_pieces(text, lambda piece: len(model.build_prompt(piece, voice)) <= model.prompt_budget)

    @traced_tts
    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Speak ``text``: one engine request per chunk, audio streamed as it is decoded."""
        await self.start_tts_usage_metrics(text)
        # Pipecat ends a context that goes stop_frame_timeout_s without audio as one that
        # has none (an error). A busy engine (prefill, other requests, a loaded CPU) can take
        # longer than that to the first audio: keep the context open while it works.
        keepalive = functools.partial(self._refresh_audio_context, context_id)
        interval = max(self._stop_frame_timeout_s / 2, 0.01)
        keepalive()  # this request's wait starts now, not at the context's last audio
        sinks: list[_AsyncSink] = []
        first_audio = True
        try:
            chunks = self._requests(text, context_id)
            if chunks:
                sinks.append(self._submit(chunks[0]))
            for i in range(len(chunks)):
                # Queue the next chunk now so the engine goes straight on to it.
                if i + 1 < len(chunks):
                    sinks.append(self._submit(chunks[i + 1]))
                resampler = self._new_resampler()
                edges = EdgeFade(self._fade_samples)
                async for pcm in sinks[i].audio(keepalive, interval):
                    if first_audio:
                        await self.stop_ttfb_metrics()
                        first_audio = False
                    for frame in self._audio_frames(edges.push(pcm), context_id, resampler):
                        yield frame
                # The utterance's end: the faded tail, and what the resampler still holds.
                for frame in self._audio_frames(edges.finish(), context_id, resampler, last=True):
                    yield frame
        except Exception as e:
            logger.warning(f"{self}: {type(e).__name__}: {e}")
            self._failed_contexts.add(context_id)
            yield ErrorFrame(error=f"{self}: {e}", exception=e)
        finally:
            # Interruption/cancel lands here as CancelledError: stop the engine's work too.
            for sink in sinks:
                if sink.request is not None:
                    sink.request.cancel()

    async def _record_context_audio_outcome(self, context_id: str, received_audio: bool) -> None:
        # Pipecat reports a context that ended without audio as an error, to catch providers
        # that fail silently. A failed request was reported by run_tts, with its cause; a
        # second, vaguer error about the same context would only be noise.
        if context_id in self._failed_contexts:
            self._failed_contexts.discard(context_id)
            return
        await super()._record_context_audio_outcome(context_id, received_audio)

    async def on_audio_context_interrupted(self, context_id: str) -> None:
        """An interrupted context never completes: forget it here."""
        self._failed_contexts.discard(context_id)
        await super().on_audio_context_interrupted(context_id)
