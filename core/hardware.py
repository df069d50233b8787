"""Hardware profiles: peak bf16 FLOPs for MFU, memory, measured ceilings; detection by GPU name."""

from __future__ import annotations

from omegaconf import OmegaConf

from core.options import conf_dir

CONF = conf_dir() / "hardware"

#: substrings of torch.cuda.get_device_name() -> profile (first match wins)
GPU_NAMES = [("H200", "h200"), ("H100", "h100"), ("B200", "b200"), ("A6000", "a6000")]


def profile_for(gpu_name: str | None) -> str:
    """The profile name for a GPU name ('cpu' without a GPU)."""
    if gpu_name is None:
        return "cpu"
    for key, prof in GPU_NAMES:
        if key in gpu_name:
            return prof
    raise ValueError(
        f"no hardware profile for GPU '{gpu_name}': pass one of "
        f"{', '.join(p for _, p in GPU_NAMES)} as hardware=<name>, or add conf/hardware/<name>.yaml"
    )


def load(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"), resolve=True)


def resolve(hw_cfg: dict, gpu_name: str | None) -> dict:
    """The hardware profile to use: the selected one, or the detected one for ``auto``."""
    hw = dict(hw_cfg)
    if hw.get("name") == "auto":
        hw = load(profile_for(gpu_name))
    return hw
