"""Proxy overhead against an instant scripted upstream, all in one run: latency, requests/s and
the CPU that each proxy's process spends on a request.

Paths to the same scripted engine (its own process): direct; conscience with the review off;
conscience with the review on (one judge call and one SQLite commit a request); LiteLLM as a
plain pass-through (callbacks, spend and error logs, access log and database off; in its own
virtualenv, made on first use). Each path at concurrency 1 and 32, in interleaved rounds so
that drift on a shared machine hits every path alike. CPU is the user + system time of the
proxy's process and its children, read from /proc before and after the measured requests (so
neither start-up nor warm-up), divided by the requests; the upstream's is read the same way.

    python -m conscience.bench.proxy_overhead [--requests 1000] [--rounds 3] [--no-litellm]
        [--baseline REV]...

``--baseline REV`` adds the proxy (review off) as it was at git revision REV of this checkout,
served from an export of that revision, to measure a change against it in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx

from conscience.server.threaded import free_port

BODY = {"model": "gen", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}
# The version of the earlier comparison, pinned: LiteLLM 1.107.0 was a compromised
# release, and an unpinned install would measure whatever came out last.
LITELLM = "litellm[proxy]==1.108.7"
# LiteLLM's uvicorn logs every request unless told otherwise; the proxy's access log is off.
_QUIET_ACCESS_LOG = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"uvicorn.access": {"level": "WARNING", "handlers": [], "propagate": False}},
}


@contextmanager
def serve(
    command: list[str],
    port: int,
    env: dict[str, str | None] | None = None,
    health: str = "/health",
    cwd: Path | None = None,
) -> Iterator[tuple[str, int]]:
    """A server process on loopback: its URL, once ``health`` answers 200, and its pid. ``env``
    is added to this process's environment (a None value removes the variable)."""
    environ = {**os.environ, **(env or {})}
    url = f"http://127.0.0.1:{port}"
    # Its stderr to a file, not a pipe: a server that logs would block once a pipe is full.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={name: value for name, value in environ.items() if value is not None},
            cwd=cwd,
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(url + health, timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    log.seek(0)
                    said = log.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"{command[:4]} did not start:\n{said}")
                time.sleep(0.2)
            yield url, proc.pid
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@contextmanager
def serve_module(
    args: list[str], port: int, env: dict[str, str | None] | None = None
) -> Iterator[tuple[str, int]]:
    """A ``python -m`` server of this environment on loopback: its URL and its pid."""
    with serve([sys.executable, "-m", *args], port, env) as served:
        yield served


def export_revision(revision: str, folder: Path) -> Path:
    """This checkout's ``revision`` laid out as the installed ``conscience`` package under
    ``folder`` (the package folders of pyproject.toml): the PYTHONPATH that serves it."""
    root = Path(__file__).resolve().parents[1]
    tree, package = folder / "tree", folder / "pkg" / "conscience"
    tree.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", revision], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    shutil.copytree(tree / "conscience", package)
    for sub in ("engine", "server", "trainer", "evals", "testing", "bench", "cli"):
        if (tree / sub).is_dir():  # an older revision may lack a folder added since
            (package / sub).symlink_to(tree / sub)
    return folder / "pkg"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its descendants (Linux /proc)."""
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent, seconds)
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    tree, total = [pid], 0.0
    while tree:
        current = tree.pop()
        total += stats.get(current, (0, 0.0))[1]
        tree += [child for child, (parent, _) in stats.items() if parent == current]
    return total


def litellm_venv(venv: Path) -> Path:
    """The ``litellm`` command of ``venv``, made with LiteLLM installed the first time."""
    command = venv / "bin" / "litellm"
    if not command.exists():
        print(f"installing {LITELLM} into {venv} (first use)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", LITELLM]
        subprocess.run(pip, check=True)
    return command


def litellm_command(command: Path, upstream: str, port: int, folder: Path) -> list[str]:
    """LiteLLM's proxy as a plain pass-through of model ``gen`` to ``upstream``."""
    config = {
        "model_list": [
            {
                "model_name": "gen",
                "litellm_params": {
                    "model": "openai/gen",
                    "api_base": f"{upstream}/v1",
                    "api_key": "none",
                },
            }
        ],
        "litellm_settings": {"set_verbose": False, "turn_off_message_logging": True},
        "general_settings": {"disable_spend_logs": True, "disable_error_logs": True},
    }
    (folder / "litellm.json").write_text(json.dumps(config))  # YAML is a superset of JSON
    (folder / "litellm-log.json").write_text(json.dumps(_QUIET_ACCESS_LOG))
    return [
        str(command),
        *("--config", str(folder / "litellm.json")),
        *("--host", "127.0.0.1", "--port", str(port)),
        *("--log_config", str(folder / "litellm-log.json")),
    ]


# Started without a master key or database: what a plain pass-through needs.
LITELLM_ENV: dict[str, str | None] = {
    "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    "LITELLM_LOG": "ERROR",
    "DATABASE_URL": None,
}


@dataclass
class Tally:
    """One path at one concurrency, over every round."""

    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the measured phases
    requests: int = 0
    errors: int = 0
    cpu: float = 0.0  # the proxy's CPU seconds over the measured phases
    upstream_cpu: float = 0.0

    def row(self) -> dict[str, float]:
        ordered = sorted(self.latencies)
        return {
            "p50_ms": statistics.median(ordered) * 1000,
            "p99_ms": ordered[int(0.99 * (len(ordered) - 1))] * 1000,
            "rps": self.requests / self.seconds,
            "cpu_ms": self.cpu / self.requests * 1000,
            "upstream_cpu_ms": self.upstream_cpu / self.requests * 1000,
        }


async def _load(url: str, concurrency: int, requests: int, tally: Tally, pids: list[int]) -> None:
    """``requests`` chat completions from ``concurrency`` workers, after a warm-up; the CPU of
    ``pids`` (the proxy's, the upstream's) read around the measured part only."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    target = url + "/v1/chat/completions"
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one() -> float | None:
            started = time.perf_counter()
            async with http.post(target, json=BODY) as response:
                await response.read()
                return time.perf_counter() - started if response.status == 200 else None

        for _ in range(20):  # warm-up: connections, caches
            await one()
        queue = iter(range(requests))

        async def worker() -> None:
            for _ in queue:
                latency = await one()
                if latency is None:
                    tally.errors += 1
                else:
                    tally.latencies.append(latency)

        before = [cpu_seconds(pid) for pid in pids]
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        tally.seconds += time.perf_counter() - started
        after = [cpu_seconds(pid) for pid in pids]
    tally.requests += requests
    tally.cpu += after[0] - before[0]
    tally.upstream_cpu += after[-1] - before[-1]


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="per path, round and level")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    parser.add_argument("--litellm-venv", type=Path, default=Path(".venv-litellm"))
    parser.add_argument(
        "--baseline", action="append", default=[], metavar="REV", help="also the proxy at REV"
    )
    args = parser.parse_args()
    litellm = None if args.no_litellm else litellm_venv(args.litellm_venv.absolute())
    ports = {name: free_port() for name in ("upstream", "off", "rewrite", "litellm")}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as servers:
        folder = Path(tmp)
        scripted = ["conscience.testing.scripted", "--port", str(ports["upstream"])]
        upstream, upstream_pid = servers.enter_context(serve_module(scripted, ports["upstream"]))

        def proxy(policy: str) -> list[str]:
            return [
                "conscience.cli",
                "serve",
                *("--upstream", f"{upstream}/v1", "--model", "gen", "--judge-model", "judge"),
                *("--port", str(ports[policy]), "--policy", policy),
                *("--store", str(folder / f"{policy}.sqlite3"), "--log-level", "warning"),
            ]

        paths = {"direct": (upstream, upstream_pid)}
        paths["conscience, review off"] = servers.enter_context(
            serve_module(proxy("off"), ports["off"])
        )
        paths["conscience, review on"] = servers.enter_context(
            serve_module(proxy("rewrite"), ports["rewrite"])
        )
        for revision in args.baseline:
            port, exported = free_port(), export_revision(revision, folder / revision)
            command = proxy("off")
            command[command.index("--port") + 1] = str(port)
            command[command.index("--store") + 1] = str(folder / f"{revision}.sqlite3")
            # From the export's folder: `python -m` puts the working folder first on the path.
            env: dict[str, str | None] = {"PYTHONPATH": str(exported)}
            paths[f"at {revision}, review off"] = servers.enter_context(
                serve([sys.executable, "-m", *command], port, env, cwd=exported)
            )
        if litellm is not None:
            command = litellm_command(litellm, upstream, ports["litellm"], folder)
            paths["LiteLLM"] = servers.enter_context(
                serve(command, ports["litellm"], LITELLM_ENV, health="/health/liveliness")
            )
        print(_uptime(), flush=True)
        tallies: dict[tuple[str, int], Tally] = defaultdict(Tally)
        for round_ in range(args.rounds):
            order = list(paths.items())
            order = order if round_ % 2 == 0 else order[::-1]
            for concurrency in (1, 32):
                for name, (url, pid) in order:
                    tally = tallies[name, concurrency]
                    asyncio.run(_load(url, concurrency, args.requests, tally, [pid, upstream_pid]))
            print(f"round {round_ + 1} of {args.rounds} done; {_uptime()}", flush=True)
    _report(tallies, paths)


def _report(tallies: dict[tuple[str, int], Tally], paths: dict[str, tuple[str, int]]) -> None:
    print(
        f"{'path':<24} {'conc':>4} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7} {'p50 +ms':>8} "
        f"{'rps ratio':>9} {'CPU ms/req':>10} {'upstream CPU':>12}"
    )
    for concurrency in (1, 32):
        base = tallies["direct", concurrency].row()
        for name in paths:
            tally = tallies[name, concurrency]
            row = tally.row()
            cpu = "-" if name == "direct" else f"{row['cpu_ms']:.3f}"
            print(
                f"{name:<24} {concurrency:>4} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} "
                f"{row['rps']:>7.0f} {row['p50_ms'] - base['p50_ms']:>+8.2f} "
                f"{row['rps'] / base['rps']:>9.2f} {cpu:>10} {row['upstream_cpu_ms']:>12.3f}"
            )
            if tally.errors:
                print(f"  {tally.errors} requests of {name} failed")


if __name__ == "__main__":
    main()
