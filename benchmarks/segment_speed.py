"""``segment`` against plain MONAI sliding-window inference on the same model and the same real CT, same run.

Rows (each in its own process, so peak RSS stays separate; all read the CT, preprocess it with the model's
recipe, infer with the same roi and overlap, and write a label map on the input grid):
- ``plain``: ``sliding_window_inference`` with constant blending, fp32, no fused attention, argmax in the
  preprocessed space, nearest-neighbour resampling onto the input grid, default allocator — the baseline.
- ``segment``: ``segment`` with its defaults (gaussian blending, fused attention, ``--precision auto``,
  ``--cpu-allocator retain``, ``--interpolation linear``).
- ``segment fp32``, ``segment default-alloc``, ``segment hugepages``: the same with fp32 / with the C library's
  default allocator / with ``--cpu-allocator hugepages``.
- ``segment nearest``: the same with ``--interpolation nearest`` (resampled like plain).
- ``engine as plain``: ``segment``'s engine (fused attention, mixed precision, allocator, blended softmax) with
  plain's constant blending and nearest resampling: its Dice against plain isolates what the speed-ups change,
  while the other rows add the deliberate output changes (gaussian blending, linear restoration).
GPU rows are added when CUDA is available. The ratio is plain's time over the row's; the Dice (mean over the
classes either output holds) is against plain's output and against ``segment fp32`` (isolates mixed precision).

Without ``--model`` a tiny model is fine-tuned first on slicerio's chest CT and its 7 manual segments
(``--train-steps``), so that the outputs hold real structures (lungs, tissue, spine) to compare; an undertrained
model has flat probabilities, and then any change of blending or resampling moves many argmax labels.

    .venv/bin/python benchmarks/segment_speed.py                     # trains a tiny chest model, segments lung2
    .venv/bin/python benchmarks/segment_speed.py --model models/chest --input ct.nrrd --overlap 0.5
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULTS = {"precision": "auto", "allocator": "retain", "interpolation": "linear"}
VARIANTS = {
    "plain": {**DEFAULTS, "precision": "fp32", "allocator": "default"},
    "segment": DEFAULTS,
    "segment fp32": {**DEFAULTS, "precision": "fp32"},
    "segment default-alloc": {**DEFAULTS, "allocator": "default"},
    "segment hugepages": {**DEFAULTS, "allocator": "hugepages"},
    "segment nearest": {**DEFAULTS, "interpolation": "nearest"},
    "engine as plain": {**DEFAULTS, "interpolation": "nearest", "blend": "constant"},
}


def worker(variant: str, model: str, image_path: str, output: str, overlap: float, device_name: str) -> dict:
    """Run one variant end to end (read → write); returns its seconds and peak RSS."""
    from voco_backend.cpu_memory import use_cpu_allocator

    options = VARIANTS[variant]
    if device_name == "cpu":  # before the first large tensor of this process
        use_cpu_allocator(options["allocator"])
    import SimpleITK as sitk
    import torch
    from monai.inferers import sliding_window_inference

    from voco_backend.data.io import from_array, read_image, write_image
    from voco_backend.segmentation.inference import (
        Segmenter,
        count_windows,
        restore_to_grid,
        sliding_window_probabilities,
    )
    from voco_backend.segmentation.model_folder import resolve_segmentation_model
    from voco_backend.segmentation.preprocess import preprocess

    device = torch.device(device_name)
    info, weights = resolve_segmentation_model(model)
    segmenter = Segmenter(info, weights, device, options["precision"], flash_attention=variant != "plain")
    started = time.perf_counter()
    image = read_image(image_path)
    if variant == "plain":
        data = preprocess(info.recipe, image)
        with torch.inference_mode():
            logits = sliding_window_inference(
                data["image"][None],
                info.roi,
                1,
                segmenter.model,
                overlap=overlap,
                mode="constant",
                sw_device=device,
                device="cpu",
            )
        values = np.array([0] + [c.value for c in info.classes], dtype=np.uint8)
        argmax = values[torch.as_tensor(logits)[0].argmax(0).numpy()]
        label = sitk.Resample(
            from_array(argmax, data["image"].affine.numpy()),
            image,
            sitk.Transform(),
            sitk.sitkNearestNeighbor,
            0,
            sitk.sitkUInt8,
        )
        windows = count_windows(data["image"].shape[1:], info.roi, overlap)
    elif "blend" in options:
        data = preprocess(info.recipe, image)
        probabilities = sliding_window_probabilities(
            segmenter.model,
            data["image"],
            info.roi,
            overlap=overlap,
            device=device,
            dtype=segmenter.dtype,
            mode=options["blend"],
        )
        values = [0] + [c.value for c in info.classes]
        label = restore_to_grid(probabilities, data["image"].affine.numpy(), image, values, "nearest")
        windows = count_windows(data["image"].shape[1:], info.roi, overlap)
    else:
        counted = []
        label = segmenter.segment(
            image,
            overlap=overlap,
            interpolation=options["interpolation"],
            progress=lambda done, total: counted.append(total),
        )
        windows = counted[-1]
    write_image(label, output)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "variant": variant,
        "device": device_name,
        "seconds": seconds,
        "peak_rss_mb": peak_mb,
        "windows": windows,
        "output": output,
    }


def train_model(data: Path, folder: Path, steps: int, spacing: float) -> None:
    """Fine-tune a tiny model on slicerio's chest CT and its manual segments (the model under test)."""
    ct = data / "slicerio"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "voco_backend",
            "finetune",
            "--images",
            str(ct / "CTChest4.nrrd"),
            "--labels",
            str(ct / "Segmentation.seg.nrrd"),
            "--out",
            str(folder),
            "--model-size",
            "tiny",
            "--steps",
            str(steps),
            "--val-every",
            str(steps),
            "--batch-size",
            "1",
            "--device",
            "cpu",
            "--spacing",
            *[str(spacing)] * 3,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def class_dice(a_path: str, b_path: str) -> dict[int, float]:
    """Dice per non-zero label value either label map holds (same grid)."""
    import SimpleITK as sitk

    a = sitk.GetArrayFromImage(sitk.ReadImage(a_path))
    b = sitk.GetArrayFromImage(sitk.ReadImage(b_path))
    values = sorted((set(np.unique(a)) | set(np.unique(b))) - {0})
    return {int(v): float(2 * np.sum((a == v) & (b == v)) / (np.sum(a == v) + np.sum(b == v))) for v in values}


def mean_dice(a_path: str, b_path: str) -> float:
    """Mean of :func:`class_dice` (1.0 when neither map holds a label)."""
    dice = class_dice(a_path, b_path)
    return float(np.mean(list(dice.values()))) if dice else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared real-CT folder")
    parser.add_argument("--input", help="CT to segment (default DATA/pyradiomics/lung2_image.nrrd)")
    parser.add_argument("--model", help="model folder or catalogue name (default: fine-tune a tiny one first)")
    parser.add_argument("--train-steps", type=int, default=20, help="steps of the tiny model trained without --model")
    parser.add_argument("--train-spacing", type=float, default=3.0, help="recipe spacing (mm) of that model")
    parser.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap of every row")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--work", type=Path, help="folder for the model and outputs (default: a temporary one)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.input, args.output, args.overlap, args.device)))
        return

    work = args.work or Path(tempfile.mkdtemp(prefix="segment_speed_"))
    image = args.input or str(args.data / "pyradiomics" / "lung2_image.nrrd")
    model = args.model
    if model is None:
        model = str(work / "model")
        train_model(args.data, Path(model), args.train_steps, args.train_spacing)
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for variant in args.variants:
            output = str(work / f"{variant.replace(' ', '_').replace('+', '')}_{device}.nii.gz")
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    variant,
                    "--model",
                    model,
                    "--input",
                    image,
                    "--output",
                    output,
                    "--overlap",
                    str(args.overlap),
                    "--device",
                    device,
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    (work / "rows.json").write_text(json.dumps(rows, indent=2))
    print(f"\nsegment_speed: {image}, model {model}, overlap {args.overlap}, {torch.get_num_threads()} CPU threads\n")
    print("| device | variant | windows | seconds | speed-up vs plain | peak RSS (MB) | Dice vs plain | Dice vs fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        same = {r["variant"]: r for r in rows if r["device"] == row["device"]}
        base, fp32 = same["plain"], same.get("segment fp32")
        vs_fp32 = f"{mean_dice(row['output'], fp32['output']):.4f}" if fp32 and row["variant"] != "plain" else "-"
        print(
            f"| {row['device']} | {row['variant']} | {row['windows']} | {row['seconds']:.1f} | "
            f"{base['seconds'] / row['seconds']:.2f}x | {row['peak_rss_mb']:.0f} | "
            f"{mean_dice(row['output'], base['output']):.4f} | {vs_fp32} |"
        )
    print("\nDice vs plain per label value:")
    for row in rows:
        base = next(r for r in rows if r["device"] == row["device"] and r["variant"] == "plain")
        if row is not base:
            per_class = class_dice(row["output"], base["output"])
            print(f"- {row['device']} {row['variant']}: " + ", ".join(f"{v}: {d:.4f}" for v, d in per_class.items()))


if __name__ == "__main__":
    main()
