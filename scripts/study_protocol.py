"""Run the study's protocol on the synthetic benchmark and print the tables (JSON + Markdown).

    python scripts/study_protocol.py --out bench/study_protocol.json [--repeats 5] [--mc 100]

Arms (see `napari_foram.training.protocol`):

- ``imagenet``: ImageNet VGG16 (``$NAPARI_FORAM_VGG16_WEIGHTS`` / torch hub cache) with its
  own input convention, phase 1 and phase 2, plus the "not one of these classes" study;
- ``imagenet-torchvision`` / ``imagenet-study``: the same weights fed the other two
  conventions (phase 1 only), to compare conventions on the same split;
- ``random``: a random VGG16 (standardised features, centred inputs), phases 1 and 2;
- ``*-pooled*``: the same with phase 1 on pooled, standardised features (the project's
  default: `TrainConfig.pooled_features`).

Needs ImageNet weights; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from napari_foram.training.protocol import ProtocolArm, benchmark_data, run_arm

ARMS = {
    "imagenet": ProtocolArm("imagenet", "imagenet"),
    "imagenet-torchvision": ProtocolArm(
        "imagenet-torchvision", "imagenet", "torchvision", fine_tune=False, ood=False
    ),
    "imagenet-study": ProtocolArm(
        "imagenet-study", "imagenet", "study", fine_tune=False, ood=False
    ),
    "random": ProtocolArm("random", "none", standardize_features=True),
    # The project's phase 1: the head trained on pooled, standardised features (folded
    # into the Table-1 head), with each convention, and fine-tuned from there.
    "imagenet-pooled": ProtocolArm("imagenet-pooled", "imagenet", pooled_features=True),
    "imagenet-pooled-torchvision": ProtocolArm(
        "imagenet-pooled-torchvision",
        "imagenet",
        "torchvision",
        pooled_features=True,
        fine_tune=False,
        ood=False,
    ),
    "imagenet-pooled-study": ProtocolArm(
        "imagenet-pooled-study",
        "imagenet",
        "study",
        pooled_features=True,
        fine_tune=False,
        ood=False,
    ),
    "random-pooled": ProtocolArm("random-pooled", "none", pooled_features=True),
    # The default recipe of `napari-foram train` (pooled-linear): phase 1 only.
    "imagenet-pooled-linear": ProtocolArm(
        "imagenet-pooled-linear", "imagenet", recipe="pooled-linear", fine_tune=False
    ),
}


def _pct(stat: dict[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    return f"{100 * stat['mean']:.1f} +- {100 * stat['sd']:.1f}"


def markdown(results: list[dict[str, Any]]) -> str:
    """Table 2 of the study for every arm, then the OOD table."""
    lines = [
        "| arm | backbone / input | phase | accuracy | MC mean +- sd (per-pass) | "
        "majority vote | MC-mean accuracy | ECE of the MC mean |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for phase, label in (("phase1", "head only"), ("phase2", "fine-tuned")):
            s = res["summary"].get(phase)
            if not s:
                continue
            lines.append(
                f"| {res['arm']} | {res['backbone']} / {res['input_convention']} | {label} | "
                f"{_pct(s['accuracy'])} | {_pct(s['mc_mean_accuracy'])} "
                f"(sd within runs {_pct(s['mc_sd_accuracy'])}) | {_pct(s['vote_accuracy'])} | "
                f"{_pct(s['mean_prob_accuracy'])} | {_pct(s['mc_ece'])} |"
            )
    lines += [
        "",
        "| arm | AUROC: mutual information | entropy | vote | max probability | "
        "feature distance | rule: false flags (held out) | rule: strangers flagged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        a = res["summary"].get("ood_auroc")
        if not a:
            continue
        rule = res["summary"]["rule"]

        def f(m: str, a: dict[str, Any] = a) -> str:
            return f"{a[m]['mean']:.3f} +- {a[m]['sd']:.3f}"

        lines.append(
            f"| {res['arm']} | {f('mutual_information')} | {f('entropy')} | {f('vote')} | "
            f"{f('max_probability')} | {f('feature_distance')} | "
            f"{_pct(rule['false_flag_rate_held_out'])} % | {_pct(rule['flag_rate_ood'])} % |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/study_protocol.json"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mc", type=int, default=100)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--fine-tune-lr", type=float, default=1e-7)
    parser.add_argument("--fine-tune-epochs", type=int, default=3)
    parser.add_argument("--precision", default="bf16", help="phase 2's conv passes")
    parser.add_argument("--feature-cache", type=Path, default=None)
    parser.add_argument("--phase1-only", default="", help="arms to run without phase 2")
    parser.add_argument(
        "--tables-from", type=Path, nargs="*", default=[], help="print tables of JSON files"
    )
    args = parser.parse_args()
    if args.tables_from:
        results = [r for f in args.tables_from for r in json.loads(f.read_text())["results"]]
        print(markdown(results))
        return 0
    t0 = time.perf_counter()
    data = benchmark_data()
    phase1_only = {a.strip() for a in args.phase1_only.split(",") if a.strip()}
    results = []
    for name in args.arms.split(","):
        arm = ARMS[name.strip()]
        if arm.name in phase1_only:
            arm = replace(arm, fine_tune=False)
        results.append(
            run_arm(
                arm,
                data,
                repeats=args.repeats,
                mc=args.mc,
                fine_tune_lr=args.fine_tune_lr,
                fine_tune_epochs=args.fine_tune_epochs,
                precision=args.precision,
                feature_cache=args.feature_cache,
                progress=lambda m: print(f"[{time.perf_counter() - t0:7.1f} s] {m}", flush=True),
            )
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "machine": {
                        "cpu": platform.processor() or platform.machine(),
                        "threads": torch.get_num_threads(),
                        "torch": torch.__version__,
                    },
                    "benchmark": {
                        "train": len(data.train),
                        "held_out": len(data.held_out),
                        "ood": len(data.ood_crops),
                    },
                    "results": results,
                },
                indent=1,
            )
            + "\n"
        )
    print(markdown(results))
    print(f"total {time.perf_counter() - t0:.0f} s; JSON in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
