"""A GGUF cut to its first k blocks: a model whose final state is layer k's, for a probe.

llama.cpp exposes no intermediate layer, but the file that holds only the first ``k`` transformer
blocks of a model — every key copied, ``<arch>.block_count = k``, the tensors of blocks ``k`` and
later removed, the token embeddings, the output norm and the head kept — *is* a model whose last
hidden state is the full model's state after block ``k``, passed through the final norm::

    h_truncated = output_norm(x_k)        (x_k: the residual stream after block k)

so a linear probe reads layer ``k`` through the existing readers (``/v1/embeddings`` or the
output layer, ``engine/hidden_state.py``), and prefills in about ``k / N`` of the time.

Its next-token distribution is no longer language (the head was trained on layer ``N``'s
states): the file is marked ``conscience.probe_only`` and :func:`refuse_probe_only` refuses it
wherever a model is started to generate text.

:func:`truncated_gguf` writes it once per (source file, k) under ``<cache>/truncated/<the
source's SHA-256>/`` (``<cache>`` is the model cache, ``engine.weights.default_cache_dir()``,
unless given), like the dense checkpoint (``trainer/dense.py``): written to a temporary file and
renamed into place, so a file at the final path was always complete; a manifest beside it
records its SHA-256, and a reuse checks it (a file that does not verify is rebuilt). Hashing
costs seconds, so a process does it once per file for as long as it is unchanged on disk.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from conscience.engine.weights import default_cache_dir, sha256_file
from conscience.errors import ModelError

__all__ = [
    "PROBE_ONLY_KEY",
    "block_count",
    "is_probe_only",
    "refuse_probe_only",
    "truncate_gguf",
    "truncated_gguf",
]

PROBE_ONLY_KEY = "conscience.probe_only"  # true in every file written here
SOURCE_SHA_KEY = "conscience.source_sha256"  # the full model it was cut from
SOURCE_BLOCKS_KEY = "conscience.source_block_count"  # N, the full model's depth
BLOCKS_KEY = "conscience.probe_blocks"  # k, also <arch>.block_count (read later in the header)
_VERSION = 1  # of the manifest's layout; another version is a file to rebuild
_BLOCK = re.compile(r"blk\.(\d+)\.")

log = logging.getLogger(__name__)


def _reader(path: Path) -> Any:
    """gguf-py's reader of ``path``; a ModelError for a missing file or one that is not GGUF."""
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except FileNotFoundError:
        raise ModelError(f"no such model file: {path}") from None
    except (OSError, ValueError) as exc:  # gguf-py raises ValueError for a bad magic number
        raise ModelError(f"{path} is not a GGUF model file: {exc}") from None


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return field.contents() if field is not None else None


def _architecture(reader: Any, path: Path) -> str:
    arch = _field(reader, "general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelError(f"{path} names no general.architecture: not a model GGUF")
    return arch


def block_count(path: Path) -> int:
    """N: the number of transformer blocks of the GGUF at ``path`` (``<arch>.block_count``)."""
    reader = _reader(path)
    arch = _architecture(reader, path)
    count = _field(reader, f"{arch}.block_count")
    if not isinstance(count, int) or count < 1:
        raise ModelError(f"{path} has no {arch}.block_count")
    return count


def is_probe_only(path: Path) -> bool:
    """Whether the GGUF at ``path`` was cut here for a probe (and must never generate text).
    Reads only the start of the header, where the mark is written: milliseconds, where
    parsing the whole header (the vocabulary) takes seconds; a file that is not GGUF: False."""
    return _leading_keys(path).get(PROBE_ONLY_KEY) is True


def refuse_probe_only(path: Path) -> None:
    """Raise ModelError if ``path`` is a truncated probe model: its next-token distribution is
    not language, so it is never started to generate text."""
    keys = _leading_keys(path)
    if keys.get(PROBE_ONLY_KEY) is not True:
        return
    k, n = keys.get(BLOCKS_KEY), keys.get(SOURCE_BLOCKS_KEY)
    raise ModelError(
        f"{path.name} holds only the first {k} of {n} blocks of a model, for a probe: it does "
        "not write text; serve the full model"
    )


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q"}
_SCALARS |= {11: "<q", 12: "<d"}
_STRING, _LEADING = 8, 8  # GGUF's string type; how many keys is_probe_only looks at


def _leading_keys(path: Path) -> dict[str, Any]:
    """The first key-value pairs of a little-endian GGUF header, up to the first array."""
    keys: dict[str, Any] = {}
    try:
        with path.open("rb") as f:
            magic, version, _tensors, count = struct.unpack("<4sIQQ", f.read(24))
            if magic != b"GGUF" or not 2 <= version <= 3:
                return keys
            for _ in range(min(count, _LEADING)):
                (size,) = struct.unpack("<Q", f.read(8))
                name = f.read(size).decode("utf-8")
                (vtype,) = struct.unpack("<I", f.read(4))
                if vtype == _STRING:
                    (size,) = struct.unpack("<Q", f.read(8))
                    keys[name] = f.read(size).decode("utf-8")
                elif vtype in _SCALARS:
                    fmt = _SCALARS[vtype]
                    (keys[name],) = struct.unpack(fmt, f.read(struct.calcsize(fmt)))
                else:  # an array: the marks come before any
                    break
    except (OSError, struct.error, UnicodeDecodeError):
        return keys
    return keys


def truncate_gguf(source: Path, k: int, out: Path, *, source_sha256: str | None = None) -> None:
    """Write to ``out`` the GGUF of ``source``'s first ``k`` blocks (1 ≤ k < N), atomically.

    Every key of ``source`` is copied, with ``<arch>.block_count = k`` and the per-block arrays
    (a key whose value has one entry per block) cut to their first ``k`` entries; the tensors of
    blocks ``k`` to ``N - 1`` are dropped and every other tensor (embeddings, output norm, head)
    kept as it is (no requantisation). The file is written beside ``out`` under a temporary name
    and renamed into place: on any failure nothing is left at ``out`` or beside it.
    """
    import gguf

    reader = _reader(source)
    arch = _architecture(reader, source)
    n = _field(reader, f"{arch}.block_count")
    if not isinstance(n, int) or n < 1:
        raise ModelError(f"{source} has no {arch}.block_count")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
        raise ModelError(f"cannot keep the first {k!r} blocks of {source.name}: k is 1 to {n - 1}")
    if _field(reader, PROBE_ONLY_KEY) is True or _field(reader, BLOCKS_KEY) is not None:
        raise ModelError(f"{source.name} is already a truncated probe model")
    if (_field(reader, "split.count") or 1) > 1:
        raise ModelError(f"{source.name} is one shard of a split GGUF: merge it first")

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(tmp, arch=arch, endianess=reader.endianess)
        alignment = _field(reader, "general.alignment")
        if alignment is not None:
            writer.data_alignment = alignment
        # The marks first, right after the architecture: is_probe_only reads only them.
        writer.add_bool(PROBE_ONLY_KEY, True)
        writer.add_uint32(BLOCKS_KEY, k)
        writer.add_uint32(SOURCE_BLOCKS_KEY, n)
        if source_sha256 is not None:
            writer.add_string(SOURCE_SHA_KEY, source_sha256)
        for field in reader.fields.values():
            # GGUF.* are the header's own counts; the writer writes the architecture itself.
            if field.name.startswith("GGUF.") or field.name == "general.architecture":
                continue
            value, vtype = field.contents(), field.types[0]
            sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            if field.name == f"{arch}.block_count":
                value = k
            elif _per_block(field.name, arch, value, n):
                value = value[:k]
            writer.add_key_value(field.name, value, vtype, sub_type=sub_type)
        kept = [t for t in reader.tensors if not _dropped(t.name, k)]
        for t in kept:
            writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in kept:
            writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
        writer.close()
        tmp.chmod(0o644)  # mkstemp makes it 0600; a model is not a secret
        os.replace(tmp, out)  # atomic: the final path only ever holds a whole file
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _per_block(key: str, arch: str, value: object, n: int) -> bool:
    """Whether ``key`` holds one entry per block (a per-layer head count or FFN width): an
    array of the architecture's of length N; rope's arrays (sections of a head) are not."""
    is_array = isinstance(value, list) and len(value) == n
    return is_array and key.startswith(f"{arch}.") and not key.startswith(f"{arch}.rope.")


def _dropped(name: str, k: int) -> bool:
    match = _BLOCK.match(name)
    return match is not None and int(match.group(1)) >= k


def truncated_gguf(source: Path, k: int, cache_dir: Path | None = None) -> Path:
    """The verified GGUF of ``source``'s first ``k`` blocks, written once and cached under
    ``<cache>/truncated/<source SHA-256>/first-<k>.gguf`` with its manifest beside it."""
    source = source.expanduser().resolve()
    if not source.is_file():
        raise ModelError(f"no such model file: {source}")
    stat = source.stat()
    cache = (cache_dir or default_cache_dir()).expanduser().resolve() / "truncated"
    return Path(_resolve(str(source), stat.st_size, stat.st_mtime_ns, k, str(cache)))


def _resolve(source: str, size: int, mtime_ns: int, k: int, cache: str) -> str:
    """Check the cached file (a manifest read and, once per version of the file on disk, a
    hash) and rebuild it if it does not verify."""
    sha = _sha256(Path(source), size, mtime_ns)
    target = Path(cache) / sha / f"first-{k}.gguf"
    manifest = target.with_suffix(".json")
    if target.exists() or manifest.exists():
        problem = _check(target, manifest, sha, k)
        if problem is None:
            return str(target)
        log.warning("truncated model %s is damaged (%s): rebuilding it", target, problem)
        target.unlink(missing_ok=True)
        manifest.unlink(missing_ok=True)
    started = time.perf_counter()
    log.warning("writing the first %d blocks of %s to %s (once)", k, Path(source).name, target)
    truncate_gguf(Path(source), k, target, source_sha256=sha)
    record = {
        "version": _VERSION,
        "source": Path(source).name,
        "source_sha256": sha,
        "blocks": k,
        "source_blocks": block_count(Path(source)),
        "size": target.stat().st_size,
        "sha256": sha256_file(target),
        "seconds": round(time.perf_counter() - started, 1),
    }
    _write_json(manifest, record)
    return str(target)


@functools.lru_cache(maxsize=16)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def _check(target: Path, manifest: Path, sha: str, k: int) -> str | None:
    """Why ``target`` is not the verified first ``k`` blocks of the source ``sha``; None if so."""
    try:
        record = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"no readable manifest: {exc}"
    if not isinstance(record, dict) or record.get("version") != _VERSION:
        return "a manifest of another layout"
    if record.get("source_sha256") != sha or record.get("blocks") != k:
        return "its manifest names another source or depth"
    if not target.is_file() or target.stat().st_size != record.get("size"):
        return "the file is missing or has the wrong size"
    stat = target.stat()
    if _sha256(target, stat.st_size, stat.st_mtime_ns) != record.get("sha256"):
        return "the file has the wrong SHA-256"
    return None


def _write_json(path: Path, record: dict[str, Any]) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(record, indent=1) + "\n")
        tmp.chmod(0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
