"""The study's protocol runner, end to end on a tiny benchmark (random backbone)."""

from __future__ import annotations

import json

import pytest

from napari_foram.training.protocol import ProtocolArm, benchmark_data, run_arm, summarise


@pytest.fixture(scope="module")
def tiny():
    return benchmark_data(n_train_per_class=5, n_held_per_class=2, n_ood_per_kind=1)


def test_benchmark_is_balanced_and_disjoint(tiny):
    assert len(tiny.train) == 20 and len(tiny.held_out) == 8
    assert sorted(set(tiny.ood_kinds)) == sorted(tiny.ood_kinds)  # one of each kind
    # Held-out crops come from other trays: no crop is shared.
    train_bytes = {c.tobytes() for c in tiny.train.crops}
    assert not any(c.tobytes() in train_bytes for c in tiny.held_out.crops)


def test_run_arm_phases_ood_and_summary(tiny):
    arm = ProtocolArm("random", "none", standardize_features=True)
    result = run_arm(arm, tiny, repeats=2, mc=5, fine_tune_epochs=1, precision="fp32")
    json.dumps(result)  # JSON-ready
    assert result["backbone"] == "vgg16-random" and len(result["runs"]) == 2
    for run in result["runs"]:
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
    s = result["summary"]
    accs = [r["phase1"]["accuracy"] for r in result["runs"]]
    assert s["phase1"]["accuracy"]["mean"] == pytest.approx(sum(accs) / 2, abs=1e-4)
    assert summarise([]) == {}
