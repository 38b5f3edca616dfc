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


def test_switching_never_drifts_and_matches_a_fresh_merge(images):
    """Each switch starts from the stashed original rows: after any chain of switches (degrees and
    scales), the weights equal a fresh merge at the last move, a switch back to the source is the
    original bit for bit, and remove() restores every weight exactly."""
    model = tocom.patch(make_vit(), "tome")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plugin = random_plugin(model)
    comp = tocom.compensate(model, plugin, 4, 4, scale=0.1)
    for i in range(60):                                   # a server switching back and forth under load
        comp.switch((0, 16, 4, 9, 1)[i % 5], scale=(0.1, 0.3)[i % 2])
    comp.switch(4)                                        # back to the source: the copy alone
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    comp.switch(9)
    comp.switch(13, scale=0.2)                            # from another move: stash copy + update
    chained = [b.attn.qkv.weight.detach().clone() for b in model.blocks]
    with torch.no_grad():
        chained_logits = model(images)
    comp.remove()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    with tocom.compensate(model, plugin, 4, 13, scale=0.2):
        fresh = [b.attn.qkv.weight.detach().clone() for b in model.blocks]
        with torch.no_grad():
            fresh_logits = model(images)
    by_delta = plugin.delta(4, 13, 0.2)                   # and both equal W + s sum B A (Eq. 6/7)
    d = plugin.dim
    for layer, (a, b) in enumerate(zip(chained, fresh)):
        assert torch.allclose(a, b, atol=1e-6)
        w0 = before[f"blocks.{layer}.attn.qkv.weight"]
        assert torch.allclose(a[:d], w0[:d] + by_delta["q"][layer].detach(), atol=1e-6)
        assert torch.allclose(a[2 * d:], w0[2 * d:] + by_delta["v"][layer].detach(), atol=1e-6)
        assert torch.equal(a[d:2 * d], w0[d:2 * d])       # W_k untouched
    assert torch.allclose(chained_logits, fresh_logits, atol=1e-5)


def test_merged_switch_uses_low_rank_factors_and_stashes_only_q_and_v_rows(monkeypatch):
    """The stash is made once and holds W_q and W_v (2 D x D per block, not the 3 D x D of qkv);
    a switch never multiplies out a D x D delta (one rank-k addmm per projection per layer)."""
    model = tocom.patch(make_vit(), "tome")
    plugin = random_plugin(model)
    d, depth = plugin.dim, plugin.depth
    monkeypatch.setattr(plugin, "delta", lambda *a, **k: pytest.fail("switch formed a D x D delta"))
    comp = tocom.compensate(model, plugin, 0, 8)
    stash = comp._stash
    assert len(stash) == depth and all(set(s) == {"q", "v"} for s in stash)
    assert sum(t.numel() for s in stash for t in s.values()) == depth * 2 * d * d
    qkv = model.blocks[0].attn.qkv.weight
    assert qkv.shape == (3 * d, d)
    ptrs = [t.data_ptr() for s in stash for t in s.values()]
    for target in (16, 0, 3):
        comp.switch(target)
    assert comp._stash is stash and [t.data_ptr() for s in stash for t in s.values()] == ptrs
    comp.remove()
    assert tocom.compensate(model, plugin, 0, 8, merge=False)._stash is None    # run-time mode needs none


def test_merged_switch_follows_in_place_plugin_updates_and_any_group_pattern(images):
    """The concatenated factors are rebuilt when the plugin changes in place; a move whose groups are
    not one contiguous run with one coefficient (none of the variants makes one) still merges right."""
    model = tocom.patch(make_vit(), "tome")
    plugin = random_plugin(model)
    comp = tocom.compensate(model, plugin, 0, 6)
    with torch.no_grad():
        plugin.B["v"].mul_(-2.0)
    comp.switch(5)
    after = model.blocks[3].attn.qkv.weight.detach().clone()
    comp.remove()
    with tocom.compensate(model, plugin, 0, 5):
        assert torch.allclose(model.blocks[3].attn.qkv.weight, after, atol=1e-6)
    plugin.coefficients = lambda m, n: {} if m == n else {1: 0.5, 4: -1.0, 7: 2.0}
    with torch.no_grad():
        with tocom.compensate(model, plugin, 0, 8, merge=False):
            run_time = model(images)
        with tocom.compensate(model, plugin, 0, 8, merge=True):
            merged = model(images)
    assert torch.allclose(run_time, merged, atol=1e-5)


def test_run_time_mode_switches_too(images):
    """Hooks follow switch() (no stacking of hooks) and stay equal to the merged function."""
    model = tocom.patch(make_vit(), "evit")
    plugin = random_plugin(model)
    with torch.no_grad():
        with tocom.compensate(model, plugin, 2, 2, merge=False) as comp:
            for target in (12, 0, 7):
                comp.switch(target, scale=0.2)
            assert len(comp._hooks) == len(model.blocks)
            run_time = model(images)
        with tocom.compensate(model, plugin, 2, 7, scale=0.2):
            merged = model(images)
    assert torch.allclose(run_time, merged, atol=1e-5)
    assert all(not b.attn.qkv._forward_hooks for b in model.blocks)


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


def test_header_reads_without_torch(tmp_path):
    """io.read_safetensors_header (what the aggregation reads plugin and model headers with) gives the header
    and every tensor's shape without loading a tensor or importing torch."""
    import subprocess
    import sys
    from pathlib import Path

    plugin = random_plugin(make_vit(), rank=3, r_max=8)
    path = tmp_path / "plugin.safetensors"
    plugin.save(path, extra={"epochs": 1})
    code = ("import sys; from tocom.io import header_json, read_safetensors_header; "
            f"meta, shapes = read_safetensors_header({str(path)!r}); "
            "print(meta['variant'], meta['rank'], header_json('p', meta, 'extra', 'extra', 'fix'), shapes['B.v'], "
            "'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.split("\n")[0] == f"tocom 3 {{'epochs': 1}} {tuple(plugin.B['v'].shape)} False"


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


def test_degree_step_groups_bridge_multiples_of_the_step(tmp_path):
    """r_step = k: group i bridges k*i -> k*(i+1); only multiples of k are degrees; saved in the header."""
    model = tocom.patch(make_vit(), "tome")
    plugin = ToCom.for_model(model, r_max=16, rank=2, r_step=4)
    assert plugin.num_groups == 4 and plugin.r_step == 4
    assert plugin.coefficients(0, 8) == {0: 1.0, 1: 1.0}
    assert plugin.coefficients(16, 4) == {1: -1.0, 2: -1.0, 3: -1.0}
    assert plugin.coefficients(8, 8) == {}
    with pytest.raises(tocom.TocomError, match="not a multiple of this plugin's degree step 4"):
        plugin.coefficients(0, 6)
    with pytest.raises(tocom.TocomError, match="r_step >= 1 dividing r_max"):
        ToCom.for_model(model, r_max=10, r_step=4)
    assert ToCom(depth=2, dim=8, r_max=16, r_step=4, variant="shared").coefficients(4, 12) == {0: 2.0}
    assert ToCom(depth=2, dim=8, r_max=16, r_step=4, variant="no_inversion").coefficients(12, 4) == {5: 1.0, 6: 1.0}
    # the same groups as a step-1 plugin on the rescaled ladder r / k
    unit = ToCom.for_model(model, r_max=4, rank=2)
    unit.load_state_dict(plugin.state_dict())
    for m, n in ((0, 16), (12, 4), (8, 0)):
        a, b = plugin.delta(m, n, 0.1), unit.delta(m // 4, n // 4, 0.1)
        assert all(torch.equal(a[p], b[p]) for p in a)
    path = tmp_path / "step.safetensors"
    plugin.save(path)
    back = ToCom.load(path)
    assert back.r_step == 4 and back.metadata()["r_step"] == "4" and back.metadata() == plugin.metadata()
    assert ToCom.for_model(model).metadata()["r_step"] == "1"      # the default leaves every plugin as it was
