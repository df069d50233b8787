"""``peer=none`` (the default): no peer; stepbench measures the row itself."""

from __future__ import annotations

from core import hookimpl


class Stepbench:
    """``peer=none``: no peer; stepbench measures the row itself."""

    name, label, runs_stepbench = "none", "native", True
    measured_options = ()

    def why_not(self, spec):
        return None

    def command(self, spec, workdir):  # never called (runs_stepbench)
        raise NotImplementedError

    def result(self, workdir, log):  # never called (runs_stepbench)
        raise NotImplementedError


@hookimpl
def stepbench_register_peers(register):
    register("none", lambda options, ctx: Stepbench(), doc="no peer: stepbench measures the row (the default)")
