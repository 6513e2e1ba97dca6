"""Few-shot fine-tuning on the 12 STS patients: VoCo initialisation against scratch, same step budget, same run.

Fixed split: the cases sorted by name; the last ``--val-cases`` are the validation set, the first 1, 3, 5
(``--shots``) of the others the labelled training sets (nested). Every (shots, init, seed) fine-tunes the same
network for ``--steps`` steps with validation every ``--val-every`` steps on the validation set; seeds change
the decoder initialisation, the crops and the augmentations. Inits: ``scratch``, ``voco`` (``--encoder``, an
``encoder.pt`` of ``pretrain`` on the pretraining pool) and, if given, ``official`` (``--official``, a
checkpoint file or catalogue name of the right model size).

Reported per (shots, init): final validation Dice, mean ± sd over seeds, its ratio to scratch's, and the first
validation step at which the seed-mean Dice reaches scratch's final seed-mean Dice.

CPU cost: a step of the tiny network with 2 crops of 64³ is ~5 s on 2 cores, one validation of a case at
1.5 mm ~5-10 s; the defaults (3 shots × 2 inits × 2 seeds × 40 steps, 4 validation cases every 10 steps) take
about an hour. A CPU budget shows the trend of the first steps, not converged Dice; the paper's gains are
measured after thousands of steps of size B on a GPU.

The pool's CT images only (the label files beside them are not CT):

    POOL="../shared/data/ibsi_sts/*_image.nii.gz ../shared/data/slicerio/CTChest4.nrrd \\
          ../shared/data/totalsegmentator/example_ct.nii.gz"
    .venv/bin/python -m voco_backend pretrain --data $POOL --out runs/tiny --model-size tiny --steps 200
    .venv/bin/python benchmarks/few_shot.py --encoder runs/tiny/encoder.pt
    # on a GPU (the figures of the closing note of stop 2):
    python -m voco_backend pretrain --data $POOL --out runs/B --model-size B --steps 700 --device cuda
    python benchmarks/few_shot.py --encoder runs/B/encoder.pt --model-size B --shots 1 3 5 --seeds 0 1 \\
        --steps 100 --val-every 20 --device cuda
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def sts_cases(data: Path) -> list[tuple[Path, Path]]:
    """(image, mask) of the STS patients, sorted by name."""
    images = sorted((data / "ibsi_sts").glob("STS_*_CT_image.nii.gz"))
    return [(image, image.with_name(image.name.replace("_image", "_mask"))) for image in images]


def finetune(
    train: list[tuple[Path, Path]],
    val: list[tuple[Path, Path]],
    init: str,
    seed: int,
    out: Path,
    args: argparse.Namespace,
) -> list[dict]:
    """Run ``finetune`` in this process; returns its validations (step, dice)."""
    from voco_backend.cancel import CancelToken
    from voco_backend.commands.finetune import FinetuneConfig, run
    from voco_backend.protocol import Reporter

    config = FinetuneConfig(
        images=[str(i) for i, _ in train],
        labels=[str(m) for _, m in train],
        val_images=[str(i) for i, _ in val],
        val_labels=[str(m) for _, m in val],
        classes=["tumour=1"],
        out=str(out),
        init=init,
        steps=args.steps,
        val_every=args.val_every,
        checkpoint_every=args.steps,
        model_size=args.model_size,
        roi=args.roi,
        batch_size=args.batch_size,
        spacing=args.spacing,
        seed=seed,
        device=args.device,
    )
    run(config, Reporter(stdout=io.StringIO(), stderr=io.StringIO()), CancelToken())
    return json.loads((out / "model.json").read_text())["training"]["validations"]


def mean_sd(values: list[float]) -> str:
    """``mean ± sd`` (sd 0 for one value)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def steps_to_reach(curves: list[list[dict]], target: float) -> str:
    """First validation step where the seed-mean Dice is >= ``target``."""
    for points in zip(*curves, strict=True):
        if statistics.mean(p["dice"] for p in points) >= target:
            return str(points[0]["step"])
    return "not reached"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared real-CT folder")
    parser.add_argument("--encoder", required=True, help="encoder.pt of a VoCo pretraining run (our pretrain)")
    parser.add_argument("--official", help="an official VoCo checkpoint or catalogue name of the same size")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 3, 5], help="labelled training cases")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=40, help="the step budget of every run")
    parser.add_argument("--val-every", type=int, default=10)
    parser.add_argument("--val-cases", type=int, default=4, help="the last N cases by name are the validation set")
    parser.add_argument("--model-size", default="tiny")
    parser.add_argument("--roi", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--spacing", type=float, nargs=3, default=[1.5, 1.5, 1.5])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", type=Path, help="folder for the model folders (default: a temporary one)")
    args = parser.parse_args()

    cases = sts_cases(args.data)
    val, pool = cases[-args.val_cases :], cases[: -args.val_cases]
    if max(args.shots) > len(pool):
        parser.error(f"--shots up to {len(pool)} with --val-cases {args.val_cases} ({len(cases)} cases)")
    inits = {"scratch": "none", "voco": args.encoder, **({"official": args.official} if args.official else {})}
    work = args.work or Path(tempfile.mkdtemp(prefix="few_shot_"))
    curves: dict[tuple[int, str], list[list[dict]]] = {}
    for shots in args.shots:
        for name, init in inits.items():
            for seed in args.seeds:
                out = work / f"{shots}shot_{name}_seed{seed}"
                curves.setdefault((shots, name), []).append(finetune(pool[:shots], val, init, seed, out, args))
                print(
                    f"done: {shots} shot(s), {name}, seed {seed}: Dice {curves[shots, name][-1][-1]['dice']:.3f}",
                    flush=True,
                )

    print(
        f"\nfew_shot: STS, validation on {', '.join(i.name[:7] for i, _ in val)}; {args.model_size}, "
        f"{args.steps} steps, roi {args.roi}, spacing {args.spacing}, seeds {args.seeds}\n"
    )
    print("| shots | init | final val Dice (mean ± sd) | vs scratch | steps to scratch's final Dice |")
    print("|---|---|---|---|---|")
    for shots in args.shots:
        scratch = statistics.mean(c[-1]["dice"] for c in curves[shots, "scratch"])
        for name in inits:
            finals = [c[-1]["dice"] for c in curves[shots, name]]
            ratio = statistics.mean(finals) / scratch if scratch > 0 else float("nan")
            reach = "(reference)" if name == "scratch" else steps_to_reach(curves[shots, name], scratch)
            print(f"| {shots} | {name} | {mean_sd(finals)} | {ratio:.2f}x | {reach} |")


if __name__ == "__main__":
    main()
