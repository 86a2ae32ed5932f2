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
# A 10 ms slot is speech when the RMS of its middle 2 ms is above this (int16). Opus-decoded
# digital silence is within a few LSB; the tiny model's noise has an RMS near 9000.
SILENCE_RMS = 300
# Speech duration on the wire (10 ms slots that carry speech) minus what the engine produced
# must lie in [-10 ms, +30 ms]. Justification: counting whole slots rounds the produced
# 939.7 ms up (+0.3 ms: the transport pads the last slot with zeros); Opus smears each edge
# by a few ms (pre-echo before the onset, ringing after the end; +7 ms in total measured at
# 1 ms resolution), which can make one more slot loud at either end (+20 ms) or shift the
# slot grid found from the onset (-10 ms at worst). On loopback nothing is lost (checked:
# the decoded frames' timestamps are contiguous). Observed: +10 to +20 ms. A lost 40 ms
# transport chunk (-40 ms), a duplicated one (+40 ms) or a lost or extra codec frame
# (85 ms) falls outside. When the output track ran dry mid-utterance (a loaded machine),
# each dropout adds two more smeared edges: +10 ms each is allowed for them.
TOLERANCE_S = (-0.01, 0.03)


def _load_example():
    spec = importlib.util.spec_from_file_location("pipeline_bot", ROOT / "examples" / "pipeline_bot.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["pipeline_bot"] = module
    spec.loader.exec_module(module)
    return module


def _candidate_types(sdp: str) -> set[str]:
    return set(re.findall(r"^a=candidate:.* typ (\w+)", sdp, flags=re.MULTILINE))


async def _receive(track, pcm: list[np.ndarray], pts: list[int]) -> None:
    """Append each decoded 20 ms Opus frame (first channel, 48 kHz int16) to ``pcm``."""
    try:
        while True:
            frame = await track.recv()
            pts.append(frame.pts)
            assert frame.sample_rate == OPUS_RATE
            channels = len(frame.layout.channels)
            pcm.append(frame.to_ndarray().reshape(-1, channels)[:, 0].copy())
    except MediaStreamError:
        pass


def _speech(pcm: np.ndarray) -> tuple[float, float, float, int]:
    """Speech received, in the bot track's 10 ms slots: (seconds of slots that carry speech,
    seconds from the first to the last of them, seconds of silence after the last).

    Pipecat's SmallWebRTC output track sends 10 ms frames, and a frame of zeros whenever its
    queue is empty, also in the middle of an utterance when audio comes late (see the
    report). Those slots lie on a grid that starts where the speech starts (the transport
    queues whole 10 ms chunks), shifted by the codec delay. Each slot is judged by the RMS of
    its middle 2 ms, well away from the few ms by which Opus smears an edge. The last value
    is the number of dropouts (runs of silent slots inside the speech).
    """
    slot = OPUS_RATE // 100
    loud_samples = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 4 * SILENCE_RMS)
    if loud_samples.size == 0:
        return 0.0, 0.0, pcm.size / OPUS_RATE, 0
    start = max(int(loud_samples[0]) - slot // 20, 0)  # onset, less a little Opus pre-echo
    n = (pcm.size - start) // slot
    middles = pcm[start : start + n * slot].astype(np.float64).reshape(n, slot)[:, 2 * slot // 5 : 3 * slot // 5]
    loud = np.flatnonzero(np.sqrt(np.mean(middles**2, axis=1)) > SILENCE_RMS)
    if loud.size == 0:
        return 0.0, 0.0, pcm.size / OPUS_RATE, 0
    dropouts = int(np.count_nonzero(np.diff(loud) > 1))
    return loud.size / 100, (loud[-1] - loud[0] + 1) / 100, (n - 1 - loud[-1]) / 100, dropouts


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
    timestamps: list[int] = []
    receivers: list[asyncio.Task] = []
    try:
        async with asyncio.timeout(10):
            while not server.started:
                assert not server_task.done(), "uvicorn did not start"
                await asyncio.sleep(0.02)

        @pc.on("track")
        def on_track(track):
            if track.kind == "audio":
                receivers.append(asyncio.create_task(_receive(track, received, timestamps)))

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
            # The service keeps its own requests (the shared engine keeps none).
            while not any(r.text == GREETING and r.done for r in bot.tts.requests):
                await asyncio.sleep(0.05)
        produced = [r for r in bot.tts.requests if r.text == GREETING]
        assert len(produced) == 1
        produced_s = produced[0].audio_samples / RATE
        assert produced[0].audio_samples == 11 * FRAME_SAMPLES  # the guard, as computed above

        # The engine may finish faster than real time: wait until the greeting has played out
        # and 0.5 s of silence has followed it.
        async with asyncio.timeout(20):
            while True:
                await asyncio.sleep(0.1)
                speech_s, _, trailing_s, _ = _speech(np.concatenate(received or [np.zeros(0, np.int16)]))
                if speech_s and trailing_s >= 0.5:
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

    # Every Opus frame arrived and was decoded once, in order: no loss, no concealment.
    assert np.all(np.diff(timestamps) == OPUS_RATE // 50), np.diff(timestamps).tolist()
    speech_s, span_s, _, dropouts = _speech(np.concatenate(received))
    print(
        f"produced {produced_s:.3f} s; received {speech_s:.2f} s of speech over {span_s:.2f} s "
        f"({span_s - speech_s:.2f} s of silence inserted by the output track, {dropouts} dropouts)"
    )
    low, high = TOLERANCE_S
    high += 2 * 0.01 * dropouts  # each edge of a dropout is smeared too: one slot each
    assert low <= speech_s - produced_s <= high, (speech_s, produced_s, span_s, dropouts)
