"""Helpers of the tests that drive live servers: polling with a deadline, uvicorn in a thread."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable


def wait_for(condition: Callable[[], object], timeout_s: float, what: str):
    """``condition()``'s first truthy value, polled every 20 ms; TimeoutError naming ``what`` if late."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.02)
    raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")


@contextlib.contextmanager
def uvicorn_thread(app, timeout_s: float = 60.0):
    """Serve ``app`` on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False,
                            lifespan="off", timeout_graceful_shutdown=5)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), timeout_s, "uvicorn to start")
        assert server.started, "uvicorn exited at start"
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout_s)
        assert not thread.is_alive(), "uvicorn did not stop"
