"""The smallest Pipecat pipeline with LocalTTSService: stream an LLM-style reply to a WAV file.

Needs: this package installed (``bash scripts/setup.sh``). With the default model, a GPU and
the Orpheus weights (hub id or local directory); ``--model tiny`` runs anywhere, offline, with
a tiny random model whose audio is noise (a plumbing check).

Run:
    python examples/speak_to_wav.py --model tiny --out reply.wav
    python examples/speak_to_wav.py --model /models/orpheus-3b-0.1-ft --voice leah --out reply.wav
    LOCALTTS_SERVER_URL=http://gpu-box:8000 python examples/speak_to_wav.py --out reply.wav
        # no model here: speak through ``pipecat-localtts serve`` (key: LOCALTTS_API_KEY)

The text is fed token by token, as an LLM service would, between LLMFullResponseStart/End
frames; the service's adaptive chunker sends the first clause to the model at once.
"""

from __future__ import annotations

import argparse
import asyncio
import wave

from pipecat.frames.frames import (
    EndFrame,
    Frame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from pipecat_localtts import LocalTTSService
from pipecat_localtts.websocket_service import remote_tts_from_env

REPLY = (
    "Sure, I can help with that. <chuckle> Orpheus runs right here on your own machine, "
    "so there is no cloud bill for every word. Ask me anything else!"
)


class WavWriter(FrameProcessor):
    """Collects the audio frames that reach it and writes them to a WAV at the end."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path
        self._audio = bytearray()
        self._rate = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            self._audio += frame.audio
            self._rate = frame.sample_rate
        elif isinstance(frame, EndFrame):
            with wave.open(self._path, "wb") as wav:
                wav.setnchannels(1)
                wav.setsampwidth(2)
                wav.setframerate(self._rate or 24000)
                wav.writeframes(bytes(self._audio))
        await self.push_frame(frame, direction)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="canopylabs/orpheus-3b-0.1-ft",
        help="hub id or directory (Orpheus or NeuTTS), or 'tiny' / 'tiny-neutts' (random weights: noise)",
    )  # fmt: skip
    parser.add_argument("--voice", default=None, help="voice (default: the model's first, e.g. tara)")
    parser.add_argument("--out", default="reply.wav")
    args = parser.parse_args()

    tts = remote_tts_from_env(voice=args.voice)  # LOCALTTS_SERVER_URL set: the server speaks
    if tts is None:
        from pipecat_localtts.testing import model_from_spec

        tts = LocalTTSService(model=model_from_spec(args.model), voice=args.voice)
        await tts.load()  # pay the load time before the pipeline starts

    worker = PipelineWorker(Pipeline([tts, WavWriter(args.out)]), params=PipelineParams())
    frames: list[Frame] = [LLMFullResponseStartFrame()]
    frames += [LLMTextFrame(REPLY[i : i + 4]) for i in range(0, len(REPLY), 4)]  # ~token sized
    frames += [LLMFullResponseEndFrame(), EndFrame()]
    await worker.queue_frames(frames)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()  # returns once the EndFrame has gone through the pipeline
    print(f"wrote {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
