"""Every full-size flavour has its published config's hyper-parameters; tiny flavours share the
architecture switches of the family they stand for."""

import pytest

from plugins.models.native import FAMILIES
from tests.published_configs import PUBLISHED


@pytest.mark.parametrize("key", list(PUBLISHED), ids=lambda k: f"{k[0]}-{k[1]}")
def test_flavour_matches_published_config(key):
    family, flavour = key
    args = FAMILIES[family].flavours[flavour]
    wrong = {f: (getattr(args, f), v) for f, v in PUBLISHED[key].items() if getattr(args, f) != v}
    assert not wrong, f"{family} {flavour}: (ours, published) {wrong}"


def test_every_full_size_flavour_is_checked():
    full = {(f, n) for f, fam in FAMILIES.items() for n in fam.flavours if n != "tiny"}
    assert full == set(PUBLISHED)


@pytest.mark.parametrize("family", ["glm4_moe", "qwen3_moe", "qwen3"])
def test_tiny_flavour_keeps_the_family_switches(family):
    fams = FAMILIES[family].flavours
    big = next(a for n, a in fams.items() if n != "tiny")
    tiny = fams["tiny"]
    for f in ("qk_norm", "attn_bias", "norm_eps", "router", "partial_rotary", "tied_embeddings"):
        assert getattr(tiny, f) == getattr(big, f), f
