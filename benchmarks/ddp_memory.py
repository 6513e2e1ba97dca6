"""Pretraining under DDP on one machine: two ranks against one process, measured in the same run.

Rows (``pretrain`` with its defaults, real CT from ``../shared/data``, the cache filled beforehand with
``--preprocess-only`` so that the rows measure training only):
- ``1 process``: the baseline: ``python -m voco_backend pretrain`` alone, every core its own.
- ``torchrun × N``: ``torchrun --nproc-per-node N -m voco_backend pretrain`` (gloo on a CPU; torchrun gives each
  rank one OpenMP thread), each rank drawing its own ``--volumes-per-step`` volumes, so a step trains N times the
  crops.

Peak memory is sampled from ``/proc`` every 0.2 s over the whole process tree: the largest rank, the largest sum
over the ranks at one moment (what the machine must hold), and the lowest ``MemAvailable`` seen. Seconds per step
are the gaps between rank 0's ``progress`` events after the first step (a warm-up).

    .venv/bin/python benchmarks/ddp_memory.py --size tiny --steps 4 --ranks 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _children() -> dict[int, list[int]]:
    """Every process's children, from ``/proc/*/stat``."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _rss_gb(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB / 1024**2
    except OSError:
        return 0.0


def _mem_available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024**2
    raise RuntimeError("no MemAvailable in /proc/meminfo")


class TreeSampler(threading.Thread):
    """Samples the RSS of a process and its descendants until :meth:`stop`."""

    def __init__(self, pid: int, period_s: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.period_s = pid, period_s
        self.peak_process_gb = self.peak_sum_gb = 0.0
        self.min_available_gb = _mem_available_gb()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            tree, pids, todo = _children(), [], [self.pid]
            while todo:
                pid = todo.pop()
                pids.append(pid)
                todo.extend(tree.get(pid, []))
            sizes = [_rss_gb(pid) for pid in pids]
            self.peak_process_gb = max(self.peak_process_gb, *sizes)
            self.peak_sum_gb = max(self.peak_sum_gb, sum(sizes))
            self.min_available_gb = min(self.min_available_gb, _mem_available_gb())
            self._done.wait(self.period_s)

    def stop(self) -> None:
        self._done.set()
        self.join()


def run_row(name: str, cmd: list[str], env: dict[str, str]) -> dict:
    """Run one ``pretrain`` and return its figures (``failed``: the exit code, when it is not 0)."""
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    sampler = TreeSampler(process.pid)
    sampler.start()
    stderr: list[str] = []
    drain = threading.Thread(target=lambda: stderr.extend(process.stderr), daemon=True)
    drain.start()
    stamps = []
    for line in process.stdout:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == "progress" and event.get("stage") == "pretrain":
            stamps.append(time.perf_counter())
    code = process.wait()
    sampler.stop()
    drain.join()
    row = {
        "row": name,
        "peak_process_gb": sampler.peak_process_gb,
        "peak_sum_gb": sampler.peak_sum_gb,
        "min_available_gb": sampler.min_available_gb,
    }
    if code != 0:
        print(f"  {name} failed (exit {code}): {''.join(stderr)[-800:]}", file=sys.stderr)
        return {**row, "failed": code}
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    row["step_s"] = sum(gaps) / len(gaps) if gaps else float("nan")
    print(f"  measured {name}: {row['step_s']:.2f} s/step, peak {row['peak_sum_gb']:.2f} GB", file=sys.stderr)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--steps", type=int, default=4, help="steps per row (the first is a warm-up)")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument(
        "--data",
        nargs="+",
        default=[str(p) for p in sorted((DEFAULT_DATA / "ibsi_sts").glob("*_image.nii.gz"))[:4]],
        help="CT images of the pool (default: 4 STS scans)",
    )
    parser.add_argument("--work", type=Path, help="folder for the cache and the runs (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="voco_ddp_"))
    env = {**os.environ, "VOCO_CACHE_DIR": str(work / "cache")}
    common = ["--data", *args.data, "--model-size", args.size, "--device", "cpu"]
    backend = [sys.executable, "-m", "voco_backend", "pretrain"]
    subprocess.run([*backend, *common, "--out", str(work / "fill"), "--preprocess-only"], env=env, check=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.ranks)]
    rows = [
        run_row("1 process", [*backend, *common, "--out", str(work / "single"), "--steps", str(args.steps)], env),
        run_row(
            f"torchrun × {args.ranks}",
            [
                *torchrun,
                "-m",
                "voco_backend",
                "pretrain",
                *common,
                "--out",
                str(work / "ddp"),
                "--steps",
                str(args.steps),
            ],
            env,
        ),
    ]
    total_gb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1024**3
    print(f"\nPretraining {args.size} on {os.cpu_count()} cores, {total_gb:.1f} GB, {args.steps} steps a row\n")
    print("| row | s/step | peak RSS of one process GB | peak RSS of all ranks GB | vs 1 process | least free GB |")
    print("|---|---|---|---|---|---|")
    base = rows[0]
    for row in rows:
        step = f"failed (exit {row['failed']})" if "failed" in row else f"{row['step_s']:.2f}"
        print(
            f"| {row['row']} | {step} | {row['peak_process_gb']:.2f} | {row['peak_sum_gb']:.2f} | "
            f"{row['peak_sum_gb'] / base['peak_sum_gb']:.2f} | {row['min_available_gb']:.2f} |"
        )


if __name__ == "__main__":
    main()
