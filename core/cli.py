"""``stepbench``: the console script a wheel install puts on the PATH. One command per tool, each
the same as its ``python -m`` form (same arguments, same output, same exit status):

    stepbench bench +attn=fa3 +ac=offload model=qwen3_4b    # = python -m core.bench ...
    stepbench report --results rows.jsonl --out report.md    # = python -m core.report ...
    stepbench predict model=qwen3_4b hardware=h200 gpus=8    # = python -m core.predict ...
    stepbench fa3-build --clone                              # = python -m core.fa3_build ...

A command's module is imported only when it runs, so ``stepbench --help`` does not import torch.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

#: command -> (module, one line for --help)
COMMANDS = {
    "bench": ("core.bench", "one benchmark row, or a sweep of rows with -m"),
    "report": ("core.report", "rows -> a BENCHMARKS.md (prime-rl's published format) and PNG plots"),
    "predict": ("core.predict", "a predicted row for hardware and GPU counts that cannot run here"),
    "fa3-build": ("core.fa3_build", "build and install FlashAttention-3 with only what stepbench needs"),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse whose refusals are one line on stderr (no usage block) with an example of what to
    type, and exit status 2, as every other bad input of the tools."""

    example = ""
    short = ""  #: the tool's name at the start of its one-line errors (report, predict, ...)

    def parse_args(self, args=None, namespace=None):
        """As argparse, but an option given twice is refused (argparse would keep the last one)."""
        argv = sys.argv[1:] if args is None else list(args)
        known = {s for a in self._actions for s in a.option_strings}
        seen: dict = {}
        for tok in argv:
            flag = tok.split("=", 1)[0]
            if flag in known and flag not in ("-h", "--help"):
                if flag in seen:
                    more = " (it takes several values: " + flag + " A B)" if self._takes_many(flag) else ""
                    self.error(f"{flag} is given more than once: give it once{more}")
                seen[flag] = tok
        return super().parse_args(argv, namespace)

    def _takes_many(self, flag: str) -> bool:
        return any(flag in a.option_strings and a.nargs in ("+", "*") for a in self._actions)

    def error(self, message: str):
        hint = f": e.g. {self.prog} {self.example}" if self.example and "e.g." not in message else ""
        self.exit(2, f"{self.short or self.prog}: {message}{hint} ({self.prog} --help shows every option)\n")


def arg_parser(module: str, description: str, example: str = "") -> OneLineParser:
    """The argument parser of ``python -m <module>`` (``stepbench <command>`` where the script runs
    it): one-line errors that end with ``example``, a command line that works."""
    argv0 = sys.argv[0] if sys.argv else ""
    prog = argv0 if argv0.startswith("stepbench ") else f"python -m {module}"
    ap = OneLineParser(prog=prog, description=description)
    ap.example = example
    ap.short = "" if prog.startswith("stepbench ") else module.rsplit(".", 1)[-1]  # stepbench report: / report:
    return ap


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: stepbench <command> [arguments]", "",
             "Benchmark LLM training steps (RL and SFT). Each command is its python -m form:", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {text} (python -m {mod})" for name, (mod, text) in COMMANDS.items()]
    lines += ["", "stepbench <command> --help shows a command's options; stepbench bench --list lists the plugins."]
    return "\n".join(lines)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stepbench")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    """Run one command. Returns its exit status; a command that is not one exits with status 2 and
    one line on stderr (as the tools' own bad input does). From the command line, a reader of
    stdout that goes away (``stepbench --help | head -1``) ends it quietly."""
    if argv is None:  # the console script (not a caller in a process of its own)
        from core.errors import quiet_broken_pipe

        return quiet_broken_pipe(_main, None)
    return _main(argv)


def _main(argv: list[str] | None) -> int:
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["help"] and len(argv) == 2 and argv[1] in COMMANDS:  # stepbench help report
        argv = [argv[1], "--help"]
    if not argv:  # no command is bad input: one line, as the tools' own
        print(f"stepbench: name a command: {', '.join(COMMANDS)} (e.g. stepbench bench; stepbench --help says what "
              "each does)", file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        if argv[1:]:
            print(f"stepbench: {argv[0]} takes nothing else (got {' '.join(argv[1:])}): type stepbench --help, or "
                  f"stepbench COMMAND --help (commands: {', '.join(COMMANDS)})", file=sys.stderr)
            return 2
        print(usage())
        return 0
    if argv[0] == "--version":
        if argv[1:]:
            print(f"stepbench: --version takes nothing else (got {' '.join(argv[1:])}): type stepbench --version",
                  file=sys.stderr)
            return 2
        print(f"stepbench {_version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        near = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"did you mean 'stepbench {near[0]}'? " if near else ""
        print(f"stepbench: unknown command '{name}': {hint}choose one of {', '.join(COMMANDS)} (stepbench --help)",
              file=sys.stderr)
        raise SystemExit(2)
    if name == "bench" and from_command_line:
        from core.errors import exit_on_ctrl_c_while_starting

        exit_on_ctrl_c_while_starting("stepbench")
    module = import_module(COMMANDS[name][0])
    saved = sys.argv
    try:
        if name == "bench":
            # core.bench reads sys.argv[1:] and hands it to Hydra: give it exactly what
            # `python -m core.bench ARGS` would (argv[0] is the module's file there too)
            sys.argv = [module.__file__, *rest]
            return module.main() or 0
        sys.argv = [f"stepbench {name}", *rest]  # argparse's usage line says `stepbench report ...`
        return module.main(rest) or 0
    except KeyboardInterrupt:
        from core.errors import ignore_further_ctrl_c, stopped

        ignore_further_ctrl_c()
        words, status = stopped()
        print(f"stepbench {name}: {words}", file=sys.stderr, flush=True)
        return status
    finally:
        sys.argv = saved


if __name__ == "__main__":
    sys.exit(main())
