"""The study's protocol runner, end to end on a tiny benchmark (random backbone)."""

from __future__ import annotations

import json

import pytest

from napari_foram.training.protocol import ProtocolArm, benchmark_data, run_arm, summarise


@pytest.fixture(scope="module")
def tiny():
    return benchmark_data(n_train_per_class=3, n_held_per_class=2, n_ood_per_kind=1)


def test_benchmark_is_balanced_and_disjoint(tiny):
    assert len(tiny.train) == 12 and len(tiny.held_out) == 8
    assert sorted(set(tiny.ood_kinds)) == sorted(tiny.ood_kinds)  # one of each kind
    # Held-out crops come from other trays: no crop is shared.
    train_bytes = {c.tobytes() for c in tiny.train.crops}
    assert not any(c.tobytes() in train_bytes for c in tiny.held_out.crops)


def check_run(run):
    """One repeat's record: both phases' accuracies, every OOD measure, the rule."""
    for phase in ("phase1", "phase2"):
        assert 0.0 <= run[phase]["accuracy"] <= 1.0
        assert 0.0 <= run[phase]["vote_accuracy"] <= 1.0
    auroc = run["ood"]["auroc"]
    assert set(auroc) == {
        "mutual_information",
        "entropy",
        "vote",
        "max_probability",
        "feature_distance",
    }
    assert all(0.0 <= v <= 1.0 for v in auroc.values())
    assert 0.0 <= run["ood"]["rule"]["flag_rate_ood"] <= 1.0


def test_run_arm_phases_ood_and_summary_once(tiny):
    """The default suite's run: one repeat of both phases (the two-repeat run is slow)."""
    arm = ProtocolArm("random", "none", standardize_features=True)
    result = run_arm(arm, tiny, repeats=1, mc=5, fine_tune_epochs=1, precision="fp32")
    json.dumps(result)  # JSON-ready
    assert result["backbone"] == "vgg16-random" and len(result["runs"]) == 1
    check_run(result["runs"][0])
    s = result["summary"]
    for phase in ("phase1", "phase2"):
        acc = result["runs"][0][phase]["accuracy"]
        assert s[phase]["accuracy"] == {"mean": pytest.approx(acc, abs=1e-4), "sd": 0.0}


def test_summary_is_mean_and_sd_over_repeats():
    runs = [
        {"phase1": {"accuracy": 0.5, "best_epoch": 2}, "ood": {"auroc": {"vote": 0.6},
         "rule": {"threshold": 1.0, "false_flag_rate_held_out": 0.1, "flag_rate_ood": 0.5}}},
        {"phase1": {"accuracy": 0.7, "best_epoch": 4}, "ood": {"auroc": {"vote": 0.8},
         "rule": {"threshold": 3.0, "false_flag_rate_held_out": 0.3, "flag_rate_ood": 0.7}}},
    ]  # fmt: skip
    s = summarise(runs)
    assert s["phase1"]["accuracy"] == {"mean": 0.6, "sd": pytest.approx(0.1414, abs=1e-4)}
    assert s["phase1"]["best_epoch"]["mean"] == 3.0 and "phase2" not in s
    assert s["ood_auroc"]["vote"]["mean"] == 0.7 and s["rule"]["threshold"]["mean"] == 2.0
    assert summarise([]) == {}


@pytest.mark.slow
def test_run_arm_phases_ood_and_summary(tiny):
    arm = ProtocolArm("random", "none", standardize_features=True)
    result = run_arm(arm, tiny, repeats=2, mc=5, fine_tune_epochs=1, precision="fp32")
    json.dumps(result)  # JSON-ready
    assert result["backbone"] == "vgg16-random" and len(result["runs"]) == 2
    for run in result["runs"]:
        check_run(run)
    s = result["summary"]
    accs = [r["phase1"]["accuracy"] for r in result["runs"]]
    assert s["phase1"]["accuracy"]["mean"] == pytest.approx(sum(accs) / 2, abs=1e-4)
    assert summarise([]) == {}
