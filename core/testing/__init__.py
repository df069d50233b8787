"""Conformance checks: does a plugin do what its kind's contract (:mod:`core.contracts`) says?

A plugin's own tests call these; they need no pytest::

    from core.testing import check_attention

    def test_my_backend():
        check_attention(MyBackend())

Each ``check_*`` builds what it needs (random inputs, a tiny model of :data:`TINY`'s shapes, on the
CPU unless ``device`` says otherwise), raises ``AssertionError`` with one message that names the
plugin and what is wrong, and returns a small dict of what it measured. Tiny models are built with
:func:`core.trainer.build` (the trainer's own composition order) and bound to :class:`DocumentSDPA`
unless an ``attention`` backend is given; where FSDP2 must wrap the model (an adapter whose
weights FSDP2 holds) a one-process group is created first (:func:`core.trainer.init_distributed`).
"""

from core.testing.checks import (check_ac, check_adapter, check_attention, check_kernels, check_model_family,
                                 check_peer, check_sync)
from core.testing.options import check_options_roundtrip, load_options
from core.testing.reference import (AC_TOL, ATTENTION_CASES, ATTENTION_TOL, TINY, AttentionCase,  # noqa: F401 (_KeepAll, _TrainAll: the kit's own tests)
                                    DocumentSDPA, _KeepAll, _TrainAll, reference_attention)

__all__ = ["check_ac", "check_adapter", "check_attention", "check_kernels", "check_model_family", "check_peer",
           "check_sync",
           "check_options_roundtrip", "load_options", "AC_TOL", "ATTENTION_CASES", "ATTENTION_TOL", "TINY",
           "AttentionCase", "DocumentSDPA", "reference_attention"]
