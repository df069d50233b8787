"""``none``: no hand-off (SFT rows; RL adapter rows, as prime-rl's published bench rows)."""

from __future__ import annotations

from core import hookimpl
from core.contracts import WeightSync


class NoSync(WeightSync):
    name = label = "none"
    hands_off = False

    def check(self, ctx):
        return None

    def setup(self, model, ctx):
        pass

    def before_update(self):
        pass

    def after_step(self, step: int):
        pass

    def finish(self):
        pass

    def describe(self) -> dict:
        return {"method": "none", "bytes_per_step": 0}


@hookimpl
def stepbench_register_weight_sync(register):
    register("none", lambda options, ctx: NoSync(), doc="no weight hand-off (SFT; RL timed without it)")
