"""One engine per loaded model, and one loaded model per checkpoint, shared by a process.

Every :class:`~pipecat_localtts.service.LocalTTSService` given the same model object shares
one :class:`~pipecat_localtts.engine.batched.BatchedEngine`: it starts with the first service
and closes after the last one lets it go (reference counts). A service that loads its model
by hub id or directory takes it from :data:`MODELS`, keyed by (source, device, dtype), so two
services with ``model="DIR"`` share the weights and, through them, the engine. Closing joins
threads: callers on an event loop release from a worker thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from loguru import logger

from pipecat_localtts.engine.batched import BatchedEngine
from pipecat_localtts.engine.remote import RemoteLM, RemoteTokenSource
from pipecat_localtts.models.orpheus import OrpheusModel

__all__ = ["ENGINES", "MODELS", "SharedEngines", "SharedModels"]


class SharedEngines:
    """Started engines by model object, with reference counts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (id(model), the remote server's key or None) -> (engine, users)
        self._engines: dict[tuple[int, tuple | None], tuple[BatchedEngine, int]] = {}
        self._keys: dict[int, tuple[int, tuple | None]] = {}  # id(engine) -> its key

    def acquire(self, model: OrpheusModel, *, remote: RemoteLM | None = None, **settings: Any) -> BatchedEngine:
        """The engine of ``model`` (started at the first call); one more user.

        ``remote``: the speech LM runs on that serving engine (services of the same model
        and server share one engine; the in-process LM and each server get their own).
        ``settings`` (``max_batch``, ``max_tokens``, ``frames_per_decode``...) apply when the
        engine is created; a later user with other settings shares the engine as it is.
        """
        key = (id(model), remote.key if remote is not None else None)
        with self._lock:
            entry = self._engines.get(key)
            if entry is not None and entry[0].model is model and entry[0].running:
                engine, users = entry
                self._engines[key] = (engine, users + 1)
                return engine
            if remote is not None:
                source = RemoteTokenSource(remote, model.token_layout, name=model.name)
                engine = BatchedEngine(model, source=source, **settings)
            else:
                if model.lm is None:
                    raise ValueError(f"{model.name} was loaded without its LM weights: give lm_url (the server that runs it)")
                engine = BatchedEngine(model, **settings)
            try:
                engine.start()
            except BaseException:
                engine.close()  # its codec threads, a half-started source
                raise
            self._engines[key] = (engine, 1)
            self._keys[id(engine)] = key
            return engine

    def release(self, engine: BatchedEngine) -> bool:
        """One user fewer; the last one closes the engine (blocking). Returns True if closed."""
        with self._lock:
            key = self._keys.get(id(engine))
            entry = self._engines.get(key) if key is not None else None
            if entry is None or entry[0] is not engine:
                last = True  # not shared (or already replaced): close it
            else:
                users = entry[1] - 1
                last = users == 0
                if last:
                    del self._engines[key]
                    del self._keys[id(engine)]
                else:
                    self._engines[key] = (engine, users)
        if last:
            engine.close()
        return last

    def users(self, model: OrpheusModel, remote: RemoteLM | None = None) -> int:
        """How many users the engine of ``model`` (on ``remote``) has (0: none running)."""
        with self._lock:
            entry = self._engines.get((id(model), remote.key if remote is not None else None))
            return entry[1] if entry is not None and entry[0].model is model else 0


class SharedModels:
    """Loaded models by (source, device, dtype), with reference counts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str, str], tuple[OrpheusModel, int]] = {}
        self._loading: dict[tuple[str, str, str], threading.Lock] = {}

    def acquire(self, key: tuple[str, str, str], load: Callable[[], OrpheusModel]) -> OrpheusModel:
        """The model for ``key``, loading it with ``load`` at the first call (blocking)."""
        with self._lock:
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:  # one load per key, however many services start at once
            with self._lock:
                entry = self._models.get(key)
                if entry is not None:
                    self._models[key] = (entry[0], entry[1] + 1)
                    return entry[0]
            model = load()
            with self._lock:
                self._models[key] = (model, 1)
            return model

    def release(self, model: OrpheusModel) -> None:
        """One user fewer; the last one drops the process's reference to the weights."""
        with self._lock:
            for key, (held, users) in list(self._models.items()):
                if held is model:
                    if users <= 1:
                        del self._models[key]
                        logger.debug(f"models: {key[0]} unloaded (no service uses it)")
                    else:
                        self._models[key] = (held, users - 1)
                    return


#: The process's shared engines and models.
ENGINES = SharedEngines()
MODELS = SharedModels()
