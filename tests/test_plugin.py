"""The ToCom plugin: arithmetic (Eq. 5-7), the two ways of applying it, persistence."""
import pytest
import torch

import tocom
from tocom.plugin import ToCom
from conftest import make_vit


def random_plugin(model, variant="tocom", rank=2, r_max=16, seed=0):
    plugin = ToCom.for_model(model, r_max=r_max, rank=rank, variant=variant)
    torch.manual_seed(seed)
    with torch.no_grad():       # a trained plugin has B != 0; a fresh one would be the identity
        for b in plugin.B.values():
            b.normal_(0, 0.2)
    return plugin


def test_parameter_count_matches_the_paper():
    """Table 7: h = 2 on DeiT-B (width 768, depth 12) is 1.18 M parameters."""
    p = ToCom(depth=12, dim=768, r_max=16, rank=2)
    assert sum(t.numel() for t in p.parameters()) == 16 * 12 * 2 * 2 * 768 * 2 == 1_179_648
    assert sum(t.numel() for t in ToCom(12, 768, 16, rank=8).parameters()) == 4 * 1_179_648


def test_adjacent_groups_accumulate_and_invert():
    p = random_plugin(make_vit())
    d = lambda m, n: p.delta(m, n, 0.1)
    for proj in ("q", "v"):
        up = d(0, 16)[proj]
        assert torch.allclose(up, d(0, 5)[proj] + d(5, 12)[proj] + d(12, 16)[proj], atol=1e-6)
        assert torch.equal(d(16, 0)[proj], -up)                     # Eq. 7: subtract going down
        assert torch.count_nonzero(d(7, 7)[proj]) == 0
        # Eq. 6 by hand for one block: s * sum_{i=m}^{n-1} B_i A_i
        by_hand = 0.1 * sum(p.B[proj][i, 3] @ p.A[proj][i, 3] for i in range(2, 6))
        assert torch.allclose(d(2, 6)[proj][3], by_hand, atol=1e-6)


def test_variants_use_the_groups_the_ablation_describes():
    model = make_vit()
    shared = random_plugin(model, "shared")
    assert shared.num_groups == 1
    assert torch.allclose(shared.delta(3, 7, 0.1)["q"], 4 * shared.delta(0, 1, 0.1)["q"], atol=1e-6)
    noinv = random_plugin(model, "no_inversion")
    assert noinv.num_groups == 32
    down, up = noinv.delta(8, 4, 0.1)["v"], noinv.delta(4, 8, 0.1)["v"]
    by_hand = 0.1 * sum(noinv.B["v"][16 + i] @ noinv.A["v"][16 + i] for i in range(4, 8))
    assert torch.allclose(down, by_hand, atol=1e-6)
    assert not torch.allclose(down, -up, atol=1e-3)                # separate groups, not an inverse


@pytest.mark.parametrize("method", tocom.METHODS)
@pytest.mark.parametrize("source,target", [(0, 16), (16, 0), (4, 12)])
def test_run_time_and_merged_give_the_same_logits(method, source, target, images):
    model = tocom.patch(make_vit(), method)
    plugin = random_plugin(model)
    with torch.no_grad():
        with tocom.compensate(model, plugin, source, target, scale=0.1, merge=False):
            run_time = model(images)
            assert model.r == target
        with tocom.compensate(model, plugin, source, target, scale=0.1, merge=True):
            merged = model(images)
        tocom.set_r(model, target)
        plain = model(images)
    assert torch.allclose(run_time, merged, atol=1e-5)
    assert not torch.allclose(plain, merged, atol=1e-3)        # the plugin changed the function


def test_merge_then_restore_gives_the_exact_original_weights(images):
    model = tocom.patch(make_vit(), "tome")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plugin = random_plugin(model)
    comp = tocom.compensate(model, plugin, 0, 16, scale=0.15)
    assert not torch.equal(model.blocks[0].attn.qkv.weight, before["blocks.0.attn.qkv.weight"])
    k = model.blocks[0].attn.qkv.weight[48:96]
    assert torch.equal(k, before["blocks.0.attn.qkv.weight"][48:96])  # W_k is never touched
    for target in (2, 12, 6, 0, 16):           # real-time switching, as a server under load would
        comp.switch(target)
    comp.remove()
    assert model.r == 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_m_to_n_then_n_to_m_is_the_identity():
    model = tocom.patch(make_vit(), "tome")
    plugin = random_plugin(model)
    w0 = model.blocks[5].attn.qkv.weight.detach().clone()
    with torch.no_grad():
        outer = tocom.compensate(model, plugin, 3, 11, scale=0.1, set_degree=False)
        inner = tocom.compensate(model, plugin, 11, 3, scale=0.1, set_degree=False)
        assert torch.allclose(model.blocks[5].attn.qkv.weight, w0, atol=1e-6)
        inner.remove()
        outer.remove()
    assert torch.equal(model.blocks[5].attn.qkv.weight, w0)


def test_run_time_mode_trains_only_the_plugin(images):
    model = tocom.patch(make_vit(), "tome")
    for p in model.parameters():
        p.requires_grad_(False)
    plugin = random_plugin(model)
    with tocom.compensate(model, plugin, 0, 8, scale=0.1, merge=False):
        model(images).square().mean().backward()
    grads = {k: v.grad for k, v in plugin.B.items()}
    assert grads["q"][:8].abs().sum() > 0 and grads["v"][:8].abs().sum() > 0
    assert grads["q"][8:].abs().sum() == 0       # groups outside 0 -> 8 get no gradient


def test_save_load_round_trip(tmp_path, images):
    model = tocom.patch(make_vit(), "evit")
    plugin = random_plugin(model, rank=3, r_max=8)
    path = tmp_path / "plugin.safetensors"
    plugin.save(path, extra={"epochs": 1})
    loaded = ToCom.load(path)
    assert (loaded.rank, loaded.r_max, loaded.variant, loaded.method) == (3, 8, "tocom", "evit")
    assert loaded.metadata() == plugin.metadata()
    for key in ("A", "B"):
        for proj in ("q", "v"):
            assert torch.equal(getattr(loaded, key)[proj], getattr(plugin, key)[proj])
    with torch.no_grad(), tocom.compensate(model, loaded, 0, 8) as _:
        a = model(images)
    with torch.no_grad(), tocom.compensate(model, plugin, 0, 8) as _:
        b = model(images)
    assert torch.equal(a, b)


def test_a_plugin_that_does_not_fit_says_what_differs(tmp_path):
    small = tocom.patch(make_vit(), "tome")
    wide = tocom.patch(make_vit(embed_dim=96), "tome")
    path = tmp_path / "p.safetensors"
    ToCom.for_model(small).save(path)
    plugin = ToCom.load(path)
    with pytest.raises(tocom.TocomError, match="width 48 vs model 96") as err:
        tocom.compensate(wide, plugin, 0, 16)
    assert "\n" not in str(err.value)
    tocom.patch(small, "evit")
    with pytest.raises(tocom.TocomError, match="method tome vs model evit"):
        tocom.compensate(small, plugin, 0, 16)
    tocom.patch(small, "tome")
    with pytest.raises(tocom.TocomError, match="outside this plugin's degrees 0..16"):
        tocom.compensate(small, plugin, 0, 17)
    (tmp_path / "junk.safetensors").write_bytes(b"not a plugin")
    with pytest.raises(tocom.TocomError, match="not a readable safetensors"):
        ToCom.load(tmp_path / "junk.safetensors")
    with pytest.raises(tocom.TocomError, match="no ToCom plugin at"):
        ToCom.load(tmp_path / "missing.safetensors")
