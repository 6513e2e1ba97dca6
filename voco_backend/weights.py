"""Reading, loading and exporting VoCo weights: the one place of the loading rule (VOCO.md §7).

A checkpoint is read with ``torch.load(weights_only=True)``, allowing only the numpy scalar globals of the
official trainers' saves (VoComni's ``best_acc``); the first of the wrappers ``state_dict``,
``network_weights``, ``net``, ``student``, ``model`` is unwrapped, leading ``module.``/``backbone.`` are
stripped and ``swin_vit`` is renamed ``swinViT``. Every tensor of the target whose name exists in the checkpoint
with the same shape is taken, every other one keeps its fresh initialisation, and a :class:`LoadReport` says
which is which, so that a silent 0-key load cannot happen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from voco_backend.atomic import save_torch_atomic
from voco_backend.errors import DataError, UsageError
from voco_backend.networks import in_encoder, under

WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "network_weights", "net", "student", "model")
STRIPPED_PREFIXES: tuple[str, ...] = ("module.", "backbone.")
ENCODER_KEY_COUNT = 145
V2_MARKER = "swinViT.layers1c."
PATCH_EMBED = "swinViT.patch_embed.proj.weight"


def canonical_key(key: str) -> str:
    """A checkpoint key in MONAI SwinUNETR-v2 naming (``module.``/``backbone.`` stripped, ``swinViT``)."""
    while key.startswith(STRIPPED_PREFIXES):
        key = key.split(".", 1)[1]
    return ".".join("swinViT" if part == "swin_vit" else part for part in key.split("."))


def normalize_state(obj: Any, source: str | Path) -> dict[str, torch.Tensor]:
    """Unwrap a loaded checkpoint object and rename its keys; non-tensor entries are dropped.

    Raises:
        DataError: ``obj`` holds no tensors, or two of its keys map to the same name.
    """
    if isinstance(obj, Mapping):
        wrapper = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if wrapper is not None:
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise DataError(f"not a state dict (a mapping of names to tensors) but a {type(obj).__name__}", file=source)
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = canonical_key(str(key))
        if name in state:
            raise DataError(f"two tensors map to the name '{name}' after unwrapping", file=source)
        state[name] = value
    if not state:
        keys = ", ".join(map(str, list(obj)[:5])) or "nothing"
        raise DataError(f"holds no tensors (top-level keys: {keys}); expected a state dict", file=source)
    return state


def _numpy_scalar_globals() -> list[Any]:
    """Exactly the numpy globals of a pickled numpy scalar (VoComni's ``best_acc``), numpy 1.x and 2.x names.

    The official VoComni trainer saves ``{"epoch", "best_acc": np.mean(...), "state_dict"}``; its pickle holds
    ``numpy.core.multiarray.scalar`` (numpy 1.x; ``numpy._core`` in 2.x), ``numpy.dtype`` and, in newer
    pickles, the dtype's class (``numpy.dtypes.Float64DType``).
    """
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    allowed: list[Any] = [
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
    ]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [type(np.dtype(code)) for code in ("f8", "f4", "i8", "i4", "b1")]
    return allowed


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file as a flat ``{name: tensor}`` dict in SwinUNETR-v2 naming.

    Raises:
        DataError: the file is missing, is not a weights-only PyTorch checkpoint, or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("checkpoint file not found", file=path)
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:  # torch.load raises UnpicklingError/KeyError/EOFError/RuntimeError/... here
        raise DataError(
            "not a weights-only PyTorch checkpoint: unreadable, or it holds Python objects other "
            f"than tensors ({type(exc).__name__})",
            file=path,
        ) from exc
    return normalize_state(obj, path)


def _groups(keys: Sequence[str]) -> str:
    """Compact names of the modules ``keys`` belong to (``swinViT.layers1c``, ``decoder1``, ``out``)."""
    names: dict[str, None] = {}
    for key in keys:
        parts = key.split(".")
        names[".".join(parts[:2]) if parts[0] == "swinViT" else parts[0]] = None
    return ", ".join(names)


@dataclasses.dataclass
class LoadReport:
    """What :func:`load_pretrained` did.

    Attributes:
        loaded: target keys taken from the checkpoint.
        missing: target keys the checkpoint lacks (kept fresh).
        shape_mismatch: target keys the checkpoint has with another shape (kept fresh).
        unexpected: checkpoint keys the target has no use for.
        source: the checkpoint file (or ``<state dict>``).
    """

    loaded: list[str]
    missing: list[str]
    shape_mismatch: list[str]
    unexpected: list[str]
    source: str

    def summary(self) -> str:
        """One line for the user's log."""
        total = len(self.loaded) + len(self.missing) + len(self.shape_mismatch)
        encoder = sum(in_encoder(k) for k in self.loaded)
        text = f"loaded {len(self.loaded)}/{total} tensors ({encoder} encoder) from {self.source}"
        if self.missing:
            text += f"; kept fresh: {_groups(self.missing)}"
        if self.shape_mismatch:
            text += f"; kept fresh (shape differs): {_groups(self.shape_mismatch)}"
        if self.unexpected:
            text += f"; unused from checkpoint: {_groups(self.unexpected)}"
        return text


def _check_feature_size(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], name: str) -> None:
    """Refuse a checkpoint of another model size: only its shape-free tensors would load, silently."""
    if PATCH_EMBED in state and PATCH_EMBED in target:
        have, want = state[PATCH_EMBED].shape[0], target[PATCH_EMBED].shape[0]
        if have != want:
            raise DataError(
                f"has feature_size {have} but the model has {want}: build the model with the checkpoint's "
                "size (B 48, L 96, H 192)",
                file=name,
            )


def load_pretrained(
    model: nn.Module, source: str | Path | Mapping[str, Any], *, require: Sequence[str] = ("swinViT",)
) -> LoadReport:
    """Load every tensor of ``source`` that fits ``model`` (same name and shape); keep the rest fresh.

    Works for :class:`~voco_backend.networks.SwinEncoder` and full SwinUNETR-v2 targets alike.

    Args:
        model: the target network, modified in place.
        source: a checkpoint file or an already loaded checkpoint object.
        require: module prefixes of which at least one parameter must load (default: the Swin encoder).

    Raises:
        UsageError: ``model`` is a SwinUNETR v1 (``use_v2=False``).
        DataError: the checkpoint is unreadable, is a v1 encoder, or no (required) parameter fits ``model``.
    """
    name = str(source) if isinstance(source, (str, Path)) else "<state dict>"
    state = read_checkpoint(source) if isinstance(source, (str, Path)) else normalize_state(source, name)
    target = model.state_dict()
    target_is_swin = any(k.startswith("swinViT.") for k in target)
    if target_is_swin and not any(k.startswith(V2_MARKER) for k in target):
        raise UsageError(
            "the target network is a SwinUNETR v1; VoCo weights need SwinUNETR-v2: build it with use_v2=True", file=name
        )
    if (
        target_is_swin
        and any(k.startswith("swinViT.") for k in state)
        and not any(k.startswith(V2_MARKER) for k in state)
    ):
        raise DataError(
            "is a SwinUNETR v1 checkpoint (no swinViT.layers1c-4c residual blocks); in a v2 network "
            "its stages would sit behind fresh random blocks: use VoCo (v2) weights",
            file=name,
        )
    _check_feature_size(state, target, name)
    loaded, missing, mismatch = [], [], []
    for key, tensor in target.items():
        if key not in state:
            missing.append(key)
        elif state[key].shape != tensor.shape:
            mismatch.append(key)
        else:
            loaded.append(key)
    parameters = {k for k, _ in model.named_parameters()}
    loaded_parameters = [k for k in loaded if k in parameters]
    if not loaded_parameters:
        example = next(iter(state))
        raise DataError(f"no weight fits the model: checkpoint keys look like '{example}'", file=name)
    if require and not any(under(k, require) for k in loaded_parameters):
        raise DataError(f"none of the {', '.join(require)} weights fit the model", file=name)
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    unexpected = [k for k in state if k not in target]
    return LoadReport(loaded=loaded, missing=missing, shape_mismatch=mismatch, unexpected=unexpected, source=name)


def encoder_state(model_or_state: nn.Module | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The 145 encoder tensors (``swinViT.*``, ``encoder{1,2,3,4,10}.*``), contiguous on the CPU.

    Raises:
        DataError: the model or state dict does not hold the VoCo encoder layout.
    """
    if isinstance(model_or_state, nn.Module):
        state = model_or_state.state_dict()
    else:
        state = normalize_state(model_or_state, "<state dict>")
    encoder = {
        k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in state.items() if in_encoder(k)
    }
    if len(encoder) != ENCODER_KEY_COUNT or not any(k.startswith(V2_MARKER) for k in encoder):
        raise DataError(
            f"expected the {ENCODER_KEY_COUNT}-tensor SwinUNETR-v2 encoder layout, found {len(encoder)} encoder tensors"
        )
    return encoder


def export_encoder(model_or_state: nn.Module | Mapping[str, Any], path: str | Path) -> Path:
    """Write the flat 145-key encoder state dict (the official VoCo layout) to ``path`` atomically."""
    path = Path(path)
    save_torch_atomic(encoder_state(model_or_state), path)
    return path
