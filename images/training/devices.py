"""Where XGBoost trains: on the instance's GPU when it has one, unless the job says otherwise.

SageMaker's training toolkit sets ``SM_NUM_GPUS``; our image does not run the toolkit, so
without it the entry point asks ``nvidia-smi -L`` (present wherever the NVIDIA container
runtime mounted a GPU). A ``device`` hyperparameter always wins. A GPU with an XGBoost built
without CUDA (the CPU image on a GPU instance) trains on the CPU and says why.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from tasks.training import container

#: How long ``nvidia-smi -L`` may take before the instance counts as having no GPU.
NVIDIA_SMI_TIMEOUT_S = 15


@dataclass(frozen=True)
class DeviceChoice:
    """The ``device`` parameter to pass to XGBoost (None: leave XGBoost's default, the CPU) and why."""

    device: str | None
    reason: str

    @property
    def name(self) -> str:
        return self.device or "cpu"


def nvidia_smi_gpus() -> int:
    """How many GPUs ``nvidia-smi -L`` lists (0 when it is absent, fails or hangs)."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return 0
    try:
        listed = subprocess.run(
            [binary, "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return 0
    if listed.returncode != 0:
        return 0
    return sum(1 for line in listed.stdout.splitlines() if line.startswith("GPU "))


def count_gpus(env: Mapping[str, str], list_gpus: Callable[[], int] | None = None) -> tuple[int, str]:
    """``(count, source)``: ``SM_NUM_GPUS`` when it holds a number, else what ``list_gpus`` (nvidia-smi) finds."""
    value = (env.get(container.SM_NUM_GPUS) or "").strip()
    if value.isdigit():
        return int(value), f"{container.SM_NUM_GPUS}={value}"
    count = (list_gpus or nvidia_smi_gpus)()
    return count, f"nvidia-smi lists {count} GPU{'s' if count != 1 else ''}"


def xgboost_has_cuda() -> bool:
    """Whether the installed XGBoost was built with CUDA (``xgboost``, not ``xgboost-cpu``)."""
    import xgboost

    return bool(xgboost.build_info().get("USE_CUDA"))


def choose_device(
    params: Mapping[str, Any],
    env: Mapping[str, str],
    *,
    list_gpus: Callable[[], int] | None = None,
    has_cuda: Callable[[], bool] | None = None,
) -> DeviceChoice:
    """The device for this instance: the job's ``device`` if set, else ``cuda`` when a GPU is there to use.

    ``list_gpus`` and ``has_cuda`` default to asking nvidia-smi and the installed XGBoost.
    """
    if "device" in params:
        return DeviceChoice(str(params["device"]), "set by the hyperparameters")
    count, source = count_gpus(env, list_gpus)
    if count <= 0:
        return DeviceChoice(None, f"no GPU: {source}")
    if not (has_cuda or xgboost_has_cuda)():
        return DeviceChoice(
            None,
            f"{source}, but this XGBoost has no CUDA support; use the GPU image (images/training/Dockerfile.gpu)",
        )
    return DeviceChoice("cuda", source)
