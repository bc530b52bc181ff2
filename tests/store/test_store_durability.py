"""Nothing acknowledged is ever lost: a writer killed with SIGKILL keeps every returned ``add``."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from conscience.store import open_store

ROOT = Path(__file__).resolve().parents[2]
WANTED = 150  # ids to see before the kill

# Eight concurrent writers, so that SQLite's group commit is on the path being tested. An id is
# printed only after `add` returned for it: the child's promise that the row is durable.
CHILD = """
import asyncio, sys
from conscience.judgement import Judgement
from conscience.store import open_store

async def writer(store):
    while True:
        j = Judgement(framework="three-laws", layout="paper", verdict="unethical",
                      messages=[{"role": "user", "content": "q"}], answer="a", rewrite="r")
        await store.add(j)
        sys.stdout.write(j.id + "\\n")
        sys.stdout.flush()

async def main(url):
    store = open_store(url)
    await store.open()
    print("open", flush=True)
    await asyncio.gather(*(writer(store) for _ in range(8)))

asyncio.run(main(sys.argv[1]))
"""


def write_until_killed(url: str, stderr_path: Path) -> list[str]:
    """Run the child, SIGKILL it mid-stream, return every id it printed in full."""
    with stderr_path.open("w") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, url],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=os.environ | {"PYTHONPATH": str(ROOT)},
        )
        assert child.stdout is not None
        try:
            assert child.stdout.readline() == "open\n", stderr_path.read_text()
            lines = [child.stdout.readline() for _ in range(WANTED)]
        finally:
            os.kill(child.pid, signal.SIGKILL)  # no cleanup, no atexit, no flush
        lines += child.stdout.readlines()  # what it printed before it died
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    # A line cut by the kill is not a complete acknowledgement.
    return [line[:-1] for line in lines if line.endswith("\n")]


async def test_every_acknowledged_add_survives_sigkill(store_url, tmp_path):
    acknowledged = await asyncio.to_thread(write_until_killed, store_url, tmp_path / "stderr")
    assert len(acknowledged) >= WANTED, (tmp_path / "stderr").read_text()
    assert all(i.startswith("jdg_") for i in acknowledged)

    store = open_store(store_url)
    await store.open()
    try:
        stored = {j.id for j in (await store.read_pairs()).judgements}
        missing = [i for i in acknowledged if i not in stored]
        assert missing == [], f"{len(missing)} acknowledged ids lost"
        assert len(stored) >= len(acknowledged)
    finally:
        await store.close()
