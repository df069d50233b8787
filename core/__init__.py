"""stepbench core: the trainer, the plugin system and the bench entry point."""

import pluggy

__version__ = "0.1.0"

PROJECT = "stepbench"
hookimpl = pluggy.HookimplMarker(PROJECT)
hookspec = pluggy.HookspecMarker(PROJECT)

__all__ = ["hookimpl", "hookspec", "PROJECT", "__version__"]
