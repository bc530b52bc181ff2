"""Publish, roll back and record the LoRA adapter that the compose stack generates with.

    conscience adapter list                # the adapters on the volume, newest first (* = CURRENT)
    conscience adapter publish NAME        # vLLM loads /adapters/NAME, the proxy generates with it
    conscience adapter publish BASE_MODEL  # roll back to the base model (no adapter)
    conscience adapter record              # write the proxy's generator to /adapters/CURRENT
    conscience adapter restore             # at the proxy's start: switch it to CURRENT

(``deploy/adapter.py`` is the same command for the compose scripts; ``conscience train
--publish`` calls :func:`publish` after a run that passed the gate.) It is the engine layer's:
publishing tells the serving engine what to serve, whoever trained the adapter.

Publishing is two calls, in this order: vLLM's ``POST /v1/load_lora_adapter`` with
``{"lora_name", "lora_path"}`` (vLLM runs with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True), then the
proxy's ``POST /admin/adapter`` with ``{"model": NAME}``, which refuses a name that vLLM does not
serve. ``CURRENT`` is written last: vLLM loads it when it starts (deploy/vllm-serve.sh) and the
proxy is switched back to it when it starts (deploy/serve.sh runs ``restore``), so a restart of
either keeps the adapter that was published.
Rolling back is publishing an older adapter (or the base model). It runs in the trainer
container, where the adapters volume is writable and vLLM and the proxy are reachable::

    docker compose run --rm --entrypoint /app/deploy/adapter.py trainer publish run-20261126-031500

The admin key (and vLLM's key, if it has one) come from the project's settings:
CONSCIENCE_ADMIN_KEY and CONSCIENCE_UPSTREAM_API_KEY.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from conscience.errors import ConscienceError

__all__ = [
    "ADAPTER_NAME",
    "AdapterError",
    "list_adapters",
    "main",
    "publish",
    "read_current",
    "record",
    "restore",
    "write_current",
]

# A directory name under the adapters volume: no slash, no leading dot (so never "..").
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class AdapterError(ConscienceError):
    """A publish or record that did not happen; the message says why."""


def _check(response: httpx.Response, what: str) -> Any:
    if response.is_success:
        try:
            return response.json()
        except ValueError:
            return response.text
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text.strip()[:300]
    raise AdapterError(f"{what}: HTTP {response.status_code}: {message}")


def _bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _switch(client: httpx.Client, proxy: str, admin_key: str, name: str) -> None:
    """Have the proxy generate with ``name``; it refuses a name that vLLM does not serve."""
    _check(
        client.post(f"{proxy}/admin/adapter", json={"model": name}, headers=_bearer(admin_key)),
        f"POST {proxy}/admin/adapter",
    )


def _served(client: httpx.Client, vllm: str, headers: dict[str, str]) -> set[str]:
    listing = _check(client.get(f"{vllm}/v1/models", headers=headers), f"GET {vllm}/v1/models")
    return {m["id"] for m in listing.get("data", []) if isinstance(m, dict) and "id" in m}


def read_current(adapters: Path) -> str | None:
    """The name in ``adapters/CURRENT``, or None when nothing was recorded."""
    try:
        text = (adapters / "CURRENT").read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return text.splitlines()[0] if text else None


def write_current(adapters: Path, name: str) -> None:
    """Record ``name`` atomically: a reader sees the old name or the new one, never half."""
    fd, tmp = tempfile.mkstemp(dir=adapters, prefix=".CURRENT.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(name + "\n")
        os.chmod(tmp, 0o644)  # vLLM and the proxy read it under other users
        os.replace(tmp, adapters / "CURRENT")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def list_adapters(adapters: Path) -> list[dict[str, Any]]:
    """Every adapter directory, newest first, with the status its report.json gives."""
    found = []
    for path in adapters.iterdir() if adapters.is_dir() else []:
        if not (path / "adapter_config.json").is_file():
            continue
        status = None
        with contextlib.suppress(OSError, ValueError, AttributeError):  # no report, or not ours
            status = json.loads((path / "report.json").read_text(encoding="utf-8")).get("status")
        found.append({"name": path.name, "mtime": path.stat().st_mtime, "status": status})
    return sorted(found, key=lambda a: (a["mtime"], a["name"]), reverse=True)


def publish(
    client: httpx.Client,
    name: str,
    *,
    vllm: str | None,
    proxy: str,
    adapters: Path,
    admin_key: str,
    vllm_key: str | None = None,
) -> str:
    """Make ``name`` the generating model: load it into vLLM unless vLLM already serves it (the
    base model, an adapter loaded before), switch the proxy to it, then record it in CURRENT.

    A proxy that runs the embedded engine (its ``GET /admin/adapter`` says ``"engine":
    "embedded"``), or ``vllm=None``, loads the adapter itself from its CONSCIENCE_ADAPTERS_DIR:
    the switch alone publishes. Returns what was done, in words. Nothing is recorded unless
    every call succeeded.
    """
    if vllm is None or _engine(client, proxy, admin_key) == "embedded":
        if name != Path(name).name or name.startswith("."):
            raise AdapterError(f"{name!r} is not an adapter directory name")
        _switch(client, proxy, admin_key, name)
        write_current(adapters, name)
        return (
            f"the proxy's embedded engine serves {name} and generates with it; "
            f"recorded in {adapters / 'CURRENT'}"
        )
    vllm_headers = _bearer(vllm_key)
    served = _served(client, vllm, vllm_headers)
    done = f"vLLM already serves {name}"
    if name not in served:
        if not ADAPTER_NAME.fullmatch(name):
            raise AdapterError(f"{name!r} is not served by vLLM nor an adapter directory name")
        path = adapters / name
        if not (path / "adapter_config.json").is_file():
            raise AdapterError(f"{path} is not an adapter (no adapter_config.json)")
        body = {"lora_name": name, "lora_path": str(path)}
        _check(
            client.post(f"{vllm}/v1/load_lora_adapter", json=body, headers=vllm_headers),
            f"POST {vllm}/v1/load_lora_adapter",
        )
        done = f"vLLM loaded {name} from {path}"
    _switch(client, proxy, admin_key, name)
    write_current(adapters, name)
    return f"{done}; the proxy generates with it; recorded in {adapters / 'CURRENT'}"


def _adapter_state(client: httpx.Client, proxy: str, admin_key: str) -> Any:
    return _check(
        client.get(f"{proxy}/admin/adapter", headers=_bearer(admin_key)),
        f"GET {proxy}/admin/adapter",
    )


def _engine(client: httpx.Client, proxy: str, admin_key: str) -> str | None:
    """``embedded`` when the proxy runs its own engine (and loads adapters itself)."""
    answer = _adapter_state(client, proxy, admin_key)
    return answer.get("engine") if isinstance(answer, dict) else None


def _generator(client: httpx.Client, proxy: str, admin_key: str) -> str:
    answer = _adapter_state(client, proxy, admin_key)
    name = answer.get("model") if isinstance(answer, dict) else None
    if not isinstance(name, str) or not name:
        raise AdapterError(f"GET {proxy}/admin/adapter gave no model: {answer!r}")
    return name


def record(client: httpx.Client, *, proxy: str, adapters: Path, admin_key: str) -> str:
    """Write the proxy's current generator to CURRENT (after a run that may have published)."""
    name = _generator(client, proxy, admin_key)
    if read_current(adapters) != name:
        write_current(adapters, name)
    return name


def restore(
    client: httpx.Client, *, proxy: str, adapters: Path, admin_key: str, wait_s: float = 300.0
) -> str | None:
    """Switch a freshly started proxy to the adapter in CURRENT, once it answers.

    The proxy starts generating with CONSCIENCE_MODEL; this puts back the adapter published last
    (vLLM loaded it at its own start). Returns the name, or None when nothing is recorded.
    """
    name = read_current(adapters)
    if name is None:
        return None
    deadline = time.monotonic() + wait_s
    while True:
        with contextlib.suppress(httpx.TransportError):
            if client.get(f"{proxy}/health").is_success:
                break
        if time.monotonic() > deadline:
            raise AdapterError(f"{proxy} did not answer within {wait_s:.0f} s")
        time.sleep(0.5)
    if _generator(client, proxy, admin_key) != name:
        _switch(client, proxy, admin_key, name)
    return name


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conscience adapter", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--vllm", default="http://vllm:8000", help="vLLM's base URL (no /v1)")
    parser.add_argument("--proxy", default="http://proxy:8000", help="the proxy's base URL")
    parser.add_argument("--adapters", default="/adapters", help="the adapters volume")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP call")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the adapters on the volume, newest first")
    publish_ = commands.add_parser("publish", help="load into vLLM, switch the proxy, record")
    publish_.add_argument("name", help="an adapter directory under --adapters, or the base model")
    commands.add_parser("record", help="write the proxy's generator to CURRENT")
    commands.add_parser("restore", help="switch a starting proxy to CURRENT once it answers")
    return parser


def _keys() -> tuple[str, str | None]:
    from conscience.settings import Settings  # the one place that reads CONSCIENCE_* variables

    settings = Settings()
    if settings.admin_key is None:
        raise AdapterError("CONSCIENCE_ADMIN_KEY is not set: the proxy's admin API is disabled")
    upstream = settings.upstream_api_key
    return (
        settings.admin_key.get_secret_value(),
        upstream.get_secret_value() if upstream else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    adapters = Path(args.adapters)
    vllm, proxy = args.vllm.rstrip("/"), args.proxy.rstrip("/")
    try:
        if args.command == "list":
            current = read_current(adapters)
            listed = list_adapters(adapters)
            for adapter in listed:
                mark = "*" if adapter["name"] == current else " "
                print(f"{mark} {adapter['name']}  {adapter['status'] or '-'}")
            if current and current not in {adapter["name"] for adapter in listed}:
                print(f"* {current}  (no adapter here: the base model)")
            return 0
        admin_key, vllm_key = _keys()
        with httpx.Client(timeout=args.timeout) as client:
            if args.command == "publish":
                print(
                    publish(
                        client,
                        args.name,
                        vllm=vllm,
                        proxy=proxy,
                        adapters=adapters,
                        admin_key=admin_key,
                        vllm_key=vllm_key,
                    )
                )
            elif args.command == "record":
                name = record(client, proxy=proxy, adapters=adapters, admin_key=admin_key)
                print(f"the proxy generates with {name}; recorded in {adapters / 'CURRENT'}")
            else:
                restored = restore(client, proxy=proxy, adapters=adapters, admin_key=admin_key)
                print(
                    f"the proxy generates with {restored} (from CURRENT)"
                    if restored
                    else "nothing recorded in CURRENT: the proxy keeps CONSCIENCE_MODEL"
                )
    except (AdapterError, httpx.HTTPError, OSError) as exc:
        print(f"conscience adapter: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
