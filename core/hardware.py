"""Hardware profiles: peak bf16 FLOPs for MFU, memory, measured ceilings; detection by GPU name."""

from __future__ import annotations

from pathlib import Path

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


def profile_files() -> dict[str, Path]:
    """The hardware group's files (stepbench's conf/hardware and the installed plugin packages', the
    built-in one where both have a name), by name, ``auto`` included."""
    from core.paths import plugin_conf_dirs

    return {p.stem: p for d in (*plugin_conf_dirs(), conf_dir()) for p in sorted((d / "hardware").glob("*.yaml"))}


def profiles() -> dict[str, dict]:
    """Every named hardware profile (:func:`profile_files`), by file name; ``auto`` is a choice, not a
    profile."""
    files = profile_files()
    return {n: OmegaConf.to_container(OmegaConf.load(p), resolve=True) for n, p in sorted(files.items()) if n != "auto"}


def capability(hw: dict) -> tuple[int, int] | None:
    """A profile's CUDA compute capability (``capability: "9.0"`` -> (9, 0)); None where it has none
    (the CPU's). ``ValueError`` with one line for a value that is not MAJOR.MINOR."""
    v = hw.get("capability")
    if v is None:
        return None
    parts = str(v).strip().split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"hardware.capability={v} is not a CUDA compute capability: type MAJOR.MINOR, e.g. "
                         "hardware.capability=9.0")
    return int(parts[0]), int(parts[1])


def resolve(hw_cfg: dict, gpu_name: str | None) -> dict:
    """The hardware profile to use: the selected one, or the detected one for ``auto``."""
    hw = dict(hw_cfg)
    if hw.get("name") == "auto":
        hw = load(profile_for(gpu_name))
    return hw
