"""A real llama.cpp ``llama-server`` run by the tests: a subprocess on 127.0.0.1 serving a tiny
random Orpheus-layout Llama converted to GGUF.

``scripts/llama_server.sh`` (run by ``scripts/setup.sh``) builds the binary into
``.venv/llama.cpp`` along with llama.cpp's ``convert_hf_to_gguf.py``; when it is missing,
:func:`~pipecat_localtts.testing.llama_cpp_dir` fails with a ``FileNotFoundError`` saying so.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from pipecat_localtts.models.neutts import NeuTTSModel
from pipecat_localtts.models.orpheus import OrpheusModel
from pipecat_localtts.testing import llama_cpp_dir, save_neutts, save_orpheus

#: Context per slot: a long Orpheus utterance (prompt + ~2,000 audio tokens) fits.
CTX_PER_SLOT = 2560

#: Server arguments for full f32 precision, to compare with transformers: llama-server's
#: defaults keep the KV cache in f16 and (``--flash-attn auto``, on for the CPU) attend in f16
#: precision even with an f32 cache. Measured on the unit-scale tiny model: top-5 log-probs
#: off by up to 2e-2 with the defaults, 3e-4 with these (greedy ids equal either way).
F32_ARGS = ("--flash-attn", "off", "--cache-type-k", "f32", "--cache-type-v", "f32")


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def gguf_of(model: OrpheusModel | NeuTTSModel, directory: str | Path, *, timeout: float = 300) -> Path:
    """``model`` saved as a checkpoint in ``directory`` and converted by llama.cpp's
    ``convert_hf_to_gguf.py`` to ``<directory>/model.gguf`` (f32: the same weights exactly).

    The model's tokenizer must be one the converter recognises, e.g.
    :func:`~pipecat_localtts.testing.llama3_tokenizer` (``tiny_orpheus_llama3``).
    """
    llama = llama_cpp_dir()
    directory = Path(directory)
    (save_neutts if isinstance(model, NeuTTSModel) else save_orpheus)(model, directory)
    out = directory / "model.gguf"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(llama / "gguf-py"), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    cmd = [sys.executable, str(llama / "convert_hf_to_gguf.py"), str(directory),
           "--outfile", str(out), "--outtype", "f32"]  # fmt: skip
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        raise AssertionError(
            f"convert_hf_to_gguf.py ran past {timeout} s:\n{_tail(stderr or '')}"
        ) from None
    if done.returncode != 0 or not out.is_file():
        raise AssertionError(
            f"convert_hf_to_gguf.py failed (exit {done.returncode}):\n{_tail(done.stderr)}"
        )
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """``llama-server -m GGUF`` on 127.0.0.1; ``with`` it to run it, ready (``/health`` 200).

    Args:
        gguf: The model file.
        port: 0 picks a free port; give the previous one to restart on the same address.
        parallel: Slots (requests decoded together).
        ctx: Total context (KV cells), split evenly between the slots; default
            ``parallel * CTX_PER_SLOT``.
        args: Further ``llama-server`` arguments.
        ready_timeout: Seconds ``start`` waits for ``/health`` to answer 200.

    Its output goes to a log file (``log()``), shown when it fails to start.
    """

    def __init__(
        self,
        gguf: str | Path,
        *,
        port: int = 0,
        parallel: int = 4,
        ctx: int | None = None,
        args: Sequence[str] = (),
        ready_timeout: float = 60,
    ) -> None:
        self.binary = llama_cpp_dir() / "bin" / "llama-server"
        self.gguf = Path(gguf)
        self.port = port or free_port()
        self.parallel = parallel
        self.ctx = ctx or parallel * CTX_PER_SLOT
        self.args = list(args)
        self.ready_timeout = ready_timeout
        self.log_path = Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def command(self) -> list[str]:
        return [
            str(self.binary), "-m", str(self.gguf), "--host", "127.0.0.1",
            "--port", str(self.port), "--parallel", str(self.parallel), "-c", str(self.ctx),
            "--no-webui", "--no-warmup", *self.args,
        ]  # fmt: skip

    def log(self) -> str:
        """The server's output so far (all of its runs)."""
        return self.log_path.read_text(errors="replace")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> LlamaServer:
        """Start (again, on the same port) and wait until ``/health`` answers 200."""
        assert not self.alive, "already running"
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(self.command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"llama-server exited with {self.process.returncode} before it was ready:\n"
                    f"{_tail(self.log())}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    f"llama-server was not ready within {self.ready_timeout} s:\n{_tail(self.log())}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL at once (a server dying mid-utterance), and reap it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def restart(self) -> LlamaServer:
        self.stop()
        return self.start()

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def slots(url: str) -> list[dict[str, Any]]:
    """``GET /slots``: one object per slot (``id``, ``is_processing``, ``n_ctx``, ...).

    Enabled by default in this llama.cpp (``--no-slots`` turns it off).
    """
    response = httpx.get(f"{url}/slots", timeout=10)
    response.raise_for_status()
    return response.json()


def wait_slots_idle(url: str, timeout: float = 10) -> list[dict[str, Any]]:
    """``/slots`` once no slot is processing; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        state = slots(url)
        if not any(s["is_processing"] for s in state):
            return state
        assert time.monotonic() < deadline, f"a slot is still processing: {state}"
        time.sleep(0.05)


def stream_completion(
    url: str, prompt: Sequence[int], *, client: httpx.Client | None = None, **fields: Any
) -> Iterator[dict[str, Any]]:
    """``POST /completion`` streamed (``stream``, ``return_tokens``): the JSON of each SSE
    ``data:`` line, in order. Closing the generator closes the HTTP stream."""
    body = {"prompt": list(prompt), "stream": True, "return_tokens": True, **fields}
    own = client is None
    client = client or httpx.Client(timeout=60)
    try:
        with client.stream("POST", f"{url}/completion", json=body) as response:
            if response.status_code != 200:
                response.read()
                raise AssertionError(f"/completion: {response.status_code} {response.text}")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    yield json.loads(line[len("data: ") :])
    finally:
        if own:
            client.close()
