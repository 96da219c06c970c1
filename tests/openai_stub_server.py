"""A real HTTP server on loopback that speaks the OpenAI chat-completions wire format.

Each request consumes the next scripted behaviour: ``"ok"`` (a well-formed reply with
top logprobs), ``"429"``, ``"500"``, ``"slow"`` (sleeps past the client's timeout, then
answers), ``"malformed"`` (200 with a body that lacks ``choices``) or ``"garbage"``
(200 with a non-JSON body). ``"429:<value>"`` and ``"503:<value>"`` answer with that status
and a ``Retry-After: <value>`` header (seconds or an HTTP date). When the script runs out,
every request is ``"ok"``. ``top`` sets the logprobs an ``"ok"`` reply carries (two servers
can serve "different models" under one name). Request bodies and headers, and the time each
request arrived, are recorded for assertions.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OK_TOP = [("80", -0.2231435513), ("90", -1.6094379124), ("Sure", -6.0)]


def ok_body(content: str = "80", top=OK_TOP) -> dict:
    tops = [{"token": t, "logprob": lp, "bytes": None} for t, lp in top]
    return {"id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": "stub",
            "choices": [{"index": 0, "finish_reason": "length",
                         "message": {"role": "assistant", "content": content},
                         "logprobs": {"content": [{"token": top[0][0], "logprob": top[0][1],
                                                   "bytes": None, "top_logprobs": tops}]}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


class StubServer:
    def __init__(self, script: list[str] | None = None, slow_s: float = 2.0, top=OK_TOP) -> None:
        self.script = list(script or [])
        self.slow_s = slow_s
        self.top = list(top)
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.times: list[float] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub._lock:
                    stub.requests.append(body)
                    stub.headers.append({k.lower(): v for k, v in self.headers.items()})
                    stub.times.append(time.monotonic())
                    what = stub.script.pop(0) if stub.script else "ok"
                if what == "slow":
                    time.sleep(stub.slow_s)
                    what = "ok"
                code, _, retry_after = what.partition(":")
                if retry_after:
                    self._send(int(code), json.dumps({"error": {"message": f"stub {code}"}}),
                               {"Retry-After": retry_after})
                elif what in ("429", "500"):
                    self._send(int(what), json.dumps({"error": {"message": f"stub {what}"}}))
                elif what == "malformed":
                    self._send(200, json.dumps({"id": "x", "object": "chat.completion"}))
                elif what == "garbage":
                    self._send(200, "<html>not json</html>")
                else:
                    self._send(200, json.dumps(ok_body(stub.top[0][0], stub.top)))

            def _send(self, code: int, text: str, headers: dict | None = None) -> None:
                data = text.encode()
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> StubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
