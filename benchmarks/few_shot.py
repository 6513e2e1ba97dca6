"""Few-shot fine-tuning on the 12 STS patients: VoCo initialisation, scratch and nnU-Net v2, same split, same budget.

Fixed split: the cases sorted by name; the last ``--val-cases`` are the validation set, the first 1, 3, 5
(``--shots``) of the others the labelled training sets (nested). Every (shots, init, seed) fine-tunes the same
network for ``--steps`` steps with validation every ``--val-every`` steps on the validation set; seeds change
the decoder initialisation, the crops and the augmentations. Inits: ``scratch``, ``voco`` (``--encoder``, an
``encoder.pt`` of ``pretrain`` on the pretraining pool) and, if given, ``official`` (``--official``, a
checkpoint file or catalogue name of the right model size).

Budget: ``--steps`` steps, or with ``--budget-minutes M`` the same wall-clock training time for every row
(``finetune --max-minutes M``; nnU-Net through a trainer subclass that stops at M minutes, see
``benchmarks/nnunet_peer.py``). ``--nnunet-python PY`` adds the nnU-Net v2 row: PY is the interpreter of a
virtual environment holding ``nnunetv2`` (``pip install '.[bench]'`` there; not in the project's own .venv, whose
CPU torch the registry's torchvision does not import beside). nnU-Net plans its own spacing, patch and
normalisation from the training cases and trains its own PlainConvUNet from scratch.

Reported per (shots, init): Dice per validation patient (seed mean; ours: the kept ``model.pt`` applied with
``segment``'s own sliding window and blending, on the patient's grid), the patient-mean Dice as mean ± sd over
seeds, its ratio to scratch's and, for our rows, the first validation step at which the seed-mean validation
Dice reaches scratch's final one. Our ``model.pt`` is the best validation Dice seen during training (selected on
the validation patients, so slightly optimistic); nnU-Net's is its final checkpoint.

CPU cost: a step of the tiny network with 2 crops of 64³ is ~5 s on 2 cores, one validation of a case at
1.5 mm ~5-10 s; the defaults (3 shots × 2 inits × 2 seeds × 40 steps, 4 validation cases every 10 steps) take
about an hour. A CPU budget shows the trend of the first steps, not converged Dice; the paper's gains are
measured after thousands of steps of size B on a GPU.

The pool's CT images only (the label files beside them are not CT), without the validation patients (STS_024,
025, 026 and 028 with the default split), so that no figure rests on having pretrained on the scans it is
measured on:

    D=../shared/data; POOL="$(ls $D/ibsi_sts/STS_0{02,03,08,10,12,15,18,19}_CT_image.nii.gz) \\
          $D/slicerio/CTChest4.nrrd $D/totalsegmentator/example_ct.nii.gz $D/pyradiomics/lung*_image.nrrd"
    .venv/bin/python -m voco_backend pretrain --data $POOL --out runs/tiny --model-size tiny --steps 200
    .venv/bin/python benchmarks/few_shot.py --encoder runs/tiny/encoder.pt
    # the CPU VoCo row of the README (3 mm, as the scratch row; 140 steps are 33 minutes on 2 cores):
    .venv/bin/python -m voco_backend pretrain --data $POOL --out runs/tiny3 --model-size tiny --steps 140 \\
        --spacing 3 3 3 --region-xy 128 --region-depth 64 --grid 2
    .venv/bin/python benchmarks/few_shot.py --rows voco --encoder runs/tiny3/encoder.pt --shots 5 --seeds 0 \\
        --budget-minutes 20 --warmup-steps 10 --val-every 50 --threads 1 --spacing 3 3 3
    # with nnU-Net beside, 20 minutes of training each:
    python3 -m venv ~/nnunet-venv && ~/nnunet-venv/bin/pip install torch torchvision -e '.[bench]'
    .venv/bin/python benchmarks/few_shot.py --encoder runs/tiny/encoder.pt --shots 5 --seeds 0 1 \\
        --budget-minutes 20 --nnunet-python ~/nnunet-venv/bin/python
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

import SimpleITK as sitk

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
UNLIMITED_STEPS = 1_000_000  # the step cap when a time budget decides


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
        steps=UNLIMITED_STEPS if args.budget_minutes else args.steps,
        max_minutes=args.budget_minutes,
        warmup_steps=args.warmup_steps if args.warmup_steps is not None else min(args.steps // 10, 50),
        window_from_labels=args.window_from_labels,
        **({"lr": args.lr} if args.lr else {}),
        **({"encoder_lr": args.encoder_lr} if args.encoder_lr else {}),
        val_every=args.val_every,
        checkpoint_every=UNLIMITED_STEPS if args.budget_minutes else args.steps,
        model_size=args.model_size,
        roi=args.roi,
        batch_size=args.batch_size,
        spacing=None if args.spacing_from_fov else args.spacing,
        spacing_from_fov=args.spacing_from_fov,
        seed=seed,
        device=args.device,
        amp=args.amp,
        augment=args.augment,
        deep_supervision=args.deep_supervision,
    )
    run(config, Reporter(stdout=io.StringIO(), stderr=io.StringIO()), CancelToken())
    return json.loads((out / "model.json").read_text())["training"]["validations"]


def dice_per_patient(model: Path, val: list[tuple[Path, Path]], device: str) -> tuple[list[float], list[float]]:
    """Dice of the kept model on each validation patient, segmented as ``segment`` does, on the patient's grid:
    with the model's post-processing (what a user gets) and as the network predicted."""
    from voco_backend.data.io import read_image
    from voco_backend.devices import resolve_device
    from voco_backend.segmentation.evaluation import class_metrics, on_reference_grid
    from voco_backend.segmentation.inference import Segmenter
    from voco_backend.segmentation.model_folder import MODEL_PT, read_model_info
    from voco_backend.segmentation.postprocess import keep_largest_component_image

    info = read_model_info(model)
    segmenter = Segmenter(info, model / MODEL_PT, resolve_device(device))
    kept, raw = [], []
    for image_path, mask_path in val:
        ref = read_image(mask_path)
        predicted = segmenter.segment(read_image(image_path), overlap=0.5, postprocess=False)
        for dice, label in (
            (raw, predicted),
            (kept, keep_largest_component_image(predicted, info.largest_component_values)),
        ):
            metrics = class_metrics(
                sitk.GetArrayViewFromImage(on_reference_grid(label, ref)) == 1,
                sitk.GetArrayViewFromImage(ref) > 0,
                tuple(reversed(ref.GetSpacing())),
                2.0,
            )
            dice.append(float("nan") if metrics["dice"] is None else float(metrics["dice"]))
    return kept, raw


def header(args: argparse.Namespace, val: list[tuple[Path, Path]], inits: dict[str, str], nnunet: bool) -> str:
    """The run's settings: the shared ones, then our rows' (only when it has any), each as it resolved."""
    from voco_backend.commands.finetune import DEFAULT_LR, ENCODER_LR_SCALE

    budget = f"{args.budget_minutes:g} min of training" if args.budget_minutes else f"{args.steps} steps"
    text = (
        f"\nfew_shot: STS, validation on {', '.join(i.name[:7] for i, _ in val)}; {budget}, seeds {args.seeds}, "
        f"device {args.device}, threads {args.threads or 'default'}"
    )
    if inits:
        lr = args.lr or DEFAULT_LR
        if args.encoder_lr:
            encoder_lr = f"{args.encoder_lr:g}"
        else:  # finetune's own default, which depends on the row's init
            encoder_lr = " / ".join(
                f"{name} {lr if init == 'none' else lr * ENCODER_LR_SCALE:g}" for name, init in inits.items()
            )
        spacing = "from FOV" if args.spacing_from_fov else " ".join(f"{s:g}" for s in args.spacing)
        window = "from labels" if args.window_from_labels else "default"
        text += (
            f"\nour rows: {args.model_size}, roi {args.roi}, spacing {spacing} mm, lr {lr:g}, encoder lr "
            f"{encoder_lr}, window {window}, amp {args.amp}, augment {args.augment}, "
            f"deep supervision {args.deep_supervision}"
        )
    if nnunet:
        text += "\nnnU-Net v2: its own default plan (spacing, patch, normalisation) and trainer, 3d_fullres"
    return text + "\n"


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
    parser.add_argument("--encoder", help="encoder.pt of a VoCo pretraining run (our pretrain): the voco row")
    parser.add_argument("--official", help="an official VoCo checkpoint or catalogue name of the same size")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 3, 5], help="labelled training cases")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=40, help="the step budget of every run")
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=0.0,
        help="a wall-clock training budget for every row instead of --steps (0: steps decide)",
    )
    parser.add_argument("--nnunet-python", help="python of a virtual environment with nnunetv2: adds its row")
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=["scratch", "voco", "official", "nnunet"],
        help="the rows to run (default: scratch, voco, and official/nnunet when given); several processes "
        "with one row each run side by side under the same load",
    )
    parser.add_argument("--lr", type=float, help="peak learning rate of our rows (default: finetune's)")
    parser.add_argument(
        "--encoder-lr", type=float, help="our rows' finetune --encoder-lr (default: finetune's, from --lr)"
    )
    parser.add_argument("--warmup-steps", type=int, help="warm-up steps of our rows (default: steps // 10, <= 50)")
    parser.add_argument(
        "--window-from-labels",
        action="store_true",
        help="our rows window the training labels' 0.5-99.5 HU percentiles (finetune --window-from-labels)",
    )
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="our rows' finetune --amp (bf16 on a CPU with bf16 instructions; --no-amp: fp32)",
    )
    parser.add_argument("--augment", default="voco", choices=["voco", "nnunet"], help="our rows' finetune --augment")
    parser.add_argument(
        "--deep-supervision", action="store_true", help="our rows' finetune --deep-supervision (heads on 1/2-1/8)"
    )
    parser.add_argument("--val-every", type=int, default=10)
    parser.add_argument("--val-cases", type=int, default=4, help="the last N cases by name are the validation set")
    parser.add_argument("--model-size", default="tiny")
    parser.add_argument("--roi", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--spacing", type=float, nargs=3, default=[1.5, 1.5, 1.5])
    parser.add_argument(
        "--spacing-from-fov",
        action="store_true",
        help="our rows' finetune --spacing-from-fov (one ROI spans the median field of view) instead of --spacing",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads of every row (ours: torch.set_num_threads; nnU-Net: its trainer), e.g. 1 with rows run "
        "side by side, each process pinned to its own core (taskset -c N)",
    )
    parser.add_argument("--work", type=Path, help="folder for the model folders (default: a temporary one)")
    args = parser.parse_args()

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cases = sts_cases(args.data)
    val, pool = cases[-args.val_cases :], cases[: -args.val_cases]
    if max(args.shots) > len(pool):
        parser.error(f"--shots up to {len(pool)} with --val-cases {args.val_cases} ({len(cases)} cases)")
    rows = args.rows or [
        "scratch",
        "voco",
        *(["official"] if args.official else []),
        *(["nnunet"] if args.nnunet_python else []),
    ]
    if "voco" in rows and not args.encoder:
        parser.error("the voco row needs --encoder")
    if "official" in rows and not args.official:
        parser.error("the official row needs --official")
    if "nnunet" in rows and not args.nnunet_python:
        parser.error("the nnunet row needs --nnunet-python")
    if "nnunet" in rows and not args.budget_minutes:
        parser.error("the nnU-Net row needs --budget-minutes (the same wall-clock budget for every row)")
    sources = {"scratch": "none", "voco": args.encoder, "official": args.official}
    inits = {name: sources[name] for name in rows if name in sources}
    work = args.work or Path(tempfile.mkdtemp(prefix="few_shot_"))
    curves: dict[tuple[int, str], list[list[dict]]] = {}
    patients: dict[tuple[int, str], list[list[float]]] = {}
    for shots in args.shots:
        for name, init in inits.items():
            for seed in args.seeds:
                out = work / f"{shots}shot_{name}_seed{seed}"
                curves.setdefault((shots, name), []).append(finetune(pool[:shots], val, init, seed, out, args))
                kept, raw = dice_per_patient(out, val, args.device)
                patients.setdefault((shots, name), []).append(kept)
                report_run(shots, name, seed, kept, raw, curves[shots, name][-1])
        if "nnunet" in rows:
            from nnunet_peer import nnunet_dice_per_patient

            budget_s = args.budget_minutes * 60
            for seed in args.seeds:
                folder = work / f"{shots}shot_nnunet_seed{seed}"
                dice = nnunet_dice_per_patient(
                    pool[:shots], val, seed, budget_s, folder, args.nnunet_python, args.device, threads=args.threads
                )
                patients.setdefault((shots, "nnU-Net v2"), []).append(dice)
                report_run(shots, "nnU-Net v2", seed, dice)

    print(header(args, val, inits, nnunet="nnunet" in rows))
    names = [*inits, *(["nnU-Net v2"] if "nnunet" in rows else [])]
    print(
        "| shots | init | Dice per validation patient (seed mean) | mean ± sd over seeds | vs scratch "
        "| steps to scratch's final val Dice |"
    )
    print("|---|---|---|---|---|---|")
    for shots in args.shots:
        scratch_rows = patients.get((shots, "scratch"))
        scratch = statistics.mean(mean_of(d) for d in scratch_rows) if scratch_rows else float("nan")
        for name in names:
            per_seed = patients[shots, name]
            per_patient = [mean_of(list(col)) for col in zip(*per_seed, strict=True)]
            means = [mean_of(d) for d in per_seed]
            ratio = f"{statistics.mean(means) / scratch:.2f}x" if scratch > 0 else "n/a (no scratch row)"
            if name == "scratch":
                reach = "(reference)"
            elif (shots, name) in curves and scratch_rows:
                scratch_val = statistics.mean(c[-1]["dice"] for c in curves[shots, "scratch"])
                reach = steps_to_reach(curves[shots, name], scratch_val)
            else:
                reach = "n/a"
            shown = " ".join(f"{d:.2f}" for d in per_patient)
            print(f"| {shots} | {name} | {shown} | {mean_sd(means)} | {ratio} | {reach} |")


def report_run(
    shots: int,
    name: str,
    seed: int,
    dice: list[float],
    raw: list[float] | None = None,
    curve: list[dict] | None = None,
) -> None:
    """One line per finished run; for our rows also the Dice without post-processing and the learning curve."""
    print(f"done: {shots} shot(s), {name}, seed {seed}: Dice per patient {' '.join(f'{d:.3f}' for d in dice)}")
    if raw is not None:
        print(f"  as predicted (no post-processing): {' '.join(f'{d:.3f}' for d in raw)}")
    for point in curve or []:
        cut = ", largest component" if point.get("largest_component") else ""
        print(f"  step {point['step']}: loss {point['loss']:.4f}, validation Dice {point['dice']:.4f}{cut}")
    print(flush=True)


def mean_of(values: list[float]) -> float:
    """Mean over the patients with a defined Dice."""
    finite = [v for v in values if v == v]
    return statistics.mean(finite) if finite else float("nan")


if __name__ == "__main__":
    main()
