"""The package's stepbench plugins (entry point ``extras``), one of every kind.

``+ac=every_other`` (:mod:`.every_other`), ``adapter=ia3`` (:mod:`.ia3`), ``+sync=checksum``
(:mod:`.checksum`) and ``model=tinyllama`` (:mod:`.tinyllama`). The factories import their modules
when called, so registering the plugins costs nothing; each checks its options (``ValueError``
with one line) and allocates nothing.
"""

from __future__ import annotations

from core import hookimpl


@hookimpl
def stepbench_register_checkpointing(register):
    def every_other(options, ctx):
        from stepbench_extras.every_other import EveryOther

        return EveryOther(options.get("mode", "full"), options.get("inside", True))

    register("every_other", every_other, doc="checkpoint every other block (blocks 0, 2, ...); the others keep "
                                             "their activations (example plugin)")


@hookimpl
def stepbench_register_adapters(register):
    def ia3(options, ctx):
        from stepbench_extras.ia3 import DEFAULT_FEEDFORWARD, DEFAULT_TARGETS, IA3

        return IA3(options.get("targets", DEFAULT_TARGETS), options.get("feedforward", DEFAULT_FEEDFORWARD))

    register("ia3", ia3, doc="peft's IA3: learned scaling vectors on k/v and down_proj, base frozen in bf16 "
                             "(example plugin)")


@hookimpl
def stepbench_register_weight_sync(register):
    def checksum(options, ctx):
        from stepbench_extras.checksum import Checksum

        return Checksum(options.get("algorithm", "sha256"), options.get("gather_mib", 128))

    register("checksum", checksum, doc="gather the handed-off bf16 weights to the host and hash them every step "
                                       "(example plugin)")


@hookimpl
def stepbench_register_models(register):
    from stepbench_extras.tinyllama import FAMILY

    register(FAMILY.name, FAMILY, doc=FAMILY.doc)
