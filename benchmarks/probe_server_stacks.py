"""Does a bare server stack cut a client that trickles its request headers? (BUILD.md, "Serving")

The probe behind the choice of uvicorn for ``jaxtag.serving``: a minimal app on uvicorn (h11,
``timeout_keep_alive=5``) and on aiohttp (``keepalive_timeout=5``), each on 127.0.0.1; one client
connects and sends a request line and then one header byte every 0.8 s, never ending its headers.
Prints, per stack, the seconds until the server closed the connection (None: still open at 14 s).
aiohttp is not a jaxtag dependency: ``pip install aiohttp`` first.

  .venv/bin/python benchmarks/probe_server_stacks.py uvicorn
  .venv/bin/python benchmarks/probe_server_stacks.py aiohttp
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time


def trickle_headers(port: int, limit: float = 14.0) -> float | None:
  """Seconds until the server closed a header-trickling connection (None: not within limit)."""
  with socket.create_connection(("127.0.0.1", port)) as sock:
    sock.settimeout(0.2)
    start = time.monotonic()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: probe\r\nX-Slow: ")
    while time.monotonic() - start < limit:
      try:
        sock.send(b"a")
        if sock.recv(100) == b"":
          return time.monotonic() - start
      except socket.timeout:
        pass
      except OSError:
        return time.monotonic() - start
      time.sleep(0.8)
  return None


async def asgi_app(scope, receive, send):
  del receive
  if scope["type"] == "http":
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def probe_uvicorn(port: int = 8765) -> None:
  import uvicorn
  config = uvicorn.Config(asgi_app, port=port, http="h11", timeout_keep_alive=5,
                          log_level="warning", lifespan="off")
  threading.Thread(target=uvicorn.Server(config).run, daemon=True).start()
  time.sleep(1.0)
  print("uvicorn", uvicorn.__version__, "cut the header trickler after", trickle_headers(port))


def probe_aiohttp(port: int = 8766) -> None:
  import aiohttp
  from aiohttp import web

  async def health(request):
    del request
    return web.Response(text="ok")

  async def serve():
    app = web.Application()
    app.router.add_get("/healthz", health)
    runner = web.AppRunner(app, keepalive_timeout=5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.sleep(3600)

  threading.Thread(target=lambda: asyncio.run(serve()), daemon=True).start()
  time.sleep(1.0)
  print("aiohttp", aiohttp.__version__, "cut the header trickler after", trickle_headers(port))


if __name__ == "__main__":
  {"uvicorn": probe_uvicorn, "aiohttp": probe_aiohttp}[sys.argv[1]]()
