"""The receiver of ``+sync=nccl``: joins the trainer's sync group and takes each step's broadcast
into buffers of its own, as an inference worker would; with ``verify`` it answers a sha256 of
what it received. Started by the ``nccl`` sync plugin; ends when the trainer sends STOP."""

from __future__ import annotations

import argparse
import json

import torch

from plugins.sync.nccl import STOP, broadcast, make_group


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--backend", required=True)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    store, pg = make_group(a.backend, "127.0.0.1", a.port, 1)
    meta = json.loads(store.get("meta").decode())
    shapes, groups = [tuple(s) for s in meta["shapes"]], meta["groups"]
    flats = [torch.empty(sum(torch.Size(shapes[i]).numel() for i in g), dtype=torch.bfloat16, device=device)
             for g in groups]
    control = torch.empty(2, dtype=torch.int64, device=device)
    while True:
        broadcast(pg, control).wait()
        code, step = control.tolist()
        if code == STOP:
            break
        for f in flats:
            broadcast(pg, f).wait()
        if meta["verify"]:
            from core.sync import digest

            store.set(f"digest/{step}", digest([f.cpu() for f in flats]))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the trainer says the one line
        raise SystemExit(130) from None
