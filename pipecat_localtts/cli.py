"""Command line: ``pipecat-localtts say "TEXT" --out FILE.wav``, ``serve``, ``bench``.

``say`` runs the same engine the Pipecat service uses, without a pipeline: the text is chunked
like a ``TTSSpeakFrame`` and the utterances are written one after another to a 24 kHz mono WAV.
``serve`` runs the TTS server (:mod:`pipecat_localtts.server`) on one shared engine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import wave
from pathlib import Path

import numpy as np

from pipecat_localtts.errors import LocalTTSError

TINY = "tiny"
TINY_NEUTTS = "tiny-neutts"


def _parser() -> argparse.ArgumentParser:
    from pipecat_localtts.models.orpheus import DEFAULT_MODEL_ID

    parser = argparse.ArgumentParser(
        prog="pipecat-localtts", description="Local speech-token TTS (Orpheus + SNAC, NeuTTS + NeuCodec)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log engine details")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("bench", help="run the benchmark suite (pipecat-localtts bench --help)")
    say = sub.add_parser("say", help="speak TEXT into a WAV file")
    say.add_argument("text", help="what to say (emotive tags like <laugh> pass through)")
    say.add_argument("--out", required=True, type=Path, help="output .wav (24 kHz mono)")
    say.add_argument(
        "--model",
        default=DEFAULT_MODEL_ID,
        help=f"hub id or local directory, Orpheus or NeuTTS (default {DEFAULT_MODEL_ID}); "
        f"'{TINY}' / '{TINY_NEUTTS}' = tiny random models for checking the plumbing",
    )
    say.add_argument("--voice", default=None, help="voice name (default: the model's first, e.g. tara)")
    say.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    say.add_argument("--seed", type=int, default=None, help="sampling seed for reproducible output")
    _lm_arguments(say)
    serve = sub.add_parser("serve", help="run the TTS server (OpenAI-compatible HTTP + WebSocket)")
    serve.add_argument(
        "--model",
        default=DEFAULT_MODEL_ID,
        help=f"hub id or local directory, Orpheus or NeuTTS (default {DEFAULT_MODEL_ID}); "
        f"'{TINY}' / '{TINY_NEUTTS}' = tiny random models",
    )
    serve.add_argument("--voice", default=None, help="default voice (default: the model's first)")
    serve.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument(
        "--api-key",
        default=os.environ.get("LOCALTTS_API_KEY"),
        help="require 'Authorization: Bearer KEY' on every request (default: $LOCALTTS_API_KEY; none if unset)",
    )
    serve.add_argument("--max-streams", type=_positive, default=None, help="concurrent generations (default 4 x max batch)")
    serve.add_argument(
        "--max-contexts", type=_positive, default=8, help="contexts one WebSocket connection may have speaking (default 8)"
    )
    serve.add_argument("--max-chars", type=_positive, default=4096, help="characters per text (default 4096; 413 above)")
    serve.add_argument("--max-batch", type=_positive, default=None, help="engine slots (default per device: cpu 8, cuda 64)")
    serve.add_argument(
        "--max-buffer-seconds",
        type=float,
        default=30.0,
        help="audio a client may leave unread before its stream is cut off (default 30)",
    )
    serve.add_argument(
        "--client-timeout",
        type=float,
        default=20.0,
        help="seconds a client may take to accept a piece of audio before it is cut off (default 20)",
    )
    serve.add_argument(
        "--voice-alias",
        action="append",
        default=[],
        metavar="NAME=VOICE",
        help="accept NAME as VOICE (repeatable; OpenAI's voice names map to Orpheus voices by default)",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    _lm_arguments(serve)
    return parser


def _lm_arguments(parser: argparse.ArgumentParser) -> None:
    """The speech LM on a serving engine: only the tokenizer and the codec load here."""
    parser.add_argument(
        "--lm-url",
        default=None,
        help="run the speech LM on this llama-server / vLLM (http://host:port); --model then only "
        "provides the tokenizer and the codec",
    )
    parser.add_argument("--lm-kind", default="auto", choices=["auto", "llama.cpp", "vllm"], help="default: ask the server")
    parser.add_argument("--lm-model", default=None, help="model name on an OpenAI-style server (default: its first)")
    parser.add_argument(
        "--lm-api-key",
        default=os.environ.get("LOCALTTS_LM_API_KEY"),
        help="bearer token for the LM server (default: $LOCALTTS_LM_API_KEY)",
    )


def _engine(args: argparse.Namespace, model, *, max_batch: int, max_tokens: int):
    """A started engine: the in-process LM, or the server of ``--lm-url``."""
    from pipecat_localtts.engine.batched import BatchedEngine
    from pipecat_localtts.engine.remote import RemoteLM, RemoteTokenSource

    source = None
    if args.lm_url:
        remote = RemoteLM(args.lm_url, kind=args.lm_kind, model=args.lm_model, api_key=args.lm_api_key or None)
        source = RemoteTokenSource(remote, model.token_layout, name=model.name)
    engine = BatchedEngine(model, max_batch=max_batch, max_tokens=max_tokens, source=source)
    try:
        engine.start()
    except BaseException:
        engine.close()
        raise
    return engine


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def _load_model(name: str, device: str | None, *, lm: bool = True):
    from pipecat_localtts.models.families import load_model
    from pipecat_localtts.testing import tiny_neutts, tiny_orpheus

    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise LocalTTSError("--device cuda: no CUDA device is available here; use --device cpu")
    if name in (TINY, TINY_NEUTTS):
        print(
            f"note: --model {name} is a synthetic model with random weights: the audio is noise, "
            "useful only to check the plumbing.",
            file=sys.stderr,
        )
        return tiny_orpheus(device=device) if name == TINY else tiny_neutts(device=device)
    return load_model(name, device=device, lm=lm)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from pipecat_localtts.engine.batched import DEFAULT_MAX_BATCH, BatchedEngine
    from pipecat_localtts.server.app import OPENAI_VOICES, ServerConfig, create_app

    aliases = dict(OPENAI_VOICES)
    for item in args.voice_alias:
        name, sep, voice = item.partition("=")
        if not sep or not name or not voice:
            raise LocalTTSError(f"--voice-alias needs NAME=VOICE, got {item!r}")
        aliases[name] = voice
    for name in ("max_buffer_seconds", "client_timeout"):
        if not getattr(args, name) > 0:
            raise LocalTTSError(f"--{name.replace('_', '-')} must be > 0")
    device = args.device or ("cuda" if _cuda() else "cpu")
    max_batch = args.max_batch or DEFAULT_MAX_BATCH.get(device, 8)
    config = ServerConfig(
        model_name=args.model,
        voice=args.voice,
        api_key=args.api_key or None,
        max_streams=args.max_streams or 4 * max_batch,
        max_chars=args.max_chars,
        max_contexts=args.max_contexts,
        max_buffer_seconds=args.max_buffer_seconds,
        client_timeout=args.client_timeout,
        voice_aliases=aliases,
    )

    def load() -> BatchedEngine:
        model = _load_model(args.model, args.device, lm=not args.lm_url)
        if args.voice is not None:
            model.check_voice(args.voice)
        return _engine(args, model, max_batch=max_batch, max_tokens=(config.params or model.default_params).max_tokens)

    app = create_app(load, config)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            ws_max_size=config.max_body_bytes,
            log_level=args.log_level,
            timeout_graceful_shutdown=5,
        )
    )
    failed: list[BaseException] = []

    def on_load_failed(error: BaseException) -> None:
        failed.append(error)
        server.should_exit = True

    app.state.tts.on_load_failed = on_load_failed
    server.run()
    if failed:
        print(f"error: the model could not be loaded: {failed[0]}", file=sys.stderr)
        return 1
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _say(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from pipecat_localtts.chunking import is_speakable, split_text
    from pipecat_localtts.engine.request import BlockingSink

    model = _load_model(args.model, args.device, lm=not args.lm_url)
    voice = model.check_voice(args.voice) if args.voice is not None else model.voices[0]
    chunks = [c for c in split_text(args.text) if is_speakable(c)]
    if not chunks:
        raise LocalTTSError("nothing to say: the text has no letters or digits")
    params = replace(model.default_params, seed=args.seed)
    # One request at a time, in order: one slot is all the utterances need.
    engine = _engine(args, model, max_batch=1, max_tokens=params.max_tokens)
    pieces: list[np.ndarray] = []
    t0 = time.perf_counter()
    try:
        for chunk in chunks:
            sink = BlockingSink()
            engine.submit(chunk, voice, params, sink)
            pieces.extend(sink)
    finally:
        engine.close()
    elapsed = time.perf_counter() - t0
    audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    pcm16 = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(args.out), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(model.sample_rate)
        wav.writeframes(pcm16.tobytes())
    seconds = audio.size / model.sample_rate
    print(
        f"wrote {args.out}: {seconds:.2f} s of audio at {model.sample_rate} Hz "
        f"in {elapsed:.2f} s ({len(chunks)} chunk(s), model {model.name})",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pipecat-localtts`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from pipecat_localtts.benchmark import main as bench

        return bench(argv[1:])
    args = _parser().parse_args(argv)
    from loguru import logger

    logger.remove()
    # Resolve sys.stderr at each write, so a replaced stream (tests, wrappers) is followed.
    logger.add(lambda message: sys.stderr.write(message), level="DEBUG" if args.verbose else ("INFO" if args.command == "serve" else "WARNING"))
    try:
        return _serve(args) if args.command == "serve" else _say(args)
    except LocalTTSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
