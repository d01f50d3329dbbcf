"""A local stand-in for the hub's upload API, for tests that push with the real huggingface_hub client.

It implements only what `HfApi.create_repo` + `upload_folder` call: repo creation, README
metadata validation, `preupload` (every file is answered "regular", so contents travel inline in
the commit and no LFS/xet storage is needed) and the NDJSON `commit`. Anything else is a 404 that
the test will see. Every request is recorded with its headers, and committed files are kept in
memory by path.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class FakeHub:
    url: str
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)  # method, path, headers
    repos: set[str] = field(default_factory=set)
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo -> path -> content
    commit_messages: list[str] = field(default_factory=list)


def start_fake_hub() -> tuple[FakeHub, ThreadingHTTPServer]:
    """Serve on 127.0.0.1 on a free port in a daemon thread; call `server.shutdown()` when done."""
    hub = FakeHub(url="")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self) -> None:
            hub.requests.append(("GET", self.path, dict(self.headers)))
            self._reply(404, {"error": f"fake hub: GET {self.path} not implemented"})

        def do_POST(self) -> None:
            hub.requests.append(("POST", self.path, dict(self.headers)))
            body = self._body()
            path = self.path.split("?")[0]
            if path == "/api/repos/create":
                data = json.loads(body)
                repo = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
                hub.repos.add(repo)
                hub.files.setdefault(repo, {})
                return self._reply(200, {"url": f"{hub.url}/{repo}", "name": repo})
            if path == "/api/validate-yaml":
                return self._reply(200, {})
            parts = path.split("/")  # ['', 'api', 'models', org, name, action, revision]
            if len(parts) == 7 and parts[1:3] == ["api", "models"]:
                repo, action = f"{parts[3]}/{parts[4]}", parts[5]
                if repo not in hub.repos:
                    return self._reply(404, {"error": f"Repository {repo} not found"})
                if action == "preupload":
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                        for f in files]})
                if action == "commit":
                    for line in body.splitlines():
                        item = json.loads(line)
                        if item["key"] == "header":
                            hub.commit_messages.append(item["value"]["summary"])
                        elif item["key"] == "file":
                            value = item["value"]
                            assert value["encoding"] == "base64", value
                            hub.files[repo][value["path"]] = base64.b64decode(value["content"])
                        else:
                            return self._reply(400, {"error": f"fake hub: unsupported commit item {item['key']}"})
                    oid = "0" * 40
                    return self._reply(200, {"commitUrl": f"{hub.url}/{repo}/commit/{oid}", "commitOid": oid,
                                             "pullRequestUrl": None})
            self._reply(404, {"error": f"fake hub: POST {self.path} not implemented"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return hub, server
