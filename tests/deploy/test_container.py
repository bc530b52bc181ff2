"""The proxy image, built from the Dockerfile and run in a real container engine: one reviewed
answer through the real `openai` client, and the store kept across a restart.

Set up by `.ci/containers.sh` (podman, a local base image, the image, the model volume filled
from the host's cache), which exports the three ``CONSCIENCE_TEST_CONTAINER_*`` variables read
here. Without them the tests are skipped; where ``CONSCIENCE_REQUIRE_CONTAINERS=1`` (CI), they
fail instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from openai import OpenAI

from conscience.labels import Action, Verdict

pytestmark = [pytest.mark.containers, pytest.mark.slow]

ADMIN_KEY = "container-test-admin-key"
READY_TIMEOUT_S = 180  # a cold start on 2 busy cores: the engine loads the 1.1 GB model


def _required() -> bool:
    return os.environ.get("CONSCIENCE_REQUIRE_CONTAINERS") == "1"


@dataclass(frozen=True)
class Engine:
    command: str  # podman (or docker)
    image: str
    models_volume: str

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.command, *args], capture_output=True, text=True, timeout=timeout, check=False
        )


@pytest.fixture(scope="module")
def engine() -> Engine:
    names = ("ENGINE", "IMAGE", "MODELS")
    values = {n: os.environ.get(f"CONSCIENCE_TEST_CONTAINER_{n}", "") for n in names}
    reason = ""
    if not all(values.values()):
        reason = 'no container engine set up (run `eval "$(.ci/containers.sh)"` as root)'
    elif shutil.which(values["ENGINE"]) is None:
        reason = f"{values['ENGINE']} is not installed"
    if reason:
        if _required():
            pytest.fail(f"CONSCIENCE_REQUIRE_CONTAINERS=1 but {reason}")
        pytest.skip(reason)
    return Engine(values["ENGINE"], values["IMAGE"], values["MODELS"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proxy:
    engine: Engine
    name: str
    url: str

    def wait_ready(self) -> float:
        """Seconds until /ready answers 200; the container's log in the failure otherwise."""
        start = time.monotonic()
        while time.monotonic() - start < READY_TIMEOUT_S:
            try:
                if httpx.get(f"{self.url}/ready", timeout=5).status_code == 200:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            state = self.engine("inspect", "--format", "{{.State.Status}}", self.name)
            if state.stdout.strip() not in ("running", "created"):
                break
            time.sleep(1)
        logs = self.engine("logs", "--tail", "40", self.name)
        pytest.fail(f"the proxy never got ready:\n{logs.stdout}{logs.stderr}")


@pytest.fixture(scope="module")
def proxy(engine: Engine) -> Iterator[Proxy]:
    """The image as docs/deploy.md runs it: the model volume on /models, a data volume on /data.
    Host networking, on a free loopback port: no container network to set up on CI's host."""
    tag = uuid.uuid4().hex[:8]
    name, data = f"conscience-ci-{tag}", f"conscience-ci-data-{tag}"
    port = _free_port()
    created = engine("volume", "create", "--label", "conscience-ci", data)
    assert created.returncode == 0, created.stderr
    started = engine(
        "run", "-d", "--name", name, "--label", "conscience-ci", "--network", "host",
        "-v", f"{engine.models_volume}:/models", "-v", f"{data}:/data",
        "-e", f"CONSCIENCE_PORT={port}", "-e", f"CONSCIENCE_ADMIN_KEY={ADMIN_KEY}",
        "-e", "CONSCIENCE_ENGINE_CTX_SIZE=2048",
        engine.image, "serve", "--host", "127.0.0.1",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        yield Proxy(engine, name, f"http://127.0.0.1:{port}")
    finally:
        engine("rm", "-f", "-v", "-t", "5", name)  # -v: the image's other volumes too
        engine("volume", "rm", "-f", data)


def test_a_request_to_the_container_comes_back_reviewed_and_the_store_survives_a_restart(
    proxy: Proxy,
):
    first_start = proxy.wait_ready()
    client = OpenAI(base_url=f"{proxy.url}/v1", api_key="any", timeout=300, max_retries=0)
    completion = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Name one prime number. One word."}],
        max_tokens=8,
    )
    conscience = completion.model_extra["conscience"]
    assert conscience["verdict"] in set(Verdict)
    assert conscience["action"] in set(Action) - {Action.UNREVIEWED}
    judgement_id = conscience["judgement_id"]

    restarted = proxy.engine("restart", "-t", "10", proxy.name)
    assert restarted.returncode == 0, restarted.stderr
    second_start = proxy.wait_ready()
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    kept = httpx.get(f"{proxy.url}/admin/judgements/{judgement_id}", headers=admin, timeout=30)
    assert kept.status_code == 200, kept.text
    assert kept.json()["verdict"] == conscience["verdict"]
    print(f"ready in {first_start:.1f} s, {second_start:.1f} s after the restart")
