"""A GGUF's dense twin: dequantized once into an HF checkpoint, cached, verified on reuse.

Training needs real tensors, and transformers dequantizes a GGUF (and converts its tokenizer)
on every load: minutes for the default 1.5B model. :func:`dense_checkpoint` does it once per
GGUF file. The checkpoint lives under ``<cache>/dense/<the GGUF's SHA-256>/`` (``<cache>`` is the
model cache, ``engine.weights.default_cache_dir()``, unless given), in float32 (dequantized
values are exact in float32, and a bf16 run casts on load). It is written to a temporary folder
and renamed into place, so a folder at the final path was always complete. Its
``manifest.json`` records the source's SHA-256 and every saved file's size and SHA-256; a reuse
checks them all, and a cache that does not match (a file missing, truncated or altered, a
manifest for another source) is logged, removed and rebuilt.

Hashing costs seconds (the GGUF once, the checkpoint's files once), so a process does it once
per file: the answer is kept for as long as neither file has changed on disk.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from conscience.engine.weights import default_cache_dir, sha256_file

__all__ = ["MANIFEST", "dense_checkpoint", "source_of"]

MANIFEST = "manifest.json"
_VERSION = 1  # of the manifest's layout; another version is a cache to rebuild

log = logging.getLogger(__name__)


def source_of(model: str, cache_dir: str | Path | None = None) -> str:
    """What ``from_pretrained`` loads for ``model``: the dense checkpoint of a ``.gguf`` file,
    else ``model`` itself (an HF directory or hub name)."""
    path = Path(model)
    if path.suffix != ".gguf":
        return model
    return str(dense_checkpoint(path, Path(cache_dir) if cache_dir else None))


def dense_checkpoint(gguf: Path, cache_dir: Path | None = None) -> Path:
    """The verified dense HF checkpoint of ``gguf`` (model and tokenizer), built if missing."""
    gguf = gguf.expanduser().resolve()
    cache = (cache_dir or default_cache_dir()).expanduser().resolve() / "dense"
    stat = gguf.stat()  # FileNotFoundError for a missing GGUF, before anything is written
    return Path(_resolve(str(gguf), stat.st_size, stat.st_mtime_ns, str(cache)))


@functools.lru_cache(maxsize=8)
def _resolve(gguf: str, size: int, mtime_ns: int, cache: str) -> str:
    """``dense_checkpoint`` once per (file, version of it on disk, cache) in a process."""
    source = Path(gguf)
    sha = _sha256(source, size, mtime_ns)
    folder = Path(cache) / sha
    if folder.exists():
        problem = _check(folder, sha)
        if problem is None:
            return str(folder)
        log.warning("dense cache %s is damaged (%s): rebuilding it", folder, problem)
        shutil.rmtree(folder, ignore_errors=True)
    _build(source, sha, folder)
    return str(folder)


@functools.lru_cache(maxsize=8)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def _check(folder: Path, sha: str) -> str | None:
    """Why ``folder`` is not a whole dense checkpoint of the GGUF ``sha``; None if it is."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"no readable {MANIFEST}: {exc}"
    if not isinstance(manifest, dict) or manifest.get("version") != _VERSION:
        return f"{MANIFEST} of another layout"
    if manifest.get("source_sha256") != sha:
        return "its manifest names another source"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return f"{MANIFEST} lists no files"
    present = {p.name for p in folder.iterdir()} - {MANIFEST}
    if present != set(files):
        return f"files differ from the manifest: {sorted(present ^ set(files))}"
    for name, entry in sorted(files.items()):  # sizes first: cheap, and catch a truncation
        if (folder / name).stat().st_size != entry.get("size"):
            return f"{name} has the wrong size"
    for name, entry in sorted(files.items()):
        if sha256_file(folder / name) != entry.get("sha256"):
            return f"{name} has the wrong SHA-256"
    return None


def _build(gguf: Path, sha: str, folder: Path) -> None:
    """Dequantize into a temporary folder beside ``folder``, write the manifest, rename."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{sha[:16]}.", suffix=".tmp", dir=folder.parent))
    try:
        started = time.perf_counter()
        log.warning("dequantizing %s into %s (once; later runs reuse it)", gguf, folder)
        _dequantize(gguf, tmp)
        files = {
            p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(tmp.iterdir())
        }
        manifest: dict[str, Any] = {
            "version": _VERSION,
            "source": gguf.name,
            "source_sha256": sha,
            "dtype": "float32",
            "seconds": round(time.perf_counter() - started, 1),
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the cache from the other users of the model
        try:
            os.rename(tmp, folder)
        except OSError:
            # Another process (a second rank, a second job) put a folder there first: keep
            # theirs if it is whole, else ours.
            if _check(folder, sha) is not None:
                shutil.rmtree(folder, ignore_errors=True)
                os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.warning("dense checkpoint ready in %.0f s: %s", time.perf_counter() - started, folder)


def _dequantize(gguf: Path, into: Path) -> None:
    """transformers' own GGUF loader, dequantizing, then ``save_pretrained`` (safetensors)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": gguf.name}
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers dequantize GGUF without being asked
        pass
    else:
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(into)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs)
    # A dequantized model has no quantizer left; the saved config must not claim one either.
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(model.config, attribute):
            delattr(model.config, attribute)
    model.save_pretrained(into)
