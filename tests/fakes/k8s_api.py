"""A loopback HTTP server that plays the few Kubernetes API calls `dimflow submit` makes.

It records every request (method, path, query, JSON body) and answers from a small in-memory store:
ConfigMaps (read, replace, create), Jobs (create; ``/status`` reads walk a scripted list of statuses
per Job, keyed by the Job name's prefix, the last one repeating), Pods of a Job (one failed pod when
scripted) and that pod's log. Anything else is a 404 with a Kubernetes ``Status`` body, so a call the
test did not expect shows up as a failure, not a hang.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


@dataclass
class FakeKubernetes:
    statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # job-name prefix -> statuses
    config_maps: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed_pod_log: str | None = None
    calls: list[Call] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._reads: dict[str, int] = {}
        self._server: http.server.ThreadingHTTPServer | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> FakeKubernetes:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                url = urlparse(self.path)
                call = Call(self.command, url.path, parse_qs(url.query), body)
                with fake._lock:
                    fake.calls.append(call)
                    code, payload = fake._answer(call)
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(code)
                self.send_header(
                    "Content-Type", "text/plain" if isinstance(payload, str) else "application/json"
                )
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def host(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def api_client(self):
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.host
        return client.ApiClient(configuration)

    # -- routes ------------------------------------------------------------------------------------

    def _answer(self, call: Call) -> tuple[int, Any]:
        path = call.path
        if m := re.fullmatch(r"/api/v1/namespaces/([^/]+)/configmaps/([^/]+)", path):
            name = m.group(2)
            if call.method == "GET":
                return (200, self.config_maps[name]) if name in self.config_maps else _not_found(name)
            if call.method == "PUT":
                if name not in self.config_maps:
                    return _not_found(name)
                self.config_maps[name] = call.body
                return 200, call.body
        if re.fullmatch(r"/api/v1/namespaces/[^/]+/configmaps", path) and call.method == "POST":
            self.config_maps[call.body["metadata"]["name"]] = call.body
            return 201, call.body
        if re.fullmatch(r"/apis/batch/v1/namespaces/[^/]+/jobs", path) and call.method == "POST":
            self.jobs[call.body["metadata"]["name"]] = call.body
            return 201, call.body
        if (
            m := re.fullmatch(r"/apis/batch/v1/namespaces/[^/]+/jobs/([^/]+)/status", path)
        ) and call.method == "GET":
            name = m.group(1)
            if name not in self.jobs:
                return _not_found(name)
            script = next((s for prefix, s in self.statuses.items() if name.startswith(prefix)), [{}])
            index = self._reads.get(name, 0)
            self._reads[name] = index + 1
            return 200, {**self.jobs[name], "status": script[min(index, len(script) - 1)]}
        if re.fullmatch(r"/api/v1/namespaces/[^/]+/pods", path) and call.method == "GET":
            selector = call.query.get("labelSelector", [""])[0]
            items = []
            if self.failed_pod_log is not None:
                job = selector.split("=", 1)[-1]
                items.append({"metadata": {"name": f"{job}-0-abcde"}, "status": {"phase": "Failed"}})
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}
        if re.fullmatch(r"/api/v1/namespaces/[^/]+/pods/[^/]+/log", path) and call.method == "GET":
            return 200, self.failed_pod_log or ""
        return _not_found(path)


def _not_found(name: str) -> tuple[int, dict[str, Any]]:
    return 404, {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": f"{name} not found",
        "reason": "NotFound",
        "code": 404,
    }
