"""The linear probe (evals/fitting/probe.py): folds by prompt, standardising, the vectors' file — on
synthetic vectors, never a model's hidden states."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conscience.errors import ConfigError
from conscience.evals.fitting.probe import (
    VECTORS_FILE,
    _fold,
    cross_validated,
    load_vectors,
    standardise,
)


def test_cross_validation_scores_every_item_out_of_its_prompts_fold() -> None:
    rng = np.random.default_rng(1)
    groups = [f"prompt {i // 3}" for i in range(300)]  # three answers per prompt
    gold = rng.integers(0, 2, 300).astype(float)
    x = rng.normal(0, 1, (300, 20))
    x[:, 3] += 2.0 * gold  # one informative dimension
    scores = cross_validated(x, gold, groups, l2=1.0)
    assert scores.shape == (300,) and np.all((scores > 0) & (scores < 1))
    assert np.mean(scores[gold == 1]) > np.mean(scores[gold == 0]) + 0.3
    folds = {}
    for group in groups:
        folds.setdefault(group, set()).add(_fold(group))
    assert all(len(f) == 1 for f in folds.values())  # a prompt's answers share one fold


def test_memorised_labels_do_not_leak_into_out_of_fold_scores() -> None:
    rng = np.random.default_rng(2)
    groups = [f"p{i}" for i in range(200)]
    gold = rng.integers(0, 2, 200).astype(float)
    x = rng.normal(0, 1, (200, 50))  # noise only: in-sample fits would separate it anyway
    scores = cross_validated(x, gold, groups, l2=0.01)
    from conscience.evals.shared.scoring import auc

    assert auc(scores.tolist(), (gold == 1).tolist()) < 0.7


def test_standardise_centres_scales_and_appends_the_bias() -> None:
    x = np.array([[1.0, 10.0], [3.0, 30.0]])
    z = standardise(x, x.mean(0), x.std(0))
    assert z == pytest.approx(np.array([[-1.0, -1.0, 1.0], [1.0, 1.0, 1.0]]))


def test_vectors_load_in_file_order_and_an_empty_run_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no probe vectors"):
        load_vectors(tmp_path)
    rows = [
        {"id": "a", "gold": "unethical", "group": "q1", "seconds": 1.0, "vector": [0.5, 1.0]},
        {"id": "b", "gold": "ethical", "group": "q2", "seconds": 1.0, "vector": [0.0, -1.0]},
    ]
    (tmp_path / VECTORS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    ids, groups, x, gold = load_vectors(tmp_path)
    assert ids == ["a", "b"] and groups == ["q1", "q2"]
    assert x.tolist() == [[0.5, 1.0], [0.0, -1.0]] and gold.tolist() == [1.0, 0.0]


def test_threshold_rules_pick_best_f1_or_the_most_recall_within_a_false_positive_cap() -> None:
    from conscience.evals.fitting.probe import choose_threshold

    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    gold = np.array([1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    assert choose_threshold(scores, gold, "fpr:0") == 0.8  # no negative flagged
    assert choose_threshold(scores, gold, "fpr:0.34") == 0.6  # one of three
    assert choose_threshold(scores, gold, "best-f1") == pytest.approx(0.4)  # F1 8/11
    with pytest.raises(ConfigError, match="threshold rule"):
        choose_threshold(scores, gold, "recall:0.9")


def test_a_fitted_probe_file_scores_as_the_fit_did(tmp_path: Path) -> None:
    from conscience.evals.fitting.probe import fit_probe, measure_probe
    from conscience.probe import load_probes, save_probe

    rng = np.random.default_rng(3)
    rows = []
    for i in range(120):
        harmful = i % 2 == 0
        vector = rng.normal(0, 1, 6) + (1.5 if harmful else 0.0) * np.eye(6)[2]
        rows.append(
            {
                "id": f"i{i}",
                "gold": "unethical" if harmful else "ethical",
                "group": f"q{i // 2}",
                "seconds": 0.1,
                "vector": vector.round(6).tolist(),
            }
        )
    (tmp_path / VECTORS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match="not a probe extraction"):
        fit_probe(tmp_path)
    extraction = {"judge": "m", "framework": "wwjd", "max_answer_chars": 800}
    (tmp_path / "run.json").write_text(json.dumps(extraction))
    probe, oof, _ = fit_probe(tmp_path)
    assert probe.key == ("m", "wwjd", "paper") and probe.max_answer_chars == 800
    (tmp_path / "run.json").write_text(json.dumps({**extraction, "layout": "follow-up"}))
    assert fit_probe(tmp_path)[0].key == ("m", "wwjd", "follow-up")
    (tmp_path / "run.json").write_text(json.dumps(extraction))
    wider, _, _ = fit_probe(tmp_path, read_chars=1500)  # fitted on 800, read in 1,500
    assert wider.max_answer_chars == 1500 and wider.fitted["train_answer_chars"] == 800
    assert probe.fitted["read"] == "embeddings"  # a run.json from before the logits reading
    (tmp_path / "run.json").write_text(json.dumps({**extraction, "read": "logits"}))
    assert fit_probe(tmp_path)[0].fitted["read"] == "logits"
    assert len(probe.weights) == 6 and max(probe.weights, key=abs) == probe.weights[2]
    assert oof.shape == (120,) and probe.fitted["train_items"] == 120
    save_probe(tmp_path / "probe.json", probe)
    (again,) = load_probes(tmp_path / "probe.json").values()
    assert measure_probe(again, tmp_path) == measure_probe(probe, tmp_path)
    assert measure_probe(again, tmp_path)["auc"] > 0.8


def test_calibrate_probe_extracts_fits_and_writes_a_file_the_server_loads(
    engine_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from conscience.cli import main
    from conscience.evals.fitting.probe import main as probe_main
    from conscience.probe import load_probes

    data = tmp_path / "mine.jsonl"
    lines = []
    for i in range(40):
        item = {
            "id": f"mine-{i}",
            "question": f"Question {i // 2}?",
            "answer": f"Answer number {i}.",
            "label": "unethical" if i % 2 else "ethical",
            "attack": False,
            "category": "mine",
            "split": "calibration" if i < 24 else "heldout",
        }
        lines.append(json.dumps(item) + "\n")
    data.write_text("".join(lines))
    out = tmp_path / "probe.json"
    argv = [
        "calibrate",
        "--probe",
        "--upstream",
        engine_url,
        "--model",
        "judge",
        "--data",
        str(data),
        "--train-split",
        "calibration",
        "--dev-split",
        "heldout",
        "--max-answer-chars",
        "400",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    (probe,) = load_probes(out).values()
    assert probe.key == ("judge", "three-laws", "paper") and len(probe.weights) == 8
    assert probe.max_answer_chars == 400 and probe.fitted["train_items"] == 24
    assert probe.fitted["dev"]["items"] == 16
    vectors = tmp_path / "probe.json.vectors" / "three-laws"
    run = json.loads((vectors / "calibration" / "run.json").read_text())
    assert run["read"] == "embeddings"  # an upstream's states come from /v1/embeddings
    assert len((vectors / "calibration" / VECTORS_FILE).read_text().splitlines()) == 24
    assert json.loads(capsys.readouterr().out)["threshold"] == probe.threshold
    # Again: nothing to extract, the same fit; another answer length is another extraction.
    assert main(argv) == 0
    assert len((vectors / "calibration" / VECTORS_FILE).read_text().splitlines()) == 24
    again = load_probes(out)[probe.key]  # fitted anew (its date may be another second's)
    assert again.weights == probe.weights
    argv[argv.index("400")] = "500"
    assert main(argv) == 1
    assert "holds vectors of" in capsys.readouterr().err
    # Another framework: its own vectors, and its probe joins the file beside the first.
    argv[argv.index("500")] = "400"
    assert main([*argv, "--framework", "wwjd"]) == 0
    wwjd_vectors = tmp_path / "probe.json.vectors" / "wwjd" / "calibration" / VECTORS_FILE
    assert len(wwjd_vectors.read_text().splitlines()) == 24
    probes = load_probes(out)
    assert set(probes) == {("judge", "three-laws", "paper"), ("judge", "wwjd", "paper")}
    assert probes[probe.key] == again
    # The follow-up layout: its own vectors, read from the follow-up prompt, its own probe.
    assert main([*argv, "--layout", "follow-up"]) == 0
    follow_up = tmp_path / "probe.json.vectors" / "three-laws-follow-up" / "calibration"
    assert json.loads((follow_up / "run.json").read_text())["layout"] == "follow-up"
    fitted = load_probes(out)[("judge", "three-laws", "follow-up")]
    assert fitted.weights != probe.weights  # other prompts, other states
    assert len(load_probes(out)) == 3
    # And the three-laws probe read on wwjd's vectors: how far it carries.
    capsys.readouterr()
    assert probe_main(["measure", "--probe", str(out), "--vectors", str(wwjd_vectors.parent)]) == 0
    said = capsys.readouterr().out
    assert said.startswith("the three-laws probe on") and "(wwjd prompts): items 24, auc" in said
    with pytest.raises(ConfigError, match="no probe for 'four-laws'"):
        probe_main(["measure", "--probe", str(out), "--framework", "four-laws", "--vectors", "x"])


def test_the_head_finds_the_informative_feature_and_its_sign() -> None:
    from conscience.evals.fitting.probe import (
        best_f1_threshold,
        fit_head,
        head_scores,
        measure_scores,
    )

    rng = np.random.default_rng(0)
    n = 400
    gold = rng.integers(0, 2, n).astype(float)
    informative = np.where(gold == 1, -1.0, 1.0) + rng.normal(0, 0.7, n)  # inverted, like HarmBench
    noise = rng.normal(0, 1.0, n)
    x = np.column_stack([noise, informative, np.ones(n)])
    weights = fit_head(x, gold, l2=0.1)
    assert weights[1] < -1.0 and abs(weights[0]) < 0.3
    scores = head_scores(weights, x)
    figures = measure_scores(scores, gold, best_f1_threshold(scores, gold))
    assert figures["auc"] > 0.9 and figures["f1"] > 0.8 and figures["items"] == n


def test_the_best_f1_threshold_maximises_f1_on_the_scores() -> None:
    from conscience.evals.fitting.probe import best_f1_threshold

    scores = np.array([0.9, 0.8, 0.6, 0.3, 0.1])
    gold = np.array([1.0, 1.0, 0.0, 1.0, 0.0])
    # F1 at 0.9: 2/4; at 0.8: 4/5; at 0.6: 4/6; at 0.3: 6/7; at 0.1: 6/8 — 0.3 is best.
    assert best_f1_threshold(scores, gold) == 0.3
