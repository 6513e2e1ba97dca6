"""One benchmark row in its own process: allocator settings and peak RSS stay separate between rows."""

from __future__ import annotations

import json
import subprocess
import sys


def run_row(cmd: list[str], size: str, variant: str) -> dict:
    """Run ``cmd`` (a ``--child`` invocation printing one JSON line last) and return its row.

    A child that fails (e.g. killed by the kernel's OOM killer, -9) is a row with ``failed``, not the end.
    """
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"  {size} {variant} failed (exit {done.returncode}): {done.stderr[-500:]}", file=sys.stderr)
        return {"size": size, "variant": variant, "failed": done.returncode}
    row = {"size": size, "variant": variant, **json.loads(done.stdout.strip().splitlines()[-1])}
    print(f"  measured {size} {variant}: {row['step_s']:.2f} s/step", file=sys.stderr, flush=True)
    return row
