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
- ``segment roi-box``: ``segment --roi-box`` on the box around the input's label (``--label``, default the lung
  lesion of lung2) plus ``--box-margin`` mm; ``segment body-crop``: ``segment --body-crop``. Their second table
  gives time and peak RSS as ratios to the ``segment`` row and the Dice against ``segment``'s output inside the
  region each labelled (elsewhere they are background by design). ``segment shifted windows`` is the control:
  the whole image with the overlap raised by 0.25, so that the windows fall elsewhere (and more of them); its
  Dice against ``segment`` inside the same region is what window placement alone moves.
A last table counts (no network run) the windows a ``VoComni_B`` run (1.5 mm, 96³, overlap 0.75) visits on the
shared CTs whole, body-cropped and inside the box: what the crop saves with a catalogue network's recipe.
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
import itertools
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
    "segment roi-box": {**DEFAULTS, "region": "roi-box"},
    "segment body-crop": {**DEFAULTS, "region": "body-crop"},
    "segment shifted windows": {**DEFAULTS, "overlap_shift": 0.25},
}
REGION_VARIANTS = ("segment roi-box", "segment body-crop")
# The shared CTs whose window counts the last table gives, and the catalogue network whose recipe it uses.
COUNT_INPUTS = (
    "slicerio/CTChest4.nrrd",
    "totalsegmentator/example_ct.nii.gz",
    "totalsegmentator/example_ct_dicom",
    "pyradiomics/lung2_image.nrrd",
)
COUNT_MODEL = "VoComni_B"


def label_box(label_path: str, margin_mm: float) -> list[float]:
    """The RAS box (x0 y0 z0 x1 y1 z1, mm) around a label file's non-zero voxel centres, widened by ``margin_mm``."""
    import SimpleITK as sitk

    from voco_backend.data.io import LPS_TO_RAS

    label = sitk.ReadImage(label_path)
    k, j, i = np.nonzero(sitk.GetArrayViewFromImage(label))
    corners = [label.TransformIndexToPhysicalPoint((int(a), int(b), int(c))) for a in (i.min(), i.max())
               for b in (j.min(), j.max()) for c in (k.min(), k.max())]  # fmt: skip
    ras = np.asarray(corners) * np.diag(LPS_TO_RAS)[:3]
    return [*(ras.min(0) - margin_mm).tolist(), *(ras.max(0) + margin_mm).tolist()]


def worker(
    variant: str, model: str, image_path: str, output: str, overlap: float, device_name: str, box: list[float]
) -> dict:
    """Run one variant end to end (read → write); returns its seconds and peak RSS (and the region labelled)."""
    from voco_backend.cpu_memory import use_cpu_allocator

    options = VARIANTS[variant]
    overlap += options.get("overlap_shift", 0.0)
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
    from voco_backend.segmentation.region import segment_region

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
        wanted = options.get("region")
        region = (
            segment_region(
                image, box if wanted == "roi-box" else None, wanted == "body-crop", segmenter.context_margin_mm(image)
            )
            if wanted
            else None
        )
        label = segmenter.segment(
            image,
            overlap=overlap,
            interpolation=options["interpolation"],
            progress=lambda done, total: counted.append(total),
            region=region,
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
        **({"region": [list(region.labelled.start), list(region.labelled.stop)]} if options.get("region") else {}),
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


def class_dice(a_path: str, b_path: str, region: list[list[int]] | None = None) -> dict[int, float]:
    """Dice per non-zero label value either label map holds (same grid), inside ``region`` if given."""
    import SimpleITK as sitk

    a = sitk.GetArrayFromImage(sitk.ReadImage(a_path))
    b = sitk.GetArrayFromImage(sitk.ReadImage(b_path))
    if region is not None:
        (i0, j0, k0), (i1, j1, k1) = region
        a, b = a[k0:k1, j0:j1, i0:i1], b[k0:k1, j0:j1, i0:i1]
    values = sorted((set(np.unique(a)) | set(np.unique(b))) - {0})
    return {int(v): float(2 * np.sum((a == v) & (b == v)) / (np.sum(a == v) + np.sum(b == v))) for v in values}


def mean_dice(a_path: str, b_path: str, region: list[list[int]] | None = None) -> float:
    """Mean of :func:`class_dice` (1.0 when neither map holds a label), inside ``region`` ([start, stop] i, j, k)."""
    dice = class_dice(a_path, b_path, region)
    return float(np.mean(list(dice.values()))) if dice else 1.0


def print_window_counts(data: Path, boxed: str, box: list[float]) -> None:
    """The windows a catalogue network's recipe visits on the shared CTs: whole, body-cropped, inside the box."""
    from voco_backend.catalogue import get_entry
    from voco_backend.data.io import read_image
    from voco_backend.segmentation.inference import count_windows
    from voco_backend.segmentation.model_folder import catalogue_model_info
    from voco_backend.segmentation.preprocess import preprocess
    from voco_backend.segmentation.region import context_margin_mm, segment_region

    info = catalogue_model_info(Path(COUNT_MODEL), get_entry(COUNT_MODEL))
    overlap = float(info.init["overlap"])
    margin = context_margin_mm(info.roi, info.recipe.spacing)
    print(f"\nWindows of a {COUNT_MODEL} run ({info.recipe.spacing[0]} mm, roi {info.roi[0]}, overlap {overlap}):\n")
    print("| CT | whole | body crop (share of the voxels) | roi-box |")
    print("|---|---|---|---|")
    for name in COUNT_INPUTS:
        path = str(data / name)
        image = read_image(path)
        counts = []
        for roi_box, body in ((None, False), (None, True), (box, False)):
            if roi_box is not None and path != boxed:
                counts.append("-")
                continue
            region = segment_region(image, roi_box, body, margin)
            seen = image if region is None else region.context.extract(image)
            windows = count_windows(preprocess(info.recipe, seen)["image"].shape[1:], info.roi, overlap)
            share = "" if region is None else f" ({region.labelled.voxels / np.prod(image.GetSize()):.0%})"
            counts.append(f"{windows}{share}")
        print(f"| {name} | " + " | ".join(counts) + " |")


def sitk_size(path: str) -> tuple[int, int, int]:
    """An image's size (i, j, k) from its header."""
    from voco_backend.data.io import read_image

    return read_image(path).GetSize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared real-CT folder")
    parser.add_argument("--input", help="CT to segment (default DATA/pyradiomics/lung2_image.nrrd)")
    parser.add_argument("--model", help="model folder or catalogue name (default: fine-tune a tiny one first)")
    parser.add_argument("--train-steps", type=int, default=20, help="steps of the tiny model trained without --model")
    parser.add_argument("--train-spacing", type=float, default=3.0, help="recipe spacing (mm) of that model")
    parser.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap of every row")
    parser.add_argument("--label", help="label whose box the roi-box row segments (default lung2's lesion)")
    parser.add_argument("--box-margin", type=float, default=20.0, help="mm around that label's box")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--repeat", type=int, default=1, help="rounds over the rows; each row keeps its fastest")
    parser.add_argument("--roi-box", type=float, nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help="folder for the model and outputs (default: a temporary one)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        row = worker(args.worker, args.model, args.input, args.output, args.overlap, args.device, args.roi_box)
        print(json.dumps(row))
        return

    if set(REGION_VARIANTS) & set(args.variants) and "segment" not in args.variants:
        parser.error("the region rows are measured against the 'segment' row: add it to --variants")
    work = args.work or Path(tempfile.mkdtemp(prefix="segment_speed_"))
    image = args.input or str(args.data / "pyradiomics" / "lung2_image.nrrd")
    box = label_box(args.label or str(args.data / "pyradiomics" / "lung2_label.nrrd"), args.box_margin)
    model = args.model
    if model is None:
        model = str(work / "model")
        train_model(args.data, Path(model), args.train_steps, args.train_spacing)
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    best: dict[tuple[str, str], dict] = {}
    for device, _, variant in itertools.product(devices, range(args.repeat), args.variants):  # rounds interleaved
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
                "--roi-box",
                *[str(v) for v in box],
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        row = json.loads(done.stdout.strip().splitlines()[-1])
        kept = best.setdefault((device, variant), row)
        kept["seconds"] = min(kept["seconds"], row["seconds"])
        kept["peak_rss_mb"] = max(kept["peak_rss_mb"], row["peak_rss_mb"])
    rows = list(best.values())
    (work / "rows.json").write_text(json.dumps(rows, indent=2))
    print(
        f"\nsegment_speed: {image}, model {model}, overlap {args.overlap}, {torch.get_num_threads()} CPU threads, "
        f"best of {args.repeat} interleaved rounds (peak RSS: the largest)\n"
    )
    whole_rows = [r for r in rows if r["variant"] not in REGION_VARIANTS] if "plain" in args.variants else []
    if whole_rows:
        print("| device | variant | windows | seconds | speed-up vs plain | peak RSS (MB) | Dice vs plain "
              "| Dice vs fp32 |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
    for row in whole_rows:
        same = {r["variant"]: r for r in rows if r["device"] == row["device"]}
        base, fp32 = same["plain"], same.get("segment fp32")
        vs_fp32 = f"{mean_dice(row['output'], fp32['output']):.4f}" if fp32 and row["variant"] != "plain" else "-"
        print(
            f"| {row['device']} | {row['variant']} | {row['windows']} | {row['seconds']:.1f} | "
            f"{base['seconds'] / row['seconds']:.2f}x | {row['peak_rss_mb']:.0f} | "
            f"{mean_dice(row['output'], base['output']):.4f} | {vs_fp32} |"
        )
    regional = [r for r in rows if r["variant"] in REGION_VARIANTS]
    if regional:
        print(f"\nRegions (roi-box: {', '.join(f'{v:.1f}' for v in box)} RAS mm) against the full `segment` row:\n")
        print("| device | variant | voxels labelled | windows | seconds | time vs full | peak RSS (MB) | RSS vs full "
              "| Dice vs full inside the region | shifted windows' Dice vs full there |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|")
    for row in regional:
        same = {r["variant"]: r for r in rows if r["device"] == row["device"]}
        full, shifted = same["segment"], same.get("segment shifted windows")
        (start, stop), whole = row["region"], np.prod(sitk_size(image))
        control = f"{mean_dice(shifted['output'], full['output'], row['region']):.4f}" if shifted else "-"
        print(
            f"| {row['device']} | {row['variant']} | {np.prod(np.subtract(stop, start)) / whole:.0%} | "
            f"{row['windows']} | {row['seconds']:.1f} | {row['seconds'] / full['seconds']:.2f} | "
            f"{row['peak_rss_mb']:.0f} | {row['peak_rss_mb'] / full['peak_rss_mb']:.2f} | "
            f"{mean_dice(row['output'], full['output'], row['region']):.4f} | {control} |"
        )
    if regional:
        print_window_counts(args.data, image, box)
    if whole_rows:
        print("\nDice vs plain per label value:")
    for row in whole_rows:
        base = next(r for r in rows if r["device"] == row["device"] and r["variant"] == "plain")
        if row is not base:
            per_class = class_dice(row["output"], base["output"])
            print(f"- {row['device']} {row['variant']}: " + ", ".join(f"{v}: {d:.4f}" for v, d in per_class.items()))


if __name__ == "__main__":
    main()
