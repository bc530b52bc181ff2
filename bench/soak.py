"""A bounded soak of the proxy on loopback, with an upstream that fails on purpose.

The proxy runs as its own process (``conscience serve``, SQLite store) in front of a scripted
upstream (a second process) that, for the requests the load generator marks, answers 500,
stalls past the proxy's upstream timeout, or resets the connection (TCP RST) — on the
generation call, on the review, or on the rewrite. Every request's outcome follows from its
mark, so error rates are checked request by request against the faults injected, not only in
total. Measured: requests by outcome, p50/p99 latency, the proxy's RSS and open file
descriptors (``/proc/PID``) after warm-up and at the end, and whether every judgement whose
response was acknowledged is in the store.

    python -m conscience.bench.soak --duration 600 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from conscience.server.threaded import free_port
from conscience.testing.scripted import ScriptedEngine

__all__ = ["EXPECTED", "FAULT_RATES", "SoakReport", "main", "run_soak", "serve_faulty_upstream"]

# Share of requests marked with each fault; the rest are answered. The marks travel in the
# user's message, which the generation, the review prompt and the rewrite prompt all carry.
FAULT_RATES = {
    "gen-500": 0.03,
    "gen-timeout": 0.01,
    "gen-reset": 0.03,
    "review-500": 0.02,
    "review-timeout": 0.01,
    "review-reset": 0.02,
    "rewrite-500": 0.02,  # only meaningful on an unethical answer, so it is always one
}
UNETHICAL_RATE = 0.2  # of the unfaulted requests: judged unethical and rewritten
STREAM_RATE = 0.25  # of all requests: asked as a stream (buffered mode)

# What the client must get for each mark: (status, error code or the conscience action).
EXPECTED: dict[str, tuple[int, str]] = {
    "ok": (200, "passed"),
    "unethical": (200, "rewritten"),
    "gen-500": (502, "upstream_error"),
    "gen-timeout": (504, "upstream_timeout"),
    "gen-reset": (502, "upstream_unavailable"),
    "review-500": (503, "review_failed"),
    "review-timeout": (503, "review_failed"),
    "review-reset": (503, "review_failed"),
    "rewrite-500": (200, "blocked"),  # without a rewrite the unethical answer is blocked
}
_MARK = re.compile(r"mark=([a-z0-9-]+)")
_SETTLE_S = 5.5  # past the proxy's keep-alive expiry (4 s), so idle pools are pruned


# --- the faulty upstream ----------------------------------------------------------------------


def _answer(
    engine: ScriptedEngine, unethical: ScriptedEngine, method: str, path: str, raw: bytes
) -> tuple[int, dict[str, Any], str | None]:
    """(status, JSON body, fault to act out) for one request to the scripted upstream."""
    if method == "GET" and path.endswith("/models"):
        ids = ["gen", engine.judge_model]
        data = [{"id": i, "object": "model", "owned_by": engine.owned_by} for i in ids]
        return 200, {"object": "list", "data": data}, None
    if method != "POST" or not path.endswith("/chat/completions"):
        return 404, {"error": {"message": f"no route {method} {path}"}}, None
    body = json.loads(raw)
    kind = engine.kind(body)
    found = _MARK.search(json.dumps(body))
    mark = found.group(1) if found else "ok"
    stage, _, fault = mark.partition("-")
    if fault and {"gen": "generate", "review": "review", "rewrite": "rewrite"}[stage] == kind:
        if fault == "500":
            return 500, {"error": {"message": "scripted fault 500", "type": "error"}}, None
        return 200, engine.completion(kind, body), fault  # timeout or reset
    wants_unethical = mark in ("unethical", "rewrite-500")
    return 200, (unethical if wants_unethical else engine).completion(kind, body), None


async def _serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    engines: tuple[ScriptedEngine, ScriptedEngine],
    stall_s: float,
) -> None:
    engine, unethical = engines
    try:
        while True:  # keep-alive: one request after another on the same connection
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head.decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            headers = {
                k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)
            }
            raw = await reader.readexactly(int(headers.get("content-length") or 0))
            status, payload, fault = _answer(engine, unethical, method, path, raw)
            if fault == "reset":
                # SO_LINGER 0: close sends RST instead of FIN, as a crashed peer would.
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            if fault == "timeout":
                await asyncio.sleep(stall_s)  # the proxy has given up by now
            data = json.dumps(payload).encode()
            writer.write(
                f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
                f"content-length: {len(data)}\r\n\r\n".encode()
                + data
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass  # the proxy closed the connection (or broke it): nothing to answer
    finally:
        writer.close()


def serve_faulty_upstream(port: int, stall_s: float) -> None:
    """Serve the faulty upstream on loopback until killed (``--serve-upstream PORT``).

    A bare asyncio server rather than uvicorn: an ASGI app cannot reach its socket to reset it.
    """

    engines = (ScriptedEngine(), ScriptedEngine(verdict="unethical"))  # answers, by verdict

    async def serve() -> None:
        server = await asyncio.start_server(
            lambda r, w: _serve_connection(r, w, engines, stall_s), "127.0.0.1", port, backlog=1024
        )
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


# --- processes ----------------------------------------------------------------------------------


@contextmanager
def _process(args: list[str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", *args], stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"{args[0]} did not start: {log.read_text()}") from None
                    time.sleep(0.1)
            yield proc
        finally:
            proc.terminate()  # SIGTERM: the proxy shuts down cleanly and closes its store
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _resources(pid: int) -> dict[str, int]:
    """The proxy's resident memory (KiB), open descriptors and sockets, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    fds = os.listdir(f"/proc/{pid}/fd")
    sockets = 0
    for fd in fds:
        with suppress(OSError):  # closed while we looked
            sockets += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return {"rss_kib": rss, "fds": len(fds), "sockets": sockets}


# --- the load -----------------------------------------------------------------------------------


@dataclass
class SoakReport:
    duration_s: float
    concurrency: int
    requests: int = 0
    by_mark: Counter[str] = field(default_factory=Counter)  # requests sent with each mark
    outcomes: Counter[str] = field(default_factory=Counter)  # "status code-or-action"
    mismatches: int = 0  # requests whose outcome differs from their mark's
    mismatch_examples: list[str] = field(default_factory=list)  # the first few
    latencies_ok_s: list[float] = field(default_factory=list)  # unfaulted requests
    latencies_all_s: list[float] = field(default_factory=list)
    start: dict[str, int] = field(default_factory=dict)  # resources after warm-up
    end: dict[str, int] = field(default_factory=dict)  # resources after the load
    peak: dict[str, int] = field(default_factory=dict)  # largest seen while loaded
    rss_series_kib: list[int] = field(default_factory=list)  # every 2 s while loaded
    acknowledged: set[str] = field(default_factory=set)  # ids clients got (warm-up included)
    stored: int = 0  # rows in the store at the end
    lost: int = 0  # acknowledged judgements missing from the store
    proxy_errors: int = 0  # ERROR lines and tracebacks in the proxy's log

    @staticmethod
    def _pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0

    def summary(self) -> dict[str, Any]:
        faults = sum(n for mark, n in self.by_mark.items() if mark not in ("ok", "unethical"))
        return {
            "duration_s": round(self.duration_s, 1),
            "concurrency": self.concurrency,
            "requests": self.requests,
            "rps": round(self.requests / self.duration_s, 1),
            "faults_injected": faults,
            "by_mark": dict(sorted(self.by_mark.items())),
            "outcomes": dict(sorted(self.outcomes.items())),
            "mismatches": self.mismatches,
            "p50_ms_unfaulted": round(self._pct(self.latencies_ok_s, 0.50), 1),
            "p99_ms_unfaulted": round(self._pct(self.latencies_ok_s, 0.99), 1),
            "p50_ms_all": round(self._pct(self.latencies_all_s, 0.50), 1),
            "p99_ms_all": round(self._pct(self.latencies_all_s, 0.99), 1),
            "resources_start": self.start,
            "resources_peak": self.peak,
            "resources_end": self.end,
            "rss_kib_every_30s": self.rss_series_kib[::15],
            "acknowledged": len(self.acknowledged),
            "stored": self.stored,
            "lost": self.lost,
            "proxy_errors": self.proxy_errors,
        }


def _pick_mark(rng: random.Random) -> str:
    roll = rng.random()
    for mark, rate in FAULT_RATES.items():
        if roll < rate:
            return mark
        roll -= rate
    return "unethical" if rng.random() < UNETHICAL_RATE else "ok"


def _outcome(response: httpx.Response, stream: bool) -> tuple[str, str | None]:
    """("status code-or-action", judgement id) of one response."""
    if response.status_code != 200:
        try:
            code = response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = "not-an-envelope"
        return f"{response.status_code} {code}", None
    if stream:
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        last = json.loads(events[-2]) if len(events) >= 2 and events[-1] == "[DONE]" else {}
        conscience = last.get("conscience") or {}
    else:
        conscience = response.json().get("conscience") or {}
    return f"200 {conscience.get('action')}", conscience.get("judgement_id")


async def _load(url: str, report: SoakReport, duration_s: float, seed: int) -> None:
    rng = random.Random(seed)
    counter = iter(range(10**9))
    limits = httpx.Limits(max_connections=report.concurrency)
    stop_at = time.monotonic() + duration_s
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def worker() -> None:
            while time.monotonic() < stop_at:
                n = next(counter)
                mark, stream = _pick_mark(rng), rng.random() < STREAM_RATE
                content = f"Question {n} of the soak, mark={mark}: what is the capital of France?"
                body = {"model": "gen", "messages": [{"role": "user", "content": content}]}
                started = time.perf_counter()
                try:
                    response = await http.post(
                        "/v1/chat/completions",
                        json={**body, "stream": stream},
                        headers={"X-Request-ID": f"soak-{n}"},
                    )
                    outcome, judgement_id = _outcome(response, stream)
                except httpx.HTTPError as exc:  # the proxy itself failed us: always a finding
                    outcome, judgement_id = f"client-error {type(exc).__name__}", None
                elapsed = time.perf_counter() - started
                report.requests += 1
                report.by_mark[mark] += 1
                report.outcomes[outcome] += 1
                report.latencies_all_s.append(elapsed)
                if mark in ("ok", "unethical"):
                    report.latencies_ok_s.append(elapsed)
                expected = "{} {}".format(*EXPECTED[mark])
                if outcome != expected:
                    report.mismatches += 1
                    if len(report.mismatch_examples) < 20:
                        report.mismatch_examples.append(f"soak-{n} {mark}: got {outcome!r}")
                if judgement_id is not None:
                    report.acknowledged.add(judgement_id)

        await asyncio.gather(*(worker() for _ in range(report.concurrency)))


async def _acknowledged(http: httpx.AsyncClient, report: SoakReport, what: str) -> None:
    """One unfaulted request outside the measured load; its judgement must be stored too."""
    body = {"model": "gen", "messages": [{"role": "user", "content": f"{what}, mark=ok"}]}
    response = await http.post("/v1/chat/completions", json=body)
    response.raise_for_status()
    report.acknowledged.add(response.json()["conscience"]["judgement_id"])


async def _warm_up(url: str, report: SoakReport) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for _ in range(3):
            await asyncio.gather(
                *(_acknowledged(http, report, "warm-up") for _ in range(report.concurrency))
            )


async def _settled(url: str, pid: int, report: SoakReport) -> dict[str, int]:
    """Resources once idle connections are due to close: wait past the keep-alive expiry,
    then one request (which prunes the expired ones from the proxy's pool)."""
    await asyncio.sleep(_SETTLE_S)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        await _acknowledged(http, report, "settle")
    await asyncio.sleep(0.5)
    return _resources(pid)


async def _sample(pid: int, report: SoakReport, every_s: float) -> None:
    while True:
        now = _resources(pid)
        report.peak = {k: max(v, report.peak.get(k, 0)) for k, v in now.items()}
        report.rss_series_kib.append(now["rss_kib"])
        await asyncio.sleep(every_s)


def run_soak(
    duration_s: float,
    concurrency: int,
    *,
    upstream_timeout: float = 2.0,
    seed: int = 7,
    workdir: Path | None = None,
) -> SoakReport:
    """Start upstream and proxy, load the proxy for ``duration_s``, and report."""
    report = SoakReport(duration_s=duration_s, concurrency=concurrency)
    with tempfile.TemporaryDirectory() as tmp:
        work = workdir or Path(tmp)
        store = work / "soak.sqlite3"
        upstream_port, proxy_port = free_port(), free_port()
        upstream = [
            "conscience.bench.soak",
            "--serve-upstream",
            str(upstream_port),
            "--stall",
            str(upstream_timeout + 1.0),
        ]
        proxy = [
            "conscience.cli",
            "serve",
            "--upstream",
            f"http://127.0.0.1:{upstream_port}/v1",
            "--model",
            "gen",
            "--judge-model",
            "judge",
            "--store",
            str(store),
            "--port",
            str(proxy_port),
            "--timeout",
            str(upstream_timeout),
            "--log-level",
            "warning",
        ]
        url = f"http://127.0.0.1:{proxy_port}"
        with (
            _process(upstream, upstream_port, work / "upstream.log"),
            _process(proxy, proxy_port, work / "proxy.log") as proc,
        ):

            async def soak() -> None:
                await _warm_up(url, report)
                report.start = await _settled(url, proc.pid, report)
                sampler = asyncio.create_task(_sample(proc.pid, report, 2.0))
                try:
                    await _load(url, report, duration_s, seed)
                finally:
                    sampler.cancel()
                report.end = await _settled(url, proc.pid, report)

            asyncio.run(soak())
        log = (work / "proxy.log").read_text(errors="replace")
        report.proxy_errors = log.count("Traceback") + len(re.findall(r"\bERROR\b", log))
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
            ids = {row[0] for row in db.execute("SELECT id FROM judgements")}
        report.stored = len(ids)
        report.lost = len(report.acknowledged - ids)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds of load")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--timeout", type=float, default=2.0, help="the proxy's upstream timeout")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--stall", type=float, default=3.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_faulty_upstream(args.serve_upstream, args.stall)
        return
    report = run_soak(
        args.duration, args.concurrency, upstream_timeout=args.timeout, seed=args.seed
    )
    summary = report.summary()
    print(json.dumps(summary, indent=2))
    for line in report.mismatch_examples:
        print("mismatch:", line)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
