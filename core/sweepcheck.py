"""Resolve every row of a ``-m`` sweep before the first one runs (:func:`first_refusal`, called by
``core.bench`` in the sweep's process, which resolves each row again as it comes; ``python -m
core.sweepcheck`` reads ``{"fixed": [...], "combos": [[...], ...]}`` on stdin, and there also refuses a row
that does not compose). Each combination is
composed and checked exactly as its row will be (:func:`core.bench.contradictions`, then
:func:`core.resolve.resolve`, which allocates nothing, and the peer's check); the first one refused
for its input is the sweep's one line (status 2). A row this machine cannot run
(:class:`core.errors.NotHereError`: predicted not to fit, a backend or GPU missing) is let through:
it runs, and fails as a row beside the others (its one line on stderr, status 2). Status 0: every row resolves (or fails only for the
machine, or for a reason resolving cannot tell).
"""

from __future__ import annotations

import json
import sys


def first_refusal(fixed: list[str], combos: list[list[str]], strict: bool = False) -> str | None:
    """The one line of the first row of ``combos`` refused for its input, or None. ``strict`` (the
    command): a row that does not compose is refused too (in a sweep, it fails as a row)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from core.errors import first_line
    from core.options import conf_dir, validate

    for combo in combos:
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(str(conf_dir()), version_base="1.3"):
                cfg = compose("bench", overrides=[*fixed, *combo])
                if strict:
                    validate(cfg)
                line = refusal(cfg, [*fixed, *combo])
        except Exception as e:  # noqa: BLE001 - in a sweep not a refusal: the row itself will say what it is
            if not strict:
                continue
            line = first_line(e, with_type=False) or type(e).__name__
        finally:
            GlobalHydra.instance().clear()
        if line:
            return f"the row {' '.join(combo) or ' '.join(fixed)}: {line}"
    return None


def refusal(cfg, overrides: list[str]) -> str | None:
    """The one line a row composed as ``cfg`` (of ``overrides``) is refused with for its input, or None
    (it resolves, or only this machine cannot run it, or it fails for a reason resolving cannot tell)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from core.bench import contradictions
    from core.errors import NotHereError, UserError
    from core.resolve import resolve

    import copy

    cfg = copy.deepcopy(cfg)  # resolve() settles compile=auto in place: the row's own config stays as composed
    try:
        contradictions(OverridesParser.create().parse_overrides(overrides), cfg)
        r = resolve(cfg)
        if r.peer is not None:  # what the peer refuses (a missing peer.path, an option it ignores)
            from core import peers

            peers.check(cfg, r)
    except NotHereError:
        return None
    except UserError as e:
        return str(e)
    except Exception:  # noqa: BLE001 - not a refusal: the row itself will say what it is
        return None
    return None


def _strings(v) -> bool:
    """A list of override strings (``["seq_len=128", "+attn=sdpa"]``)."""
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def main() -> int:
    if len(sys.argv) > 1:
        print(f"stepbench: core.sweepcheck takes no arguments (got {' '.join(sys.argv[1:])}): pass the sweep as JSON "
              'on stdin, e.g. echo \'{"fixed": ["model=qwen3_tiny"], "combos": [["seq_len=128"]]}\' | python -m '
              "core.sweepcheck", file=sys.stderr, flush=True)
        return 2
    try:
        spec = json.load(sys.stdin)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        spec = None
    ok = isinstance(spec, dict) and _strings(spec.get("fixed")) and isinstance(spec.get("combos"), list) \
        and all(_strings(c) for c in spec["combos"])
    if not ok:
        print('stepbench: core.sweepcheck reads {"fixed": ["key=value", ...], "combos": [["key=value", ...], ...]} '
              "on stdin, lists of override strings (as python -m core.bench -m writes it): pass that JSON object",
              file=sys.stderr, flush=True)
        return 2
    line = first_refusal(spec["fixed"], spec["combos"] or [[]], strict=True)  # no combos: the fixed row alone
    if line:  # a refusal, like every tool's: one line on stderr
        print(f"stepbench: {line}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
