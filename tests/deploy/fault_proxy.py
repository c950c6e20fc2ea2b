"""A fault-injecting proxy in front of the test control plane's API server: the Nth server-side apply answers 500.

Real: every request goes on to the real kube-apiserver (TLS, its CA checked) with the caller's own
token, and its answer comes back unchanged. Injected: the one apply (a PATCH of
application/apply-patch+yaml that is not a dry run) chosen by number is answered with the
apiserver's own Status shape for a 500, and never reaches the server.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml

APPLY_TYPE = "application/apply-patch+yaml"
#: Hop-by-hop headers a proxy does not pass on.
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization"}


class FaultProxy:
    """`with FaultProxy(kubeconfig, fail_apply=3) as proxy:` then use proxy.kubeconfig; proxy.applies counts them."""

    def __init__(self, kubeconfig: Path, fail_apply: int):
        config = yaml.safe_load(Path(kubeconfig).read_text())
        cluster = config["clusters"][0]["cluster"]
        upstream = urlsplit(cluster["server"])
        ca = tempfile.NamedTemporaryFile("wb", suffix=".crt", delete=False)
        ca.write(base64.b64decode(cluster["certificate-authority-data"]))
        ca.close()
        context = ssl.create_default_context(cafile=ca.name)
        self.applies, self.failed = 0, []
        lock, proxy = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                query = parse_qs(urlsplit(self.path).query)
                if self.command == "PATCH" and self.headers.get("Content-Type") == APPLY_TYPE \
                        and "dryRun" not in query:
                    with lock:
                        proxy.applies += 1
                        number = proxy.applies
                    if number == fail_apply:
                        proxy.failed.append(self.path)
                        status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500,
                                  "reason": "InternalError",
                                  "message": f"injected fault: apply number {number} answered 500 by the test's proxy"}
                        return self._answer(500, {"Content-Type": "application/json"}, json.dumps(status).encode())
                upstream_conn = http.client.HTTPSConnection(upstream.hostname, upstream.port, context=context,
                                                            timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP and k.lower() != "host"}
                upstream_conn.request(self.command, self.path, body=body, headers=headers)
                answer = upstream_conn.getresponse()
                data = answer.read()  # watches end by themselves (timeoutSeconds), so reading it all is bounded
                upstream_conn.close()
                self._answer(answer.status, {k: v for k, v in answer.getheaders() if k.lower() not in _HOP
                                             and k.lower() != "content-length"}, data)

            def _answer(self, code: int, headers: dict, data: bytes):
                self.send_response(code)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward  # noqa: N815 (http.server's names)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        config["clusters"][0]["cluster"] = {"server": f"http://127.0.0.1:{self.server.server_port}"}
        self.kubeconfig = Path(kubeconfig).with_suffix(".via-proxy.kubeconfig")
        self.kubeconfig.write_text(yaml.safe_dump(config))

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
