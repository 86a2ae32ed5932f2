"""A phone agent: Twilio Media Streams in, LocalTTSService (Orpheus on your GPU) out.

A FastAPI app whose websocket endpoint ``/ws`` speaks Twilio's Media Streams protocol
(8 kHz μ-law) through Pipecat's ``FastAPIWebsocketTransport`` and ``TwilioFrameSerializer``.
Each call:

- is greeted as soon as the stream starts;
- is listened to with Silero VAD (the model ships inside Pipecat): when the caller talks
  over the bot, Pipecat interrupts it and the serializer sends Twilio a ``clear`` event, so
  the caller's phone drops the audio it still has queued (barge-in);
- is answered by an LLM when one is configured (``OPENAI_API_KEY``), with an OpenAI-compatible
  speech-to-text in front of it; without one the bot greets and listens;
- is hung up through Twilio's REST API when the stream stops (Twilio's ``stop`` event) or its
  websocket drops, when Twilio credentials are given.

Needs: this package with its examples extra (``pip install -e '.[examples]'``), and for real
speech a GPU with the Orpheus weights (hub id or local directory, see the README).
``LOCALTTS_MODEL=tiny`` runs anywhere, offline, with a tiny random model whose audio is
noise: a plumbing check of the whole call path.

Run:
    LOCALTTS_MODEL=/models/orpheus-3b-0.1-ft uvicorn examples.telephony_agent:app --host 0.0.0.0 --port 8765
    LOCALTTS_MODEL=tiny uvicorn examples.telephony_agent:app --host 0.0.0.0 --port 8765   # offline check

Point a Twilio number at it with TwiML such as
``<Response><Connect><Stream url="wss://HOST/ws"/></Connect></Response>`` (HOST reachable
from Twilio, e.g. behind a TLS-terminating proxy or tunnel).

Environment:
    LOCALTTS_SERVER_URL   speak through ``pipecat-localtts serve`` at this URL instead of a model
                          in this process (LOCALTTS_API_KEY: its key); LOCALTTS_MODEL is then unused
    LOCALTTS_MODEL        hub id, local directory or ``tiny`` (default: canopylabs/orpheus-3b-0.1-ft)
    LOCALTTS_VOICE        voice (default: the model's first, tara for Orpheus)
    LOCALTTS_DEVICE       torch device (default: CUDA when available)
    GREETING              what the bot says when the call starts
    OPENAI_API_KEY        enables the conversation: LLM + STT (OpenAI or any compatible server)
    OPENAI_BASE_URL       the LLM server (default: OpenAI)
    LLM_MODEL             LLM model (default: gpt-4.1-mini)
    SYSTEM_PROMPT         the LLM's instructions
    STT_MODEL             transcription model (default: gpt-4o-transcribe)
    STT_BASE_URL          transcription server (default: OPENAI_BASE_URL)
    STT_API_KEY           its key (default: OPENAI_API_KEY)
    TWILIO_ACCOUNT_SID    with TWILIO_AUTH_TOKEN: hang the call up when it ends
    TWILIO_AUTH_TOKEN
    TWILIO_API_BASE_URL   REST API root for the hang-up (default: https://api.twilio.com)

The model is loaded once per process (at startup); each call gets its own service and engine
on that model.
"""

from __future__ import annotations

import asyncio
import json
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, WebSocket
from loguru import logger
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.frames.frames import CancelWorkerFrame, Frame, TTSSpeakFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)
from pipecat.turns.user_turn_processor import UserTurnProcessor
from pipecat.workers.runner import WorkerRunner

from pipecat_localtts import LocalTTSService
from pipecat_localtts.websocket_service import SERVER_URL_ENV, remote_tts_from_env
from pipecat_localtts.engine.sampling import GenerationParams
from pipecat_localtts.models.orpheus import OrpheusModel, load_orpheus
from pipecat_localtts.testing import model_from_spec

TWILIO_RATE = 8000
GREETING = os.environ.get(
    "GREETING", "Hello, thanks for calling! I'm a voice agent running on a local speech model."
)
SYSTEM_PROMPT = os.environ.get(
    "SYSTEM_PROMPT",
    "You are a friendly assistant on a phone call. Answer in one or two short spoken "
    "sentences, without lists, markdown or emoji.",
)
GENERATION_PARAMS: GenerationParams | None = None  # None: the model family's sampling

_model: OrpheusModel | None = None
_model_lock = asyncio.Lock()


async def get_model() -> OrpheusModel:
    """The process's TTS model, loaded on first use (off the event loop) and then shared."""
    global _model
    async with _model_lock:
        if _model is None:
            device = os.environ.get("LOCALTTS_DEVICE") or None
            spec = await asyncio.to_thread(model_from_spec, os.environ.get("LOCALTTS_MODEL"), device=device)
            if isinstance(spec, OrpheusModel):
                _model = spec
            else:
                logger.info(f"loading TTS model {spec}")
                _model = await asyncio.to_thread(load_orpheus, spec, device=device)
        return _model


@asynccontextmanager
async def lifespan(_: FastAPI):
    if not os.environ.get(SERVER_URL_ENV):
        await get_model()  # pay the load time before the first call rings
    yield


app = FastAPI(lifespan=lifespan)


class TwilioCallSerializer(TwilioFrameSerializer):
    """Pipecat's Twilio serializer, plus: the stream's ``stop`` event ends the call.

    Pipecat's serializer ignores ``stop`` and hangs up only when it serializes an
    ``EndFrame``/``CancelFrame`` while the websocket is still open; once Twilio (or the
    network) has closed the socket, the transport no longer hands it any frame. So the call
    is hung up here, from the receive loop, and the pipeline is then cancelled.
    """

    async def deserialize(self, data: str | bytes) -> Frame | None:
        if isinstance(data, str) and '"stop"' in data:
            try:
                message = json.loads(data)
            except json.JSONDecodeError:
                message = None
            if isinstance(message, dict) and message.get("event") == "stop":
                logger.info(f"Twilio stream {self._stream_sid} stopped")
                await self.hang_up()
                return CancelWorkerFrame(reason="Twilio stream stopped")
        return await super().deserialize(data)

    async def hang_up(self) -> None:
        """Hang the call up through Twilio's REST API, once, if credentials were given."""
        if self._params.auto_hang_up and not self._hangup_attempted:
            self._hangup_attempted = True
            await self._hang_up_call()


@dataclass
class Call:
    """A call in progress (``ACTIVE_CALLS[call_sid]``): what a test or an admin page can look at."""

    stream_sid: str
    call_sid: str
    tts: LocalTTSService
    pipeline: Pipeline
    worker: PipelineWorker
    serializer: TwilioCallSerializer


ACTIVE_CALLS: dict[str, Call] = {}


def make_serializer(stream_sid: str, call_sid: str) -> TwilioCallSerializer:
    account_sid = os.environ.get("TWILIO_ACCOUNT_SID")
    auth_token = os.environ.get("TWILIO_AUTH_TOKEN")
    hang_up = bool(account_sid and auth_token and call_sid)
    return TwilioCallSerializer(
        stream_sid=stream_sid,
        call_sid=call_sid,
        account_sid=account_sid if hang_up else None,
        auth_token=auth_token if hang_up else None,
        base_url=os.environ.get("TWILIO_API_BASE_URL") or None,
        params=TwilioFrameSerializer.InputParams(auto_hang_up=hang_up),
    )


def conversation_processors() -> tuple[list[Any], list[Any]] | None:
    """(before TTS, after the output) for an STT + LLM conversation, or None if not configured."""
    api_key = os.environ.get("OPENAI_API_KEY")
    if not api_key:
        return None
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import (
        LLMContextAggregatorPair,
        LLMUserAggregatorParams,
    )
    from pipecat.services.openai.llm import OpenAILLMService
    from pipecat.services.openai.stt import OpenAISTTService

    base_url = os.environ.get("OPENAI_BASE_URL") or None
    stt = OpenAISTTService(
        api_key=os.environ.get("STT_API_KEY") or api_key,
        base_url=os.environ.get("STT_BASE_URL") or base_url,
        settings=OpenAISTTService.Settings(model=os.environ.get("STT_MODEL", "gpt-4o-transcribe")),
    )
    llm = OpenAILLMService(
        api_key=api_key,
        base_url=base_url,
        settings=OpenAILLMService.Settings(
            model=os.environ.get("LLM_MODEL", "gpt-4.1-mini"), system_instruction=SYSTEM_PROMPT
        ),
    )
    context = LLMContext()
    aggregators = LLMContextAggregatorPair(
        context, user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer())
    )
    return [stt, aggregators.user(), llm], [aggregators.assistant()]


async def run_call(websocket: WebSocket, stream_sid: str, call_sid: str) -> None:
    """Run one call's pipeline until the call ends."""
    serializer = make_serializer(stream_sid, call_sid)
    transport = FastAPIWebsocketTransport(
        websocket=websocket,
        params=FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_out_10ms_chunks=2,  # 20 ms media messages, as Twilio sends them
            serializer=serializer,
        ),
    )
    voice = os.environ.get("LOCALTTS_VOICE") or None  # None: the model's first
    # LOCALTTS_SERVER_URL set: speak through that server (no model in this process).
    tts = remote_tts_from_env(voice=voice, params=GENERATION_PARAMS) or LocalTTSService(
        model=await get_model(), voice=voice, params=GENERATION_PARAMS
    )
    conversation = conversation_processors()
    if conversation is None:
        # Greet and listen: VAD starts a user turn, and a user turn interrupts the bot.
        before_tts: list[Any] = [VADProcessor(vad_analyzer=SileroVADAnalyzer()), UserTurnProcessor()]
        after_output: list[Any] = []
    else:
        before_tts, after_output = conversation
    pipeline = Pipeline([transport.input(), *before_tts, tts, transport.output(), *after_output])
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=TWILIO_RATE,
            audio_out_sample_rate=TWILIO_RATE,
            enable_metrics=True,
        ),
        enable_rtvi=False,
    )

    @transport.event_handler("on_client_connected")
    async def on_client_connected(_transport, _websocket):
        await worker.queue_frames([TTSSpeakFrame(GREETING)])

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(_transport, _websocket):
        logger.info(f"call {call_sid}: websocket closed")
        await serializer.hang_up()  # a dropped stream leaves the caller in silence
        await worker.cancel(reason="websocket closed")

    ACTIVE_CALLS[call_sid] = Call(stream_sid, call_sid, tts, pipeline, worker, serializer)
    try:
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        await runner.run()
    finally:
        ACTIVE_CALLS.pop(call_sid, None)
        logger.info(f"call {call_sid}: ended")


@app.websocket("/ws")
async def twilio_media_stream(websocket: WebSocket) -> None:
    """Twilio Media Streams endpoint: ``<Stream url="wss://HOST/ws"/>``."""
    await websocket.accept()
    try:
        transport_type, call_data = await parse_telephony_websocket(websocket)
    except ValueError:
        return  # closed before the handshake
    if transport_type != "twilio" or not call_data.stream_id:
        logger.warning(f"not a Twilio media stream ({transport_type}); closing")
        await websocket.close(code=1008)
        return
    logger.info(f"call {call_data.call_id}: stream {call_data.stream_id} started")
    await run_call(websocket, call_data.stream_id, call_data.call_id or "")
