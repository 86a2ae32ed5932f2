"""A LiveKit room bot that speaks with LocalTTSService.

It joins a LiveKit room with Pipecat's ``LiveKitTransport``, greets the first participant who
joins, and then speaks what participants send as chat (LiveKit data messages: plain text, or
JSON with a ``"message"`` or ``"text"`` field). With an OpenAI-compatible LLM configured, chat
messages go to the LLM and its reply is spoken instead. When the last participant leaves, the
bot ends. (No speech-to-text here: the bot does not transcribe what people say.)

Needs: this package with the LiveKit extra (``pip install -e ".[livekit]"``, or
``bash scripts/setup.sh``) and a LiveKit server. With the default model, a GPU and the Orpheus
weights (hub id or local directory); ``--model tiny`` runs on a CPU with a tiny random model
whose audio is noise (a plumbing check).

Environment:
    LIVEKIT_URL          server URL, e.g. ws://localhost:7880 (or --url)
    LIVEKIT_ROOM_NAME    room to join (or --room; default "localtts")
    LIVEKIT_TOKEN        a ready access token for the bot; if unset, one is minted from
    LIVEKIT_API_KEY      ... the API key and
    LIVEKIT_API_SECRET   ... secret (identity "localtts-bot", room-join grant, agent=True)
    LOCALTTS_SERVER_URL  speak through ``pipecat-localtts serve`` at this URL (LOCALTTS_API_KEY:
                         its key) instead of a model in this process
    LOCALTTS_MODEL       hub id, local directory or "tiny" (or --model)
    OPENAI_API_KEY       optional: enables the LLM (any OpenAI-compatible server)
    OPENAI_BASE_URL      optional: e.g. http://localhost:11434/v1 for Ollama
    LLM_MODEL            optional: model name (default gpt-4o-mini)

Run against a local dev server:
    livekit-server --dev                       # ws://localhost:7880, key devkey, secret secret
    export LIVEKIT_URL=ws://localhost:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret
    python examples/livekit_bot.py --model tiny --room demo
    # The bot prints a user token for the room; join with it, e.g. at
    # https://meet.livekit.io (custom server ws://localhost:7880) or any LiveKit client.

The pieces are plain functions so a test can build them without connecting:
``livekit_config()`` (url, token, room), ``build_tts()``, ``build_transport()``,
``build_llm()`` and ``build_worker()`` (pipeline + event handlers). Nothing connects until the
worker runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from loguru import logger
from pipecat.frames.frames import EndFrame, LLMMessagesAppendFrame, TTSSpeakFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import (
    PipelineParams,
    PipelineWorker,
    ProcessorUnusablePolicy,
)
from pipecat.runner.livekit import generate_token, generate_token_with_agent
from pipecat.transports.livekit.transport import LiveKitParams, LiveKitTransport
from pipecat.workers.runner import WorkerRunner

from pipecat_localtts import LocalTTSService
from pipecat_localtts.websocket_service import remote_tts_from_env
from pipecat_localtts.testing import model_from_spec

GREETING = "Hello! I am speaking with a local text to speech model. Send me a chat message."
SYSTEM_PROMPT = (
    "You are a friendly voice assistant. Your replies are spoken aloud, so answer in one or two "
    "short plain sentences, without lists, markdown or emoji."
)
BOT_IDENTITY = "localtts-bot"
DEFAULT_ROOM = "localtts"


@dataclass(frozen=True)
class LiveKitConfig:
    url: str
    token: str
    room: str
    user_token: str | None = None  # minted alongside the bot's when key/secret are known


def livekit_config(
    env: Mapping[str, str] | None = None, *, url: str | None = None, room: str | None = None
) -> LiveKitConfig:
    """url/token/room from arguments and the ``LIVEKIT_*`` variables; mints tokens from
    ``LIVEKIT_API_KEY``/``LIVEKIT_API_SECRET`` unless ``LIVEKIT_TOKEN`` is given."""
    env = os.environ if env is None else env
    url = url or env.get("LIVEKIT_URL")
    room = room or env.get("LIVEKIT_ROOM_NAME") or DEFAULT_ROOM
    if not url:
        raise SystemExit("Set LIVEKIT_URL (e.g. ws://localhost:7880) or pass --url.")
    token = env.get("LIVEKIT_TOKEN")
    key, secret = env.get("LIVEKIT_API_KEY"), env.get("LIVEKIT_API_SECRET")
    user_token = None
    if key and secret:
        user_token = generate_token(room, "user", key, secret)
        if not token:
            token = generate_token_with_agent(room, BOT_IDENTITY, key, secret)
    if not token:
        raise SystemExit("Set LIVEKIT_TOKEN, or LIVEKIT_API_KEY and LIVEKIT_API_SECRET.")
    return LiveKitConfig(url=url, token=token, room=room, user_token=user_token)


def build_tts(model: str | object | None = None, *, voice: str | None = None, **kwargs):
    """LocalTTSService at SNAC's native 24 kHz (the transport resamples if it must), or,
    with LOCALTTS_SERVER_URL set, LocalTTSWebsocketService speaking through that server."""
    remote = remote_tts_from_env(voice=voice, sample_rate=24000)
    if remote is not None and model is None:
        return remote
    spec = model if model is not None else os.environ.get("LOCALTTS_MODEL")
    resolved = model_from_spec(spec) if spec is None or isinstance(spec, str) else spec
    return LocalTTSService(model=resolved, voice=voice, sample_rate=24000, **kwargs)


def build_transport(config: LiveKitConfig, **params) -> LiveKitTransport:
    """Audio out only; inbound audio is off because nothing here transcribes it."""
    lk_params = LiveKitParams(audio_out_enabled=True, audio_in_enabled=False, **params)
    return LiveKitTransport(config.url, config.token, config.room, params=lk_params)


def build_llm(env: Mapping[str, str] | None = None):
    """An OpenAI-compatible LLM when ``OPENAI_API_KEY`` is set, else None."""
    env = os.environ if env is None else env
    if not env.get("OPENAI_API_KEY"):
        return None
    from pipecat.services.openai.llm import OpenAILLMService

    return OpenAILLMService(
        api_key=env["OPENAI_API_KEY"],
        base_url=env.get("OPENAI_BASE_URL") or None,
        settings=OpenAILLMService.Settings(model=env.get("LLM_MODEL") or "gpt-4o-mini"),
    )


def chat_text(data: bytes) -> str | None:
    """The text of a chat data message: plain UTF-8, or JSON with "message" or "text"."""
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return text or None
    if isinstance(obj, dict):
        value = obj.get("message") or obj.get("text")
        return value.strip() or None if isinstance(value, str) else None
    return text if isinstance(obj, str) else None


def build_worker(
    transport: LiveKitTransport,
    tts: LocalTTSService,
    *,
    llm=None,
    greeting: str = GREETING,
    end_when_alone: bool = True,
) -> PipelineWorker:
    """The pipeline, plus the room event handlers that drive it."""
    if llm is None:
        processors = [transport.input(), tts, transport.output()]
    else:
        from pipecat.processors.aggregators.llm_context import LLMContext
        from pipecat.processors.aggregators.llm_response_universal import (
            LLMContextAggregatorPair,
        )

        context = LLMContext([{"role": "system", "content": SYSTEM_PROMPT}])
        aggregators = LLMContextAggregatorPair(context)
        processors = [
            transport.input(),
            aggregators.user(),
            llm,
            tts,
            transport.output(),
            aggregators.assistant(),
        ]
    worker = PipelineWorker(
        Pipeline(processors),
        params=PipelineParams(audio_out_sample_rate=24000),
        # The room connection failing (bad URL/token, server down) leaves the transport
        # unusable; without this the bot would sit there forever.
        processor_unusable_policy=ProcessorUnusablePolicy.CANCEL,
    )

    @transport.event_handler("on_first_participant_joined")
    async def on_first_participant_joined(transport, participant_id):
        logger.info(f"{participant_id} joined: greeting")
        await worker.queue_frame(TTSSpeakFrame(greeting))

    @transport.event_handler("on_data_received")
    async def on_data_received(transport, data, participant_id):
        text = chat_text(data)
        if not text:
            return
        logger.info(f"chat from {participant_id}: {text!r}")
        if llm is None:
            await worker.queue_frame(TTSSpeakFrame(text))
        else:
            message = {"role": "user", "content": text}
            await worker.queue_frame(LLMMessagesAppendFrame(messages=[message], run_llm=True))

    if end_when_alone:

        @transport.event_handler("on_participant_disconnected")
        async def on_participant_disconnected(transport, participant_id):
            if not transport.get_participants():
                logger.info("last participant left: ending")
                await worker.queue_frame(EndFrame())

    return worker


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="hub id, directory or 'tiny' (default: $LOCALTTS_MODEL or Orpheus)")
    parser.add_argument("--voice", default=None, help="voice (default: the model's first, e.g. tara)")
    parser.add_argument("--url", default=None, help="LiveKit URL (default: $LIVEKIT_URL)")
    parser.add_argument("--room", default=None, help="room name (default: $LIVEKIT_ROOM_NAME or 'localtts')")
    parser.add_argument("--greeting", default=GREETING)
    args = parser.parse_args()

    config = livekit_config(url=args.url, room=args.room)
    if config.user_token:
        print(f"room {config.room!r} at {config.url}; user token:\n{config.user_token}", flush=True)
    tts = build_tts(args.model, voice=args.voice)
    await tts.load()  # pay the load time before joining the room
    worker = build_worker(build_transport(config), tts, llm=build_llm(), greeting=args.greeting)
    fatal: list[str] = []

    @worker.event_handler("on_pipeline_error")
    async def on_pipeline_error(worker, frame):
        processor = getattr(frame, "processor", None)
        if processor is not None and not processor.is_usable:
            fatal.append(f"{processor}: {frame.error}")

    runner = WorkerRunner()
    await runner.add_workers(worker)
    await runner.run()
    if fatal:
        raise SystemExit(f"bot stopped: {fatal[0]}")


if __name__ == "__main__":
    asyncio.run(main())
