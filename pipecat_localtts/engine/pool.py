"""Warm engines kept between calls.

A telephony server or a WebRTC bot builds one ``LocalTTSService`` per call. Each needs an
engine (an LM thread with its own KV cache), and on CUDA an engine's warm-up includes
compiling and capturing the decode step, which takes far longer than a call can wait. The
pool keeps engines that a finished call released, per model object and engine settings, and
hands them to the next call: each concurrent call still has an engine of its own, but only
the first calls of a process pay for warm-up.
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

from pipecat_localtts.engine.engine import TTSEngine
from pipecat_localtts.models.orpheus import OrpheusModel


class EnginePool:
    """Idle, started engines by (model, settings).

    Args:
        max_idle: Engines kept per model and settings; more are closed on release.
    """

    def __init__(self, max_idle: int = 8) -> None:
        self.max_idle = max_idle
        self._lock = threading.Lock()
        self._idle: dict[tuple, list[TTSEngine]] = {}

    @staticmethod
    def _key(model: OrpheusModel, settings: dict[str, Any]) -> tuple:
        # Pooled engines hold their model, so its id cannot be reused while it is a key.
        return (id(model), tuple(sorted(settings.items())))

    def acquire(self, model: OrpheusModel, **settings: Any) -> TTSEngine:
        """A started engine for ``model``: a warm idle one, else a new one (blocking)."""
        with self._lock:
            engines = self._idle.get(self._key(model, settings), [])
            while engines:
                engine = engines.pop()
                if engine.running and engine.model is model:
                    return engine
        engine = TTSEngine(model, **settings)
        engine.start()
        return engine

    def release(self, engine: TTSEngine, **settings: Any) -> None:
        """Give an engine back (its requests already cancelled); kept warm, or closed."""
        if engine.running:
            with self._lock:
                idle = self._idle.setdefault(self._key(engine.model, settings), [])
                if len(idle) < self.max_idle and engine not in idle:
                    idle.append(engine)
                    return
        engine.close()

    def idle_count(self, model: OrpheusModel | None = None) -> int:
        """Engines waiting in the pool (for ``model``, or in all)."""
        with self._lock:
            return sum(
                len(engines)
                for engines in self._idle.values()
                if model is None or any(e.model is model for e in engines)
            )

    def close_all(self) -> None:
        """Close every idle engine (at exit, or to free the GPU)."""
        with self._lock:
            engines = [e for idle in self._idle.values() for e in idle]
            self._idle.clear()
        for engine in engines:
            engine.close()


ENGINE_POOL = EnginePool()
atexit.register(ENGINE_POOL.close_all)
