"""Worker functions for the pinning and emulation tests (module-level so ``spawn`` can import them).

They import numpy and the runtime only inside the function: the point of a
pinned worker is that nothing heavy runs before it is pinned.
"""

from __future__ import annotations

import os
import time


def conv_model_bytes(size: int = 28, channels: int = 32) -> bytes:
    from pipeit.tflite_builder import ModelBuilder

    b = ModelBuilder(seed=0)
    x = b.input("input", (1, size, size, channels))
    b.output(b.conv2d(x, channels, kernel=3, stride=1, activation="RELU"))
    return b.to_bytes()


def busy_interpreter(model: bytes, marker: str, stop: str, limit_s: float = 30.0) -> dict:
    """Build an interpreter with the pinned thread count, invoke until ``stop`` exists."""
    import numpy as np

    from cores.pinning import worker_threads
    from pipeit.runtime import make_interpreter

    threads = worker_threads()
    interpreter = make_interpreter(model, num_threads=threads)
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.ones(detail["shape"], dtype=np.float32))
    interpreter.invoke()
    open(marker, "w").close()
    count = 1
    deadline = time.monotonic() + limit_s
    while not os.path.exists(stop) and time.monotonic() < deadline:
        interpreter.invoke()
        count += 1
    return {"threads": threads, "invokes": count, "pid": os.getpid()}


def affinity_and_cgroup() -> dict:
    with open("/proc/self/cgroup") as handle:
        cgroups = handle.read()
    return {"affinity": sorted(os.sched_getaffinity(0)), "cgroup": cgroups,
            "threads_env": os.environ.get("PIPEIT_NUM_THREADS")}


def raise_value_error() -> None:
    raise ValueError("bad thing in the worker")


def conv_server(model: bytes, commands, results) -> int:
    """Time batches of single-thread invokes on request: ``n`` -> (wall s, thread CPU s)."""
    import numpy as np

    from cores.pinning import worker_threads
    from pipeit.runtime import make_interpreter

    interpreter = make_interpreter(model, num_threads=worker_threads())
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.ones(detail["shape"], dtype=np.float32))
    for _ in range(5):
        interpreter.invoke()
    results.put(("ready", 0.0, 0.0))
    served = 0
    while True:
        n = commands.get()
        if n is None:
            return served
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        for _ in range(n):
            interpreter.invoke()
        results.put(("done", time.perf_counter() - wall0, time.thread_time() - cpu0))
        served += 1
