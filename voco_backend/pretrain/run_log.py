"""The run folder's records: ``log.jsonl``, TensorBoard scalars and a PNG loss curve."""

from __future__ import annotations

import json
from pathlib import Path

from voco_backend.atomic import atomic_path


class RunLog:
    """Step records of a training run (rank 0 only); history survives resume through the checkpoint."""

    def __init__(self, run_dir: Path, history: list[dict] | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.history: list[dict] = list(history or [])
        self._jsonl = (self.run_dir / "log.jsonl").open("a", encoding="utf-8")
        self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def record(self, step: int, values: dict[str, float]) -> None:
        """Append one step's scalars."""
        entry = {"step": step, **values}
        self.history.append(entry)
        self._jsonl.write(json.dumps(entry) + "\n")
        self._jsonl.flush()
        for name, value in values.items():
            self._writer.add_scalar(f"pretrain/{name}", value, step)

    def plot(self, title: str) -> Path:
        """Write ``loss.png`` (total and its three terms against the step) atomically."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        steps = [h["step"] for h in self.history]
        for key in ("loss", "intra", "inter", "reg"):
            if self.history and key in self.history[0]:
                ax.plot(steps, [h[key] for h in self.history], label=key, lw=1.5 if key == "loss" else 1)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = self.run_dir / "loss.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp)
        plt.close(fig)
        return path

    def close(self) -> None:
        """Flush and close the files."""
        self._writer.close()
        self._jsonl.close()
