"""A fake vLLM + proxy pair on a loopback port, for the adapter scripts; stub commands on PATH."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from deploy_files import ADMIN_KEY


@dataclass
class FakeStack:
    """vLLM's /v1/models and /v1/load_lora_adapter, and the proxy's /health and /admin/adapter,
    on one server: as far as the scripts can tell, two services."""

    url: str = ""
    served: set[str] = field(default_factory=lambda: {"base/model"})
    generator: str = "base/model"
    calls: list[tuple[str, str, Any]] = field(default_factory=list)
    fail_load: bool = False


def _handler(stack: FakeStack) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _admin(self) -> bool:
            if self.headers.get("Authorization") != f"Bearer {ADMIN_KEY}":
                self._send(401, {"error": {"message": "bad admin key"}})
                return False
            return True

        def do_GET(self) -> None:
            stack.calls.append(("GET", self.path, None))
            if self.path == "/health":
                self._send(200, {"status": "ok"})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": m} for m in stack.served]})
            elif self.path == "/admin/adapter" and self._admin():
                self._send(200, {"model": stack.generator, "judge_model": "base/model"})
            elif self.path != "/admin/adapter":
                self._send(404, {"error": {"message": "no route"}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            stack.calls.append(("POST", self.path, body))
            if self.path == "/v1/load_lora_adapter":
                if stack.fail_load:
                    self._send(400, {"error": {"message": "cannot load"}})
                    return
                stack.served.add(body["lora_name"])
                self._send(200, {"message": "ok"})
            elif self.path == "/admin/adapter" and self._admin():
                if body["model"] not in stack.served:
                    self._send(404, {"error": {"message": f"not served: {body['model']}"}})
                    return
                stack.generator = body["model"]
                self._send(200, {"model": stack.generator, "judge_model": "base/model"})
            elif self.path != "/admin/adapter":
                self._send(404, {"error": {"message": "no route"}})

    return Handler


@pytest.fixture
def fake_stack() -> Iterator[FakeStack]:
    stack = FakeStack()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stack))
    stack.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stack
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def stub_bin(tmp_path: Path) -> Path:
    """A directory for stub commands; each stub writes its argv, one word a line, to
    ``<name>.args`` beside it, and the CONSCIENCE_MODEL it saw to ``<name>.model``."""
    directory = tmp_path / "bin"
    directory.mkdir()
    for name in ("conscience", "vllm"):
        stub = directory / name
        stub.write_text(
            "#!/bin/sh\n"
            f'printf "%s\\n" "$@" > "{directory}/{name}.args"\n'
            f'printf "%s" "${{CONSCIENCE_MODEL:-}}" > "{directory}/{name}.model"\n',
            encoding="utf-8",
        )
        stub.chmod(0o755)
    return directory


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "containers: needs a container engine and the proxy image (.ci/containers.sh)"
    )
