"""``auto`` (the default): the per-step hand-off of prime-rl's published rows.

RL with full fine-tuning: ``host`` (the bf16 weights gathered into pinned host memory every step);
RL with an adapter, and SFT: ``none`` (prime-rl's bench mode handed nothing off for LoRA). The
method is chosen by :meth:`Auto.check`, which the core calls before anything is built, and the row
is labelled with the chosen method's name.
"""

from __future__ import annotations

import os

from core import hookimpl
from core.contracts import WeightSync


class Auto(WeightSync):
    name = "auto"

    def __init__(self, ctx):
        self.ctx, self.chosen = ctx, None

    def choose(self, sync_ctx):
        from core.plugins import registry

        name = "host" if (sync_ctx.task == "rl" and not sync_ctx.adapter_only) else "none"
        reg = registry()
        if name not in reg.names("sync"):  # blocked (STEPBENCH_BLOCK_PLUGINS): another method would measure other work
            from core.plugins import BLOCK_ENV

            others = [n for n in reg.names("sync") if n not in ("auto", name)]
            instead = " or ".join(f"+sync={n}" for n in (["none"] if "none" in others else others[:1])) \
                or "another method (python -m core.bench --list)"
            raise ValueError(f"sync=auto hands this row's weights off with {name}, which is not registered here "
                             f"({BLOCK_ENV}={os.environ.get(BLOCK_ENV, '')} blocks it): pick the method, e.g. {instead} "
                             f"(registered: {', '.join(others) or 'none'}), or unblock {name}")
        self.chosen = reg.get("sync", name).factory({"name": name}, self.ctx)
        return self.chosen

    @property
    def label(self) -> str:
        return self.chosen.label if self.chosen is not None else "auto"

    @property
    def hands_off(self) -> bool:
        return self.chosen.hands_off if self.chosen is not None else True

    def check(self, ctx):
        return self.choose(ctx).check(ctx)

    def setup(self, model, ctx):
        (self.chosen or self.choose(ctx)).setup(model, ctx)

    def before_update(self):
        self.chosen.before_update()

    def after_step(self, step: int):
        self.chosen.after_step(step)

    def finish(self):
        if self.chosen is not None:
            self.chosen.finish()

    def describe(self) -> dict:
        return self.chosen.describe() if self.chosen is not None else {"method": "auto", "bytes_per_step": 0}


@hookimpl
def stepbench_register_weight_sync(register):
    register("auto", lambda options, ctx: Auto(ctx),
             doc="RL full fine-tuning: host; RL with an adapter and SFT: none (the published rows' per-step work)")
