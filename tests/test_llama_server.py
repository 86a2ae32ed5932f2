"""A real llama.cpp ``llama-server`` serving a tiny random Orpheus-layout Llama (GGUF, f32).

The binary and llama.cpp's converter come from ``scripts/llama_server.sh`` (run by
``scripts/setup.sh``); without them these tests fail with a ``FileNotFoundError`` that says so.
One conversion and one server for the module.
"""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest
import torch

from llama_harness import (
    F32_ARGS,
    LlamaServer,
    gguf_of,
    slots,
    stream_completion,
    wait_slots_idle,
)
from pipecat_localtts.models import orpheus as o
from pipecat_localtts.testing import llama3_tokenizer, llama_cpp_dir, tiny_orpheus_llama3

STEPS = 21  # three Orpheus frames


@pytest.fixture(scope="module")
def model() -> o.OrpheusModel:
    # Weights of unit scale rather than Llama's 0.02: at 0.02 a 16-wide model's logits are
    # nearly flat and greedy decoding repeats one token, which would make the comparison with
    # transformers below a weak one. With 1.0 the greedy continuation varies from step to step.
    return tiny_orpheus_llama3(seed=0, initializer_range=1.0)


@pytest.fixture(scope="module")
def gguf(model, tmp_path_factory):
    return gguf_of(model, tmp_path_factory.mktemp("tiny-orpheus-gguf"))


@pytest.fixture(scope="module")
def server(gguf):
    with LlamaServer(gguf, parallel=2, args=F32_ARGS) as running:
        yield running


@pytest.fixture(scope="module")
def prompt(model) -> list[int]:
    return model.build_prompt("Hello there.", "tara")


def test_llama_cpp_dir_is_the_venvs():
    import sys
    from pathlib import Path

    assert llama_cpp_dir() == Path(sys.prefix) / "llama.cpp"


def test_llama3_tokenizer_is_orpheus_tokenization():
    tok = llama3_tokenizer()
    text = "<custom_token_3><|begin_of_text|>tara: Hello<|eot_id|><custom_token_4>"
    assert tok(text, add_special_tokens=False)["input_ids"] == [
        128259, 128000, 83, 5169, 25, 22691, 128009, 128260,
    ]  # fmt: skip
    assert len(tok) == o.VOCAB_SIZE == 156_940
    assert tok("tara: Hello")["input_ids"] == [o.BEGIN_OF_TEXT, 83, 5169, 25, 22691]
    assert (tok.bos_token_id, tok.eos_token_id) == (o.BEGIN_OF_TEXT, o.END_OF_TEXT)
    assert tok.convert_ids_to_tokens(o.VOCAB_SIZE - 1) == "<custom_token_28683>"
    assert tok.decode([83, 5169, 25, 22691]) == "tara: Hello"
    assert llama3_tokenizer() is tok  # built once per file


def test_orpheus_prompt_with_the_llama3_tokenizer(model, prompt):
    assert prompt == [
        o.START_OF_HUMAN, o.BEGIN_OF_TEXT, 83, 5169, 25, 22691, 1070, 13,
        o.END_OF_TEXT, o.END_OF_HUMAN, o.START_OF_AI, o.START_OF_SPEECH,
    ]  # fmt: skip
    # Special-token text in the input stays text.
    assert o.END_OF_TEXT not in model.build_prompt("a <|eot_id|> b", "tara")[2:-4]


def test_converts_and_serves(gguf, server):
    assert gguf.stat().st_size > 9_000_000  # 156,940 x 16 f32 embeddings alone are 10 MB
    assert httpx.get(f"{server.url}/health", timeout=5).json() == {"status": "ok"}
    state = slots(server.url)
    assert [s["id"] for s in state] == [0, 1]
    assert all(s["n_ctx"] == server.ctx // 2 and not s["is_processing"] for s in state)


def test_completion_streams_token_ids(server, prompt):
    """``POST /completion`` with ``stream`` and ``return_tokens`` answers Server-Sent Events:
    one line ``data: {json}`` per generated token, then an empty line, e.g.

        data: {"index":0,"content":" unge","tokens":[67896],"stop":false,"id_slot":-1,
               "tokens_predicted":1,"tokens_evaluated":12}

    (``content`` is the token's text, empty for special and ``<custom_token_N>`` ids: use
    ``tokens``), and a last event with ``"stop": true``, ``"tokens": []``, the real ``id_slot``,
    ``stop_type`` ("limit" at ``n_predict``, "eos" at an end-of-generation token),
    ``generation_settings``, ``prompt`` (the prompt's text) and ``timings``. No ``[DONE]``.
    """
    body = {"prompt": prompt, "stream": True, "return_tokens": True, "n_predict": STEPS,
            "temperature": 0, "ignore_eos": True}  # fmt: skip
    with httpx.stream("POST", f"{server.url}/completion", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = list(response.iter_lines())
    data = [line for line in lines if line]
    assert all(line.startswith("data: ") for line in data), data[:3]
    assert lines.count("") >= len(data) - 1  # events separated by blank lines
    events = [json.loads(line[len("data: ") :]) for line in data]
    *pieces, last = events
    assert len(pieces) == STEPS
    for n, event in enumerate(pieces, 1):
        assert len(event["tokens"]) == 1 and not event["stop"], event
        assert event["tokens_predicted"] == n and event["tokens_evaluated"] == len(prompt)
    assert last["stop"] and last["tokens"] == [] and last["stop_type"] == "limit"
    assert last["tokens_predicted"] == STEPS and last["id_slot"] in (0, 1)


def _transformers_greedy(model, prompt: list[int], steps: int) -> tuple[list[int], torch.Tensor]:
    """Greedy continuation by hand (argmax, KV cache) and the log-probs at each step."""
    ids, logprobs = [], []
    with torch.no_grad():
        out = model.lm(torch.tensor([prompt]), use_cache=True)
        for _ in range(steps):
            logp = out.logits[0, -1].float().log_softmax(-1)
            ids.append(int(logp.argmax()))
            logprobs.append(logp)
            out = model.lm(torch.tensor([[ids[-1]]]), past_key_values=out.past_key_values)
    return ids, torch.stack(logprobs)


def test_greedy_matches_transformers(model, server, prompt):
    """llama.cpp's greedy tokens are transformers' on the same (f32) weights, and so are the
    top-5 log-probabilities of every step (``n_probs``: raw softmax of the logits; each piece
    event carries ``completion_probabilities: [{id, token, bytes, logprob, top_logprobs}]``).

    Within 1e-3 with the server in f32 (``F32_ARGS``; measured: 3e-4); with llama-server's
    defaults (f16 KV cache, flash attention) the log-probs differ by up to 2e-2 here.
    """
    expected, logprobs = _transformers_greedy(model, prompt, STEPS)
    assert len(set(expected)) > STEPS // 2  # a varied continuation: a real comparison
    with torch.no_grad():
        reference = model.lm.generate(
            torch.tensor([prompt]), max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False
        )[0, len(prompt) :].tolist()
    assert reference == expected

    events = list(stream_completion(server.url, prompt, n_predict=STEPS, temperature=0,
                                    ignore_eos=True, n_probs=5))  # fmt: skip
    got = [t for e in events for t in e["tokens"]]
    assert got == expected
    steps = [p for e in events for p in e.get("completion_probabilities", [])]
    assert len(steps) == STEPS
    for step, (entry, logp) in enumerate(zip(steps, logprobs)):
        top = entry["top_logprobs"]
        ours = logp.topk(5)
        assert [t["id"] for t in top] == ours.indices.tolist(), step
        assert [t["logprob"] for t in top] == pytest.approx(ours.values.tolist(), abs=1e-3)


def test_closing_the_stream_cancels_and_releases_the_slot(server, prompt):
    """Closing the HTTP stream mid-generation makes the server cancel the task: its log says
    ``srv  stop: cancel task, id_task = N`` and ``slot release: ... stop processing:
    n_tokens = M``, and ``/slots`` shows no slot processing."""
    budget = 2000
    events = stream_completion(server.url, prompt, n_predict=budget, temperature=0,
                               ignore_eos=True)  # fmt: skip
    for n, event in enumerate(events, 1):
        assert not event["stop"]
        if n == 5:
            break
    busy = [s for s in slots(server.url) if s["is_processing"]]
    assert len(busy) == 1  # still generating when the client goes
    events.close()
    wait_slots_idle(server.url)

    deadline = time.monotonic() + 10
    while not (m := re.search(r"cancel task, id_task = (\d+)", server.log())):
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.05)
    task = m.group(1)
    release = re.search(
        rf"release: id +\d+ \| task {task} \| stop processing: n_tokens = (\d+)", server.log()
    )
    assert release, server.log()[-3000:]
    assert int(release.group(1)) < len(prompt) + budget // 2  # stopped well before its budget

    # The slot serves the next request.
    after = list(stream_completion(server.url, prompt, n_predict=3, temperature=0))
    assert after[-1]["stop"] and after[-1]["tokens_predicted"] == 3


def test_restart_on_the_same_port_and_kill(gguf):
    with LlamaServer(gguf, parallel=1) as running:
        port = running.port
        running.kill()
        assert not running.alive
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{running.url}/health", timeout=2)
        running.start()
        assert running.port == port
        assert httpx.get(f"{running.url}/health", timeout=5).status_code == 200
