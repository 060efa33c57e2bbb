"""An echo backend for the differential request-smuggling test (tests/tests/smuggling.rs).

One tiny protocol, spoken the same way by every backend the test puts behind the
balancer (this file for three Python servers, echo.js for Node, and the workspace's
own `server`):

* a request to a path starting with ``/echo``, any method, is answered ``200`` with
  ``{"seq", "method", "target", "body_len", "body"}`` once its whole body has been
  read; ``seq`` counts such completed requests in this process (1, 2, 3, ...), so a
  request whose body never completes (cut off, or malformed) is not counted, and
  ``body`` is the first 200 bytes of the body decoded as latin-1;
* ``GET /heartbeat`` is answered ``200`` with no body and not counted;
* anything else is ``404``.

Once it accepts connections it prints ``listening on http://127.0.0.1:PORT`` on
stdout, the line the test's ``e2e::Service::start`` waits for.

Usage: ``echo.py --server uvicorn|gunicorn|aiohttp``
"""

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
import threading

#: Longer than the balancer keeps an idle upstream connection, so the backend is not
#: the one that closes a connection the balancer is about to reuse.
KEEP_ALIVE_SECONDS = 75

#: A body that never completes, cut off or malformed, is routine in the smuggling
#: test: answered 400 without a logged traceback, so that the test's output stays
#: readable.
BAD_BODY = b"the body did not complete"

_seq = 0
_seq_lock = threading.Lock()


def next_seq():
    """The next request number: process-wide, whatever thread completes the body."""
    global _seq
    with _seq_lock:
        _seq += 1
        return _seq


def echo_body(method, target, body):
    """The JSON answer to a completed ``/echo`` request."""
    return json.dumps(
        {
            "seq": next_seq(),
            "method": method,
            "target": target,
            "body_len": len(body),
            "body": body[:200].decode("latin-1"),
        }
    ).encode()


def announce(port):
    print(f"listening on http://127.0.0.1:{port}", flush=True)


def bound_socket():
    """A listening socket on a port the kernel picks."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


# uvicorn, with its h11 parser: a raw ASGI app, no framework in between.


async def asgi_app(scope, receive, send):
    if scope["type"] != "http":
        return
    target = scope["raw_path"]
    if scope["query_string"]:
        target += b"?" + scope["query_string"]
    if target.startswith(b"/echo"):
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status, answer = 200, echo_body(scope["method"], target.decode("latin-1"), bytes(body))
    elif scope["method"] == "GET" and target == b"/heartbeat":
        status, answer = 200, b""
    else:
        status, answer = 404, b"not found"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(answer)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": answer})


def run_uvicorn():
    import uvicorn

    sock = bound_socket()

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            announce(sock.getsockname()[1])

    config = uvicorn.Config(
        asgi_app,
        http="h11",
        lifespan="off",
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        log_level="error",
        access_log=False,
    )
    Server(config).run(sockets=[sock])


# gunicorn, with the threaded worker: a WSGI app.


def wsgi_app(environ, start_response):
    method = environ["REQUEST_METHOD"]
    target = environ.get("RAW_URI") or environ.get("PATH_INFO", "")
    if target.startswith("/echo"):
        length = environ.get("CONTENT_LENGTH")
        try:
            body = environ["wsgi.input"].read()
        except Exception:
            body = None
        # gunicorn hands over a Content-Length body cut short by a closed connection
        # as it is: such a request never completed, so it gets no number either.
        if body is None or (length and length.isdigit() and len(body) < int(length)):
            status, answer = "400 Bad Request", BAD_BODY
        else:
            status, answer = "200 OK", echo_body(method, target, body)
    elif method == "GET" and target == "/heartbeat":
        status, answer = "200 OK", b""
    else:
        status, answer = "404 Not Found", b"not found"
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(answer)))],
    )
    return [answer]


def run_gunicorn():
    from gunicorn.app.base import BaseApplication

    def when_ready(server):
        for listener in server.LISTENERS:
            announce(listener.sock.getsockname()[1])

    class Application(BaseApplication):
        def load_config(self):
            for key, value in {
                "bind": "127.0.0.1:0",
                "worker_class": "gthread",
                "workers": 1,
                "threads": 4,
                "keepalive": KEEP_ALIVE_SECONDS,
                "graceful_timeout": 1,
                "loglevel": "error",
                "when_ready": when_ready,
            }.items():
                self.cfg.set(key, value)

        def load(self):
            return wsgi_app

    Application().run()


# aiohttp's own server.


def run_aiohttp():
    # aiohttp's own parser rather than its llhttp one: Node already brings llhttp, and
    # llhttp's binding leaves a handler that is reading a body waiting forever when
    # the body turns out malformed (it drops the payload without failing it), which
    # the balancer can only answer with a 504.
    os.environ["AIOHTTP_NO_EXTENSIONS"] = "1"
    from aiohttp import web

    # It logs every malformed request with a traceback, and the corpus is nothing but.
    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)

    async def handle(request):
        target = request.raw_path
        if target.startswith("/echo"):
            try:
                body = await request.read()
            except Exception:
                return web.Response(status=400, body=BAD_BODY)
            return web.Response(
                body=echo_body(request.method, target, body), content_type="application/json"
            )
        if request.method == "GET" and target == "/heartbeat":
            return web.Response()
        return web.Response(status=404, text="not found")

    async def serve():
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, keepalive_timeout=KEEP_ALIVE_SECONDS, access_log=None)
        await runner.setup()
        sock = bound_socket()
        await web.SockSite(runner, sock).start()
        announce(sock.getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(serve())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, choices=["uvicorn", "gunicorn", "aiohttp"])
    server = parser.parse_args().server
    {"uvicorn": run_uvicorn, "gunicorn": run_gunicorn, "aiohttp": run_aiohttp}[server]()


if __name__ == "__main__":
    sys.exit(main())
