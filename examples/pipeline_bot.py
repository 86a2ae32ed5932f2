"""A complete Pipecat voice bot that speaks with LocalTTSService, served over WebRTC.

Pipeline (one per connected client):

    transport.input() -> [STT] -> user context aggregator -> [LLM] -> LocalTTSService
        -> transport.output() -> assistant context aggregator

Needs: this package installed with the WebRTC extras of Pipecat (``pipecat-ai[webrtc,runner]``:
aiortc, FastAPI, uvicorn). With the default model, a GPU and the Orpheus weights (hub id or
local directory). ``--model tiny`` runs anywhere, offline, with a tiny random model whose audio
is noise: a plumbing check of the whole WebRTC path.

Run:
    python examples/pipeline_bot.py --model tiny           # offline: greets you with noise
    OPENAI_API_KEY=sk-... python examples/pipeline_bot.py --model /models/orpheus-3b-0.1-ft
    # then open http://127.0.0.1:7860/ (Pipecat's prebuilt client, if installed) or POST a
    # WebRTC offer {"sdp": ..., "type": "offer"} to http://127.0.0.1:7860/api/offer
    python examples/pipeline_bot.py --transport local --model tiny  # microphone/speakers (PyAudio)

Environment (all optional):
    LOCALTTS_SERVER_URL  speak through ``pipecat-localtts serve`` at this URL instead of a model
                      in this process (LOCALTTS_API_KEY: its key); no model is loaded then
    LOCALTTS_MODEL    hub id, checkpoint directory or "tiny" (``--model`` wins)
    LOCALTTS_VOICE    voice, default the model's first (tara for Orpheus; ``--voice`` wins)
    LOCALTTS_DEVICE   torch device, default CUDA when available (``--device`` wins)
    OPENAI_API_KEY    the LLM is enabled when this or OPENAI_BASE_URL is set; any
    OPENAI_BASE_URL   OpenAI-compatible endpoint works (vLLM, Ollama, llama.cpp server...)
    LLM_MODEL         the LLM's model name, default gpt-4.1-mini
    STT_MODEL         enables speech-to-text on the same OpenAI-compatible endpoint (e.g.
                      whisper-1), with Silero VAD; STT_BASE_URL overrides the endpoint

Without an LLM the bot only greets each client (a ``TTSSpeakFrame`` when it connects), which
checks the audio path end to end without any cloud service. With one, the LLM greets and
answers; without STT there is nothing to answer, so set STT_MODEL for a conversation.

For programs and tests: ``create_app(config)`` builds the FastAPI app (signalling endpoint
``POST``/``PATCH /api/offer``) without serving it; ``VoiceBot(transport, config, model)``
builds the pipeline for one connection, and ``app.state.bots`` maps each peer connection id
to its running ``VoiceBot``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from loguru import logger
from pipecat.frames.frames import LLMRunFrame, TTSSpeakFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.transports.base_transport import BaseTransport, TransportParams
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
from pipecat.transports.smallwebrtc.request_handler import (
    SmallWebRTCPatchRequest,
    SmallWebRTCRequest,
    SmallWebRTCRequestHandler,
)
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport
from pipecat.workers.runner import WorkerRunner

from pipecat_localtts import LocalTTSService
from pipecat_localtts.websocket_service import SERVER_URL_ENV, remote_tts_from_env
from pipecat_localtts.engine.sampling import GenerationParams
from pipecat_localtts.errors import LocalTTSError
from pipecat_localtts.models.orpheus import OrpheusModel, load_orpheus
from pipecat_localtts.testing import model_from_spec

GREETING = "Hello! I am a voice bot speaking with a local model. How can I help you today?"
SYSTEM_PROMPT = (
    "You are a friendly voice assistant. Your replies are spoken aloud, so answer in one or two "
    "short sentences of plain text, without lists, markdown or emoji."
)
SAMPLE_RATE = 24000  # SNAC's native rate: the transport resamples (and flushes) if it must


@dataclass
class BotConfig:
    """What a bot is made of. ``llm_model``/``stt_model`` ``None`` = that service is off."""

    model: str = "canopylabs/orpheus-3b-0.1-ft"
    voice: str | None = None  # None: the model's first (Orpheus: tara)
    device: str | None = None
    params: GenerationParams | None = None  # None: the model family's sampling
    greeting: str = GREETING
    system_prompt: str = SYSTEM_PROMPT
    llm_model: str | None = None
    llm_api_key: str | None = None
    llm_base_url: str | None = None
    stt_model: str | None = None
    stt_base_url: str | None = None

    @classmethod
    def from_env(cls, **overrides: Any) -> BotConfig:
        """Read the environment variables of the module docstring; ``None`` overrides are ignored."""
        env = os.environ.get
        llm_on = bool(env("OPENAI_API_KEY") or env("OPENAI_BASE_URL"))
        values: dict[str, Any] = dict(
            model=env("LOCALTTS_MODEL") or cls.model,
            voice=env("LOCALTTS_VOICE") or cls.voice,
            device=env("LOCALTTS_DEVICE") or None,
            llm_model=(env("LLM_MODEL") or "gpt-4.1-mini") if llm_on else None,
            llm_api_key=env("OPENAI_API_KEY") or None,
            llm_base_url=env("OPENAI_BASE_URL") or None,
            stt_model=env("STT_MODEL") or None,
            stt_base_url=env("STT_BASE_URL") or env("OPENAI_BASE_URL") or None,
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def load_model(spec: str, device: str | None = None) -> OrpheusModel:
    """Load the model once per process (``"tiny"`` = tiny random model); blocking.

    Raises:
        ModelLoadError: The weights could not be had.
    """
    model = model_from_spec(spec, device=device)
    return load_orpheus(model, device=device) if isinstance(model, str) else model


class VoiceBot:
    """The pipeline of one conversation on ``transport``; ``await run()`` until it ends."""

    def __init__(
        self, transport: BaseTransport, config: BotConfig, model: OrpheusModel | None, *, greet_on_connect: bool = True
    ) -> None:
        self.config = config
        self.tts = remote_tts_from_env(voice=config.voice, params=config.params) or LocalTTSService(
            model=model, voice=config.voice, params=config.params
        )
        self.llm = self._build_llm(config)
        self.stt = self._build_stt(config)
        user_params = LLMUserAggregatorParams()
        if self.stt is not None:
            from pipecat.audio.vad.silero import SileroVADAnalyzer

            user_params.vad_analyzer = SileroVADAnalyzer()
        self.context = LLMContext()
        user_aggregator, assistant_aggregator = LLMContextAggregatorPair(
            self.context, user_params=user_params
        )
        processors = [
            transport.input(),
            self.stt,
            user_aggregator,
            self.llm,
            self.tts,
            transport.output(),
            assistant_aggregator,
        ]
        self.worker = PipelineWorker(
            Pipeline([p for p in processors if p is not None]),
            params=PipelineParams(audio_out_sample_rate=SAMPLE_RATE, enable_metrics=True),
        )
        self._runner: WorkerRunner | None = None

        if greet_on_connect:

            @transport.event_handler("on_client_connected")
            async def on_client_connected(transport: BaseTransport, client: Any) -> None:
                await self.greet()

        @transport.event_handler("on_client_disconnected")
        async def on_client_disconnected(transport: BaseTransport, client: Any) -> None:
            logger.info("client disconnected: ending its pipeline")
            await self.worker.cancel()

    @staticmethod
    def _build_llm(config: BotConfig):
        if not config.llm_model:
            return None
        from pipecat.services.openai.llm import OpenAILLMService

        return OpenAILLMService(
            api_key=config.llm_api_key or "not-needed",  # local servers often take any key
            base_url=config.llm_base_url,
            settings=OpenAILLMService.Settings(
                model=config.llm_model, system_instruction=config.system_prompt
            ),
        )

    @staticmethod
    def _build_stt(config: BotConfig):
        if not config.stt_model:
            return None
        from pipecat.services.openai.stt import OpenAISTTService

        return OpenAISTTService(
            api_key=config.llm_api_key or "not-needed",
            base_url=config.stt_base_url,
            settings=OpenAISTTService.Settings(model=config.stt_model),
        )

    async def greet(self) -> None:
        """The LLM greets the user if there is one; otherwise the fixed greeting is spoken."""
        if self.llm is not None:
            self.context.add_message({"role": "user", "content": "Greet me briefly."})
            await self.worker.queue_frames([LLMRunFrame()])
        else:
            await self.worker.queue_frames([TTSSpeakFrame(self.config.greeting)])

    async def run(self) -> None:
        """Run the pipeline until the client leaves or :meth:`cancel` is called."""
        self._runner = WorkerRunner(handle_sigint=False)
        await self._runner.add_workers(self.worker)
        await self._runner.run()

    async def cancel(self) -> None:
        await self.worker.cancel()


def create_app(config: BotConfig, model: OrpheusModel | None = None) -> FastAPI:
    """The FastAPI app: WebRTC signalling at ``/api/offer`` and one ``VoiceBot`` per client.

    The model is loaded once (at startup, off the event loop) unless given; every connection
    gets its own ``LocalTTSService`` (and engine) on that model. No ICE servers are configured:
    the bot offers host candidates only (add STUN/TURN for clients behind NAT).
    """
    handler = SmallWebRTCRequestHandler()
    tasks: set[asyncio.Task] = set()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if app.state.model is None and not os.environ.get(SERVER_URL_ENV):
            app.state.model = await asyncio.to_thread(load_model, config.model, config.device)
        yield
        for bot in list(app.state.bots.values()):
            await bot.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        await handler.close()

    app = FastAPI(lifespan=lifespan)
    app.state.model = model
    app.state.bots = {}

    async def run_bot(pc_id: str, bot: VoiceBot) -> None:
        try:
            await bot.run()
        except Exception:
            logger.exception(f"bot {pc_id} failed")
        finally:
            app.state.bots.pop(pc_id, None)

    @app.post("/api/offer")
    async def offer(request: SmallWebRTCRequest) -> dict[str, str] | None:
        async def on_connection(connection: SmallWebRTCConnection) -> None:
            transport = SmallWebRTCTransport(
                webrtc_connection=connection,
                params=TransportParams(audio_in_enabled=True, audio_out_enabled=True),
            )
            bot = VoiceBot(transport, config, app.state.model)
            app.state.bots[connection.pc_id] = bot
            task = asyncio.create_task(run_bot(connection.pc_id, bot))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        return await handler.handle_web_request(request, on_connection)

    @app.patch("/api/offer")
    async def ice_candidates(request: SmallWebRTCPatchRequest) -> dict[str, str]:
        await handler.handle_patch_request(request)
        return {"status": "success"}

    try:  # Pipecat's prebuilt browser client, when installed (pipecat-ai-prebuilt)
        from fastapi.responses import RedirectResponse
        from pipecat_ai_prebuilt.frontend import PipecatPrebuiltUI

        app.mount("/client", PipecatPrebuiltUI)

        @app.get("/", include_in_schema=False)
        async def root() -> RedirectResponse:
            return RedirectResponse(url="/client/")
    except ImportError:
        pass

    return app


async def run_local(config: BotConfig, model: OrpheusModel | None) -> None:
    """The same bot on the local microphone and speakers (needs PyAudio)."""
    from pipecat.transports.local.audio import (
        LocalAudioTransport,
        LocalAudioTransportParams,
    )

    transport = LocalAudioTransport(
        LocalAudioTransportParams(
            audio_in_enabled=True, audio_out_enabled=True, audio_out_sample_rate=SAMPLE_RATE
        )
    )
    bot = VoiceBot(transport, config, model, greet_on_connect=False)
    await bot.tts.load()
    await bot.greet()
    await bot.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="hub id, directory or 'tiny' (env LOCALTTS_MODEL)")
    parser.add_argument("--voice", help="voice (env LOCALTTS_VOICE)")
    parser.add_argument("--device", help="torch device (env LOCALTTS_DEVICE)")
    parser.add_argument("--transport", choices=["webrtc", "local"], default="webrtc")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    config = BotConfig.from_env(model=args.model, voice=args.voice, device=args.device)
    logger.info(
        f"model={config.model} voice={config.voice} "
        f"llm={config.llm_model or 'off (greeting only)'} stt={config.stt_model or 'off'}"
    )
    try:
        # With LOCALTTS_SERVER_URL the server speaks: no model in this process.
        model = None if os.environ.get(SERVER_URL_ENV) else load_model(config.model, config.device)
    except LocalTTSError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from e

    if args.transport == "local":
        asyncio.run(run_local(config, model))
        return
    import uvicorn

    uvicorn.run(create_app(config, model), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
