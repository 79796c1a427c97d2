"""Every random generator training uses, captured and put back: what makes a resumed run
draw the same dropout masks and shuffles as an uninterrupted one."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch


def set_seed(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (simpletransformers' manual_seed)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def capture_rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    """Every random generator training uses: (JSON-able part, tensors)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    plain = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{index}"] = state
    return plain, tensors


def restore_rng_state(plain: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Put back what ``capture_rng_state`` captured (CUDA states only where the GPUs match)."""
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def rank_rng_restorer(tensors: dict[str, torch.Tensor], rank: int) -> Callable[[], None] | None:
    """For a torchrun rank > 0: a function that puts back its own generators as
    ``distributed.gather_rng_states`` saved them; None if the checkpoint has none for it
    (written by an older version or with fewer processes)."""
    cpu, cuda = tensors.get(f"rank{rank}_cpu"), tensors.get(f"rank{rank}_cuda")
    if cpu is None:
        return None

    def restore() -> None:
        torch.set_rng_state(cpu)
        if cuda is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(cuda)  # the current device: this rank's GPU

    return restore
