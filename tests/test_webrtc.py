"""examples/pipeline_bot.py over real WebRTC: an aiortc client on 127.0.0.1 hears the greeting.

The example's FastAPI app is served by uvicorn on a loopback socket; the client posts its
offer to the app's ``/api/offer`` endpoint (Pipecat's SmallWebRTC signalling), then ICE, DTLS,
SRTP and Opus run for real between two aiortc peers in this process. No ICE servers on either
side: only host candidates, so nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import socket
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError

from pipecat_localtts.engine.sampling import GenerationParams
from pipecat_localtts.testing import tiny_orpheus

ROOT = Path(__file__).resolve().parents[1]
RATE = 24000
FRAME_SAMPLES = 2048  # one codec frame at 24 kHz
OPUS_RATE = 48000  # what aiortc's Opus decoder gives
# Short greeting: random weights always run to the max-token guard, so it lasts
# ceil(max(0.8, 29 * 0.03) / 0.08533) = 11 codec frames = 0.939 s.
GREETING = "Hello from a local voice bot."
PARAMS = GenerationParams(seed=0, guard_seconds_per_char=0.03, guard_min_seconds=0.8)
# A 1 ms window (48 samples) is speech when its RMS is above this (int16). Opus-decoded
# digital silence is within a few LSB; the tiny model's noise has an RMS of thousands.
SILENCE_RMS = 300
# Speech duration on the wire vs what the engine produced. Justification: Opus smears each
# edge of the speech by a few ms (its MDCT overlap and pre-echo: +7 ms measured here); the
# output transport pads the last 40 ms chunk with digital silence, which is not counted;
# each inserted 10 ms silence slot (below) is known to within a few ms and rounded to its
# slot. 25 ms covers that; a lost or duplicated 10 ms transport chunk still exceeds it
# once it is 30 ms, and a lost or extra codec frame (85 ms) by far.
TOLERANCE_S = 0.025


def _load_example():
    spec = importlib.util.spec_from_file_location("pipeline_bot", ROOT / "examples" / "pipeline_bot.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["pipeline_bot"] = module
    spec.loader.exec_module(module)
    return module


def _candidate_types(sdp: str) -> set[str]:
    return set(re.findall(r"^a=candidate:.* typ (\w+)", sdp, flags=re.MULTILINE))


async def _receive(track, pcm: list[np.ndarray]) -> None:
    """Append each decoded 20 ms Opus frame (first channel, 48 kHz int16) to ``pcm``."""
    try:
        while True:
            frame = await track.recv()
            assert frame.sample_rate == OPUS_RATE
            channels = len(frame.layout.channels)
            pcm.append(frame.to_ndarray().reshape(-1, channels)[:, 0].copy())
    except MediaStreamError:
        pass


def _speech(pcm: np.ndarray) -> tuple[float, float, float]:
    """(seconds from the first to the last non-silent 1 ms, of which inserted silence, of
    which trailing silence after the last non-silent ms).

    Silence inside the speech is what Pipecat's SmallWebRTC output track sends when its
    queue runs dry mid-utterance (see the report: with a busy event loop it returns a 10 ms
    slot of zeros between two 40 ms chunks). Opus narrows each such slot to about
    10 k - 3 ms of quiet, so a quiet run of r ms is counted as round((r + 3) / 10) slots;
    runs under 4 ms are the noise's own quiet moments.
    """
    ms = OPUS_RATE // 1000
    n = pcm.size // ms
    rms = np.sqrt(np.mean(pcm[: n * ms].astype(np.float64).reshape(n, ms) ** 2, axis=1))
    loud = rms > SILENCE_RMS
    idx = np.flatnonzero(loud)
    if idx.size == 0:
        return 0.0, 0.0, n / 1000
    inside = loud[idx[0] : idx[-1] + 1]
    edges = np.flatnonzero(np.diff(np.concatenate([[1], inside.astype(np.int8), [1]])))
    runs = edges[1::2] - edges[0::2]  # lengths of the quiet runs inside the speech
    inserted_ms = sum(10 * round((r + 3) / 10) for r in runs if r >= 4)
    return (idx[-1] - idx[0] + 1) / 1000, inserted_ms / 1000, (n - 1 - idx[-1]) / 1000


async def test_pipeline_bot_greets_an_aiortc_client_over_webrtc():
    bot_example = _load_example()
    config = bot_example.BotConfig(model="tiny", params=PARAMS, greeting=GREETING)
    assert config.llm_model is None and config.stt_model is None  # no LLM: greeting only
    app = bot_example.create_app(config, tiny_orpheus())

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    server_task = asyncio.create_task(server.serve(sockets=[sock]))
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN/TURN: host candidates only
    received: list[np.ndarray] = []
    receivers: list[asyncio.Task] = []
    try:
        async with asyncio.timeout(10):
            while not server.started:
                assert not server_task.done(), "uvicorn did not start"
                await asyncio.sleep(0.02)

        @pc.on("track")
        def on_track(track):
            if track.kind == "audio":
                receivers.append(asyncio.create_task(_receive(track, received)))

        pc.addTrack(AudioStreamTrack())  # sendrecv audio; the client sends silence
        await pc.setLocalDescription(await pc.createOffer())  # gathers all candidates
        offer_sdp = pc.localDescription.sdp
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            response = await http.post("/api/offer", json={"sdp": offer_sdp, "type": "offer"})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["type"] == "answer" and answer["pc_id"]
        for sdp in (offer_sdp, answer["sdp"]):
            assert _candidate_types(sdp) == {"host"}, sdp
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))

        bot = app.state.bots[answer["pc_id"]]
        async with asyncio.timeout(20):
            while pc.connectionState != "connected":
                assert pc.connectionState not in ("failed", "closed"), pc.connectionState
                await asyncio.sleep(0.02)
            # The engine exists once the service has started; it goes away when the bot ends,
            # so keep hold of it to read its history.
            while bot.tts.engine is None:
                await asyncio.sleep(0.02)
            engine = bot.tts.engine
            while not any(r.text == GREETING for r in engine.history):
                await asyncio.sleep(0.05)
        produced = [r for r in engine.history if r.text == GREETING]
        assert len(produced) == 1
        produced_s = produced[0].audio_samples / RATE
        assert produced[0].audio_samples == 11 * FRAME_SAMPLES  # the guard, as computed above

        # The engine may finish faster than real time: wait until the greeting has played out
        # and 0.5 s of silence has followed it.
        async with asyncio.timeout(20):
            while True:
                await asyncio.sleep(0.1)
                span_s, _, trailing_s = _speech(np.concatenate(received or [np.zeros(0, np.int16)]))
                if span_s and trailing_s >= 0.5:
                    break
    finally:
        await pc.close()
        for task in receivers:
            task.cancel()
        server.should_exit = True  # lifespan shutdown ends the bots and closes their connections
        async with asyncio.timeout(20):
            await server_task
        sock.close()
    assert not app.state.bots, "the bot's pipeline did not end"

    span_s, inserted_s, _ = _speech(np.concatenate(received))
    speech_s = span_s - inserted_s
    print(
        f"produced {produced_s:.3f} s; received {speech_s:.3f} s of speech over {span_s:.3f} s "
        f"({inserted_s:.3f} s of silence inserted by the output track)"
    )
    assert abs(speech_s - produced_s) <= TOLERANCE_S, (speech_s, produced_s, span_s, inserted_s)
