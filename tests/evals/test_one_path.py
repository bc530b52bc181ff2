"""The benchmarks measure what the proxy does.

``eval verdicts`` builds its ``Conscience`` with the proxy's factory from the same settings,
so a calibration file or a threshold given once decides a benchmark's verdict and the proxy's
alike. The experiment runs ``eval em`` in-process, and the command its journal records runs
the very same benchmark.

The scripted judge gives every answer P(ethical, neutral, unethical) = (.5, .1, .4): argmax
says ethical, a rule that calls .4 unethical says unethical.
"""

import argparse
import json
import shlex
from pathlib import Path

import httpx
import pytest

from conscience import review
from conscience.calibration import Calibration, save_calibration
from conscience.evals.cli import add_eval_commands
from conscience.evals.em import benchmark as em_module
from conscience.evals.experiment.run import ExperimentConfig, em_job, run_experiment
from conscience.review import Conscience
from conscience.server.app import create_app
from conscience.settings import Settings
from conscience.testing.scripted import ScriptedEngine, serve_in_thread

PROBS = {"ethical": 0.5, "neutral": 0.1, "unethical": 0.4}
RULE_VARIABLES = ("CONSCIENCE_CALIBRATION_FILE", "CONSCIENCE_UNETHICAL_THRESHOLD")


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="conscience")
    add_eval_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.handler(args)


def _decision(conscience: Conscience) -> tuple:
    """Everything that turns the judge's label probabilities into a verdict."""
    return (
        conscience.judge_model,
        conscience.constraint,
        conscience.rule,
        conscience.calibrations,
        conscience.calibration_source,
        conscience.default_framework,
        conscience.layout,
        conscience.top_logprobs,
        conscience.window_chars,
    )


def _benchmark(engine_url: str, tmp_path: Path, monkeypatch, *flags: str) -> tuple[tuple, str]:
    """`eval verdicts` on one item: the decision settings of its Conscience, and its verdict."""
    built: list[Conscience] = []
    factory = review.conscience_from_settings

    def spy(*args, **kwargs) -> Conscience:
        built.append(factory(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(review, "conscience_from_settings", spy)
    data = tmp_path / "one.jsonl"
    item = {"id": "i1", "question": "Q", "answer": "A", "label": "ethical", "attack": False,
            "category": "test", "split": "heldout"}  # fmt: skip
    data.write_text(json.dumps(item) + "\n")
    out = tmp_path / "verdicts"
    code = _cli(
        "eval", "verdicts", "--url", engine_url, "--model", "gen", "--judge-model", "judge",
        "--frameworks", "three-laws", "--layouts", "paper", "--data", str(data),
        "--out", str(out), *flags,
    )  # fmt: skip
    assert code == 0
    (row,) = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    (conscience,) = built
    return _decision(conscience), row["predicted"]


def _proxy(engine_url: str, tmp_path: Path, **fields) -> tuple[tuple, str]:
    """The proxy on one answer: the decision settings of its Conscience, and its verdict."""
    settings = Settings(
        upstream_url=engine_url,
        model="gen",
        judge_model="judge",
        store_url=str(tmp_path / "judgements.sqlite3"),
        policy="flag",
        **fields,
    )
    app = create_app(settings)
    with serve_in_thread(app) as url:
        body = {"model": "gen", "messages": [{"role": "user", "content": "Q"}]}
        reply = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
        reply.raise_for_status()
        return _decision(app.state.pipeline.conscience), reply.json()["conscience"]["verdict"]


@pytest.fixture
def calibration(tmp_path: Path) -> Path:
    path = tmp_path / "calibration.json"
    save_calibration(path, Calibration("judge", "three-laws", "paper", 0.35))
    return path


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("file in the environment", "unethical"),
        ("threshold in the environment", "unethical"),
        ("file by flag", "unethical"),
        ("threshold by flag over a file in the environment", "ethical"),
        ("nothing: the packaged calibration, no entry for this judge", "ethical"),
    ],
)
def test_the_benchmark_and_the_proxy_decide_by_the_same_rule(
    case: str,
    expected: str,
    engine: ScriptedEngine,
    engine_url: str,
    calibration: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine.verdict_probs = PROBS
    for name in RULE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    flags: tuple[str, ...] = ()
    proxy: dict = {}
    if case == "file in the environment":
        monkeypatch.setenv("CONSCIENCE_CALIBRATION_FILE", str(calibration))
    elif case == "threshold in the environment":
        monkeypatch.setenv("CONSCIENCE_UNETHICAL_THRESHOLD", "0.3")
    elif case == "file by flag":
        flags, proxy = ("--calibration", str(calibration)), {"calibration_file": calibration}
    elif case.startswith("threshold by flag"):
        # A threshold alone means no calibration, as both variables set would say.
        monkeypatch.setenv("CONSCIENCE_CALIBRATION_FILE", str(calibration))
        flags = ("--unethical-threshold", "0.45")
        proxy = {"calibration_file": None, "unethical_threshold": 0.45}

    benchmark, benchmark_verdict = _benchmark(engine_url, tmp_path, monkeypatch, *flags)
    served, served_verdict = _proxy(engine_url, tmp_path, **proxy)
    assert benchmark == served
    assert benchmark_verdict == served_verdict == expected


def test_the_journalled_command_runs_the_same_benchmark(
    engine: ScriptedEngine, engine_url: str, em_data_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    ran: list[tuple] = []

    async def recorder(settings, questions, config, out_dir, *, judge_url=None, **_) -> dict:
        ran.append((settings, [q.id for q in questions], config, out_dir, judge_url))
        return {"questions": {}, "overall": {"misaligned_rate": None, "ci95": [0.0, 0.0]}}

    monkeypatch.setattr(em_module, "run_em_on", recorder)
    config = ExperimentConfig(
        base_model="m", served_model="judge", url=engine_url, task_data="t.jsonl",
        out_dir=str(tmp_path / "run"), arms=("base", "proxy"), samples=3, max_tokens=50,
        concurrency=2, timeout=30.0, limit=5, data_dir=str(em_data_dir),
    )  # fmt: skip
    run_experiment(config, ("eval",))
    journal = [json.loads(line) for line in (config.out / "phases.jsonl").read_text().splitlines()]
    commands = [r["command"] for r in journal if r["phase"] == "eval" and r["status"] == "ran"]
    assert len(ran) == len(commands) == 2
    in_process, ran[:] = list(ran), []
    for command in commands:
        argv = shlex.split(command)
        assert argv[:3] == ["conscience", "eval", "em"]
        assert _cli(*argv[1:]) == 0
    assert ran == in_process
    # The proxy arm's answers came from the proxy; the frozen base on the engine judged them.
    (base_settings, *_, base_judge), (proxy_settings, *_, proxy_judge) = in_process
    assert base_settings.upstream_url == engine_url and base_judge is None
    assert proxy_settings.upstream_url != engine_url and proxy_judge == engine_url
    assert em_job(config, "base", engine_url)[:2] == (base_settings, in_process[0][2])
