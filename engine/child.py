"""The embedded engine's child process: xllamacpp's llama.cpp HTTP server on loopback.

Run by :class:`~conscience.engine.embedded.EmbeddedEngine` as a script (``python -P child.py
...``), so it needs only the standard library and xllamacpp: it never imports the ``conscience``
package. It can also be run by hand::

    python engine/child.py --model M.gguf --port 8080

Protocol with the parent: llama.cpp's own log (stdout and stderr) goes to whatever stderr is
(the parent points it at a log file); once the model is loaded and the HTTP server listens, one
JSON line ``{"address": "http://127.0.0.1:PORT"}`` is written to the original stdout. SIGTERM
or SIGINT stop it cleanly; it also exits when its parent dies, so a proxy killed with SIGKILL
does not leave a model resident in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["build_parser", "main"]

_PARENT_POLL_S = 1.0  # how soon an orphaned engine notices and exits


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="llama.cpp (xllamacpp) OpenAI-compatible server")
    p.add_argument("--model", required=True, help="path to a GGUF file")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--threads", type=int, default=None, help="default: llama.cpp's choice")
    p.add_argument("--ctx-size", type=int, default=4096, help="context per slot, in tokens")
    p.add_argument("--parallel", type=int, default=1, help="slots decoded together")
    p.add_argument("--alias", default="local", help="the model id served in /v1/models")
    p.add_argument("--cache-ram-mib", type=int, default=1024, help="host RAM for prompt cache")
    p.add_argument(
        "--embeddings",
        action="store_true",
        help="also serve /v1/embeddings: the last token's hidden state (a probe's features)",
    )
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="GGUF",
        help="a GGUF LoRA adapter applied to every request (scale 1); repeatable",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="prompt tokens prefilled per step (llama.cpp's n_batch; default: llama.cpp's)",
    )
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process dies")
    return p


def _params(args: argparse.Namespace) -> Any:
    import xllamacpp as xlc  # imported here so --help works without it

    params = xlc.CommonParams()
    params.model.path = args.model
    params.hostnames = [args.host]
    params.port = args.port
    params.model_alias = {args.alias}
    # n_ctx is the whole KV pool, shared by the slots; keep ctx_size per slot.
    params.n_ctx = args.ctx_size * args.parallel
    params.n_parallel = args.parallel
    if args.threads:
        params.cpuparams.n_threads = args.threads
        params.cpuparams_batch.n_threads = args.threads
    if args.batch_size:
        params.n_batch = args.batch_size
        params.n_ubatch = min(params.n_ubatch, args.batch_size)
    # Prefix caching: a slot keeps its KV cache between requests and a new request reuses the
    # longest common prefix (the framework header of every review). cache_ram_mib also keeps
    # evicted prompts in host RAM; llama.cpp's 8 GiB default is too much for a laptop.
    params.cache_prompt = True
    params.cache_ram_mib = args.cache_ram_mib
    params.endpoint_metrics = True  # /metrics: prompt tokens processed vs reused from cache
    params.ui = False  # no web UI: this server is an internal upstream
    if args.embeddings:  # completions are still served; embeddings pool the last token
        params.embedding = True
        params.pooling_type = xlc.llama_pooling_type.LLAMA_POOLING_TYPE_LAST
    if args.lora:  # this engine serves the adapted model: every request gets the adapters
        params.lora_adapters = [xlc.CommonAdapterLoraInfo(path, 1.0) for path in args.lora]
    return params


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # llama.cpp writes to fd 1 and fd 2; keep the real stdout for our one line and send
    # everything else to stderr, the log.
    ready = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    import xllamacpp as xlc

    print(f"engine: xllamacpp {xlc.__version__}, model {args.model}", file=sys.stderr, flush=True)
    try:
        # Returns once the model is loaded (and warmed up) and the HTTP server listens.
        server = xlc.Server(_params(args))
    except RuntimeError as e:
        print(f"engine: failed to start: {e}", file=sys.stderr, flush=True)
        return 1
    address = server.listening_address
    print(f"engine: listening on {address}", file=sys.stderr, flush=True)
    ready.write(json.dumps({"address": address}) + "\n")
    ready.close()

    while not stop.wait(_PARENT_POLL_S):
        if args.parent_pid is not None and os.getppid() != args.parent_pid:
            print("engine: parent died, exiting", file=sys.stderr, flush=True)
            break
    # Dropping the last reference stops the HTTP server and frees the model.
    del server
    print("engine: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
