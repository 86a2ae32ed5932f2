"""``lm_url`` without a speech-LM server: its configuration is checked, and a server that is
not there, or not a speech-LM server, is one clear error naming the URL (in a pipeline: an
``ErrorFrame``), never a hang. The tests against real engines are in
``tests/test_remote_llama.py`` (llama-server) and ``tests_vllm/`` (vLLM)."""

from __future__ import annotations

import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from live_pipeline import LivePipeline
from loguru import logger
from pipecat.frames.frames import TTSSpeakFrame

from pipecat_localtts import LocalTTSService, RemoteLM
from pipecat_localtts.cli import main
from pipecat_localtts.engine.batched import BatchedEngine
from pipecat_localtts.engine.remote import RemoteTokenSource
from pipecat_localtts.errors import LMServerError
from pipecat_localtts.testing import tiny_orpheus


@pytest.fixture(autouse=True)
def restore_logging():
    """main() configures loguru for the command line; give other tests the default back."""
    yield
    logger.remove()
    logger.add(lambda message: sys.stderr.write(message))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"url": "ftp://x"}, "http:// or https://"),
        ({"url": "localhost:8080"}, "http:// or https://"),
        ({"url": "http://x", "kind": "sglang"}, "lm_kind must be one of"),
        ({"url": "http://x", "token_timeout": 0}, "token_timeout must be a number > 0"),
        ({"url": "http://x", "max_concurrency": 0}, "max_concurrency must be an int >= 1"),
    ],
)
def test_bad_configuration_is_a_clear_error(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        RemoteLM(**kwargs)


def test_the_service_checks_its_lm_arguments_when_built():
    with pytest.raises(ValueError, match="http:// or https://"):
        LocalTTSService(model=tiny_orpheus(), lm_url="localhost:8080")
    with pytest.raises(ValueError, match="lm_kind must be one of"):
        LocalTTSService(model=tiny_orpheus(), lm_url="http://x", lm_kind="sglang")
    with pytest.raises(TypeError, match="lm_url"):
        LocalTTSService(model=tiny_orpheus(), lm_url=8080)


def test_the_key_never_shows_in_the_configuration():
    remote = RemoteLM("http://127.0.0.1:1/v1", api_key="s3cret")
    assert "s3cret" not in repr(remote) and remote.base == "http://127.0.0.1:1"


def test_unreachable_server_fails_the_engine_start_naming_the_url():
    model = tiny_orpheus()
    url = f"http://127.0.0.1:{closed_port()}"
    engine = BatchedEngine(model, source=RemoteTokenSource(RemoteLM(url, connect_timeout=2), model.token_layout))
    t0 = time.monotonic()
    with pytest.raises(LMServerError, match=f"{url} is unreachable"):
        engine.start()
    assert time.monotonic() - t0 < 10
    engine.close()


async def test_unreachable_server_in_a_pipeline_is_an_error_frame_and_the_pipeline_goes_on():
    url = f"http://127.0.0.1:{closed_port()}"
    tts = LocalTTSService(model=tiny_orpheus(), lm_url=url)
    async with LivePipeline(tts) as p:
        await p.until(lambda: p.errors, 20, "the start error")
        assert url in p.errors[0].error and "unreachable" in p.errors[0].error
        await p.send(TTSSpeakFrame("Anyone there?"))
        await p.until(lambda: len(p.errors) >= 2, 20, "the turn's error")  # reported, not silent
    assert url in p.errors[-1].error


class _Broken(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(500)
        self.send_header("content-length", "4")
        self.end_headers()
        self.wfile.write(b"oops")

    def log_message(self, *args):
        pass


def test_a_server_that_is_not_a_speech_lm_server_is_a_clear_error():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Broken)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        model = tiny_orpheus()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        engine = BatchedEngine(model, source=RemoteTokenSource(RemoteLM(url), model.token_layout))
        with pytest.raises(LMServerError, match=f"{url}: GET /v1/models answered 500"):
            engine.start()
        engine.close()
    finally:
        server.shutdown()
        server.server_close()


def test_cli_say_with_an_unreachable_lm_url_is_one_clear_line(tmp_path, capsys):
    url = f"http://127.0.0.1:{closed_port()}"
    code = main(["say", "Hi.", "--out", str(tmp_path / "x.wav"), "--model", "tiny", "--lm-url", url])
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and url in err[-1]
    assert not (tmp_path / "x.wav").exists()
