"""A real server on a free loopback port, in a background thread, for as long as a block runs:
the speedrun's demonstration of a served profile, and the tests.

    with run_in_background(create_app(models)) as url:
        httpx.post(f"{url}/v1/chat/completions", json={...})
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


@contextlib.contextmanager
def run_in_background(app, start_timeout: float = 20.0):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + start_timeout
    try:
        while not server.started:
            if not thread.is_alive() or time.time() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
