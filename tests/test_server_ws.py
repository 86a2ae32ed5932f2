"""The TTS server's WebSocket protocol (``/v1/audio/stream``) with a real ``websockets`` client,
and 16 mixed HTTP and WebSocket clients at once."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import websockets

from pipecat_localtts.chunking import AdaptiveChunker
from pipecat_localtts.engine.sampling import GenerationParams
from pipecat_localtts.server.protocol import pack_audio, unpack_audio

from server_harness import RunningServer, pcm_diff, solo_pcm

FADE = round(0.005 * 24000)
PIECES = ["Sure", ",", " I can", " help", " with", " that", ".", " Let me", " check", " the", " order", "."]


@pytest.fixture(scope="module")
def server():
    with RunningServer(max_streams=32) as running:
        yield running


class Client:
    """A protocol client: sends JSON, sorts what comes back by context."""

    def __init__(self, url: str, **connect) -> None:
        self.url = url
        self.connect = connect
        self.audio: dict[str, bytearray] = {}
        self.events: list[dict] = []
        self.log: list[tuple[float, str, str]] = []  # (time, kind, context id)

    async def __aenter__(self) -> Client:
        self.ws = await websockets.connect(self.url, **self.connect)
        self.ready = json.loads(await self.ws.recv())
        return self

    async def __aexit__(self, *exc) -> None:
        await self.ws.close()

    async def send(self, **message) -> None:
        await self.ws.send(json.dumps(message))

    async def until(self, predicate, timeout: float = 60) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                message = await self.ws.recv()
                if isinstance(message, bytes):
                    cid, pcm = unpack_audio(message)
                    self.audio.setdefault(cid, bytearray()).extend(pcm)
                    self.log.append((time.monotonic(), "audio", cid))
                else:
                    event = json.loads(message)
                    self.events.append(event)
                    self.log.append((time.monotonic(), event["type"], event.get("context_id")))

    def event(self, kind: str, cid: str | None = None) -> dict | None:
        for event in self.events:
            if event["type"] == kind and (cid is None or event.get("context_id") == cid):
                return event
        return None

    async def turn(self, cid: str, pieces: list[str], **settings) -> bytes:
        for i, piece in enumerate(pieces):
            await self.send(type="speak", context_id=cid, text=piece, **(settings if i == 0 else {}))
        await self.send(type="flush", context_id=cid)
        await self.until(lambda: self.event("done", cid) or self.event("error", cid))
        assert self.event("done", cid), self.events
        return bytes(self.audio.get(cid, b""))


def expected_ws(server: RunningServer, pieces: list[str], seed: int, voice: str = "tara") -> bytes:
    """The context's audio alone: the server's chunker over the same pieces, each chunk solo."""
    chunker = AdaptiveChunker(server.config.chunking)
    chunks = [c for p in pieces for c in chunker.push(p)] + chunker.flush()
    texts = [t for c in chunks for t in server.tts.fit(c, voice)]
    return solo_pcm(server.tts.engine, texts, voice, server.tts.params({"seed": seed}), FADE)


async def test_a_streamed_turn_and_the_next_on_one_connection(server):
    async with Client(server.ws_url) as client:
        assert client.ready["type"] == "ready" and client.ready["sample_rate"] == 24000
        assert client.ready["encoding"] == "pcm_s16le" and "tara" in client.ready["voices"]
        first = await client.turn("t1", PIECES, seed=3)
        done = client.event("done", "t1")
        assert done["audio_seconds"] == pytest.approx(len(first) / 2 / 24000, abs=1e-3)
        second = await client.turn("t2", ["Anything", " else?"], seed=4, voice="leo")
    assert pcm_diff(first, expected_ws(server, PIECES, 3)) <= 4
    assert pcm_diff(second, expected_ws(server, ["Anything", " else?"], 4, "leo")) <= 4
    assert server.metric("localtts_time_to_first_audio_seconds_count", api="websocket") >= 2


async def test_two_contexts_at_once_each_get_their_own_audio(server):
    async with Client(server.ws_url) as client:
        await client.send(type="speak", context_id="a", text="The first context speaks here.", seed=1)
        await client.send(type="speak", context_id="b", text="And the second one speaks too.", seed=2, flush=True)
        await client.send(type="flush", context_id="a")
        await client.until(lambda: client.event("done", "a") and client.event("done", "b"))
        a, b = bytes(client.audio["a"]), bytes(client.audio["b"])
    assert pcm_diff(a, expected_ws(server, ["The first context speaks here."], 1)) <= 4
    assert pcm_diff(b, expected_ws(server, ["And the second one speaks too."], 2)) <= 4


@pytest.fixture(scope="module")
def long_server():
    # Utterances of up to 30 s of audio: still being generated when the interrupt comes, however
    # fast the machine.
    with RunningServer(params=GenerationParams(guard_min_seconds=30)) as running:
        yield running


async def test_interrupt_stops_within_one_step_and_no_audio_follows_the_ack(long_server):
    server = long_server
    server.wait_idle()
    before = len(server.tts.recent)
    long = ["This is a long answer that the user will interrupt. " * 4]
    async with Client(server.ws_url) as client:
        await client.send(type="speak", context_id="x", text=long[0], flush=True, max_tokens=2048, seed=5)
        await client.until(lambda: "x" in client.audio)
        await client.send(type="interrupt", context_id="x")
        await client.until(lambda: client.event("interrupted", "x"))
        ack = next(t for t, kind, cid in client.log if kind == "interrupted")
        # Nothing of x after the ack, while the connection goes on serving.
        after = await client.turn("y", ["Okay", ", what", " is it?"], seed=6)
        assert after
        assert not [t for t, kind, cid in client.log if cid == "x" and kind == "audio" and t > ack]
        assert not client.event("done", "x")
    server.wait_idle()
    x_requests = [r for r in list(server.tts.recent)[before:] if r.sample_seed == 5]
    cancelled = [r for r in x_requests if r.finish_reason == "cancelled"]
    assert cancelled
    for r in cancelled:
        if r.steps_at_cancel is not None:
            assert r.steps - r.steps_at_cancel <= 1
    assert server.metric("localtts_streams_total", api="websocket", outcome="interrupted") >= 1


async def test_bad_messages_get_error_events_and_the_connection_stays_usable(server):
    async with Client(server.ws_url) as client:
        await client.ws.send("{not json")
        await client.until(lambda: client.event("error"))
        assert client.events[-1]["code"] == "bad_json" and client.events[-1]["context_id"] is None
        checks = [
            ({"type": "speak", "text": "no id"}, "bad_message", None),
            ({"type": "sing", "context_id": "s"}, "bad_message", "s"),
            ({"type": "speak", "context_id": "v", "text": "Hi.", "voice": "nobody"}, "unknown_voice", "v"),
            ({"type": "speak", "context_id": "p", "text": "Hi.", "temperature": -1}, "bad_message", "p"),
            ({"type": "speak", "context_id": "q", "text": 5}, "bad_message", "q"),
            ({"type": "speak", "context_id": "L", "text": "z" * 5000}, "too_long", "L"),
        ]
        for message, code, cid in checks:
            count = len(client.events)
            await client.ws.send(json.dumps(message))
            await client.until(lambda: len(client.events) > count)
            event = client.events[-1]
            assert (event["type"], event["code"], event["context_id"]) == ("error", code, cid), event
        await client.ws.send(b"\x00\x01binary")
        await client.until(lambda: client.events[-1]["code"] == "bad_message" and "binary" in client.events[-1]["message"])
        assert "nobody" in client.event("error", "v")["message"] and "tara" in client.event("error", "v")["message"]
        # Still usable.
        assert await client.turn("ok", ["Still", " here."], seed=7)


async def test_busy_and_auth():
    with RunningServer(max_streams=1, api_key="k3y", params=GenerationParams(guard_min_seconds=10)) as server:
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with Client(server.ws_url):
                pass
        assert refused.value.response.status_code == 401
        with pytest.raises(websockets.exceptions.InvalidStatus):
            async with Client(server.ws_url, additional_headers={"Authorization": "Bearer wrong"}):
                pass
        auth = {"Authorization": "Bearer k3y"}
        async with Client(server.ws_url, additional_headers=auth) as client:
            await client.send(type="speak", context_id="a", text="Long enough to hold the stream.", flush=True)
            await client.send(type="speak", context_id="b", text="Me too.", flush=True)
            await client.until(lambda: client.event("error", "b"))
            assert client.event("error", "b")["code"] == "busy"
            await client.send(type="interrupt", context_id="a")
            await client.until(lambda: client.event("interrupted", "a"))
            assert await client.turn("c", ["Now", " me."], seed=1, max_tokens=70)
            # HTTP is refused too while a WebSocket context holds the one stream.
            await client.send(type="speak", context_id="d", text="Holding again.", flush=True)
            await client.until(lambda: "d" in client.audio)
            r = httpx.post(f"{server.url}/v1/audio/speech", json={"input": "Hi."}, headers=auth, timeout=10)
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            # A context that was flushed and is still speaking (10 s of audio) refuses more text.
            await client.send(type="speak", context_id="d", text="More?")
            await client.until(lambda: client.event("error", "d"))
            assert client.event("error", "d")["code"] == "context_busy"
            assert not client.event("done", "d")
            await client.send(type="interrupt", context_id="d")
            await client.until(lambda: client.event("interrupted", "d"))


async def test_one_connection_holds_at_most_max_contexts(server):
    server.wait_idle()
    limit = server.config.max_contexts
    async with Client(server.ws_url) as greedy, Client(server.ws_url) as other:
        for i in range(limit):
            await greedy.send(type="speak", context_id=f"c{i}", text="Hold", seed=i)  # open, not flushed
        await greedy.send(type="speak", context_id="over", text="One too many.", flush=True)
        await greedy.until(lambda: greedy.event("error", "over"))
        assert greedy.event("error", "over")["code"] == "too_many_contexts"
        assert server.tts.streams == limit
        # Another connection is not affected, and the greedy one opens a context once one ends.
        assert await other.turn("o", ["Fine", " here."], seed=2)
        await greedy.send(type="interrupt", context_id="c0")
        await greedy.until(lambda: greedy.event("interrupted", "c0"))
        assert await greedy.turn("next", ["Now", " it fits."], seed=3)
        for i in range(1, limit):
            await greedy.send(type="interrupt", context_id=f"c{i}")
        await greedy.until(lambda: greedy.event("interrupted", f"c{limit - 1}"))
    server.wait_idle()


async def test_a_websocket_client_that_stops_reading_is_closed_and_disturbs_no_other():
    params = GenerationParams(guard_min_seconds=10)
    with RunningServer(sndbuf=4096, client_timeout=1.0, max_buffer_seconds=2.0, params=params) as server:
        stalled = await websockets.connect(server.ws_url, max_queue=1)
        try:
            await stalled.recv()  # ready
            text = "Words nobody will hear. " * 10
            await stalled.send(json.dumps({"type": "speak", "context_id": "s", "text": text, "flush": True}))
            async with Client(server.ws_url) as other:
                assert await other.turn("o", ["I", " listen."], seed=2, max_tokens=70)
            deadline = time.monotonic() + 30
            while server.metric("localtts_errors_total", kind="slow_client") < 1:
                assert time.monotonic() < deadline, "the stalled client was never cut off"
                await asyncio.sleep(0.05)
            server.wait_idle()
            assert server.tts.peak_overshoot <= 2.0 * 24000
            assert any(r.finish_reason == "cancelled" for r in server.tts.recent)
        finally:
            stalled.transport.abort()


async def test_sixteen_clients_http_and_websocket_each_get_their_own_audio(server):
    texts = [f"Caller number {i} asks about order {100 + i}." for i in range(16)]
    http_ids, ws_ids = range(0, 8), range(8, 16)

    async def over_http(i: int, http: httpx.AsyncClient) -> bytes:
        body = {"input": texts[i], "voice": "tara", "response_format": "pcm", "seed": i}
        r = await http.post(f"{server.url}/v1/audio/speech", json=body)
        assert r.status_code == 200
        return r.content

    async def over_ws(i: int) -> bytes:
        async with Client(server.ws_url) as client:
            words = [w + " " for w in texts[i].split()]
            return await client.turn(f"c{i}", words, seed=i)

    async def disconnecting(http: httpx.AsyncClient) -> None:
        body = {"input": "I will hang up early on this long sentence. " * 3, "response_format": "pcm", "seed": 99}
        async with http.stream("POST", f"{server.url}/v1/audio/speech", json=body) as r:
            async for _ in r.aiter_bytes():
                break

    async def interrupting() -> None:
        async with Client(server.ws_url) as client:
            await client.send(type="speak", context_id="i", text="Interrupt me soon please. " * 3, flush=True, seed=98)
            await client.until(lambda: "i" in client.audio)
            await client.send(type="interrupt", context_id="i")
            await client.until(lambda: client.event("interrupted", "i"))

    async with httpx.AsyncClient(timeout=120) as http:
        alone = {i: await over_http(i, http) for i in http_ids} | {i: await over_ws(i) for i in ws_ids}
        together = await asyncio.gather(
            *(over_http(i, http) for i in http_ids),
            *(over_ws(i) for i in ws_ids),
            disconnecting(http),
            interrupting(),
        )
    server.wait_idle()
    for i, audio in zip([*http_ids, *ws_ids], together[:16]):
        assert len(audio) > 0
        assert pcm_diff(audio, alone[i]) <= 4, f"client {i}"
    # They really ran together: the engine batched rows of several clients.
    assert max(server.tts.engine.batch_sizes) > 1


def test_protocol_audio_frames_round_trip():
    message = pack_audio("ctx-é", b"\x01\x02\x03\x04")
    assert unpack_audio(message) == ("ctx-é", b"\x01\x02\x03\x04")
    with pytest.raises(ValueError):
        unpack_audio(b"\x00")
    with pytest.raises(ValueError):
        unpack_audio(b"\x00\x09ab")
    with pytest.raises(ValueError):
        pack_audio("x" * 300, b"")
