"""Token compression: each test fails if the algorithm (not just the plumbing) is wrong."""
import copy

import pytest
import torch
import timm

import tocom
from tocom.compress import bipartite_soft_matching, merge_wavg, token_schedule
from tocom.compress.idle import select_active
from tocom.compress.patch import class_attention
from tocom.compress.prune import evit_prune
from conftest import make_vit

KINDS = ["cls", "distilled", "avg", "reg", "headless"]


@pytest.mark.parametrize("method", tocom.METHODS)
@pytest.mark.parametrize("kind", KINDS)
def test_r0_is_the_unpatched_model(method, kind, images):
    ref = make_vit(kind)
    model = tocom.patch(copy.deepcopy(ref), method)
    tocom.set_r(model, 0)
    with torch.no_grad():
        assert torch.allclose(model(images), ref(images), atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", tocom.METHODS)
def test_degree_changes_at_run_time_without_repatching(method, images):
    model = tocom.patch(make_vit(), method)
    with torch.no_grad():
        base = model(images)
        model.r = 8
        compressed = model(images)
        tocom.set_r(model, 0)
        again = model(images)
    assert not torch.allclose(base, compressed, atol=1e-4)
    assert torch.equal(base, again)
    assert tocom.patch(model, method) is model and model.r == 0       # idempotent


def _token_counts(model, images):
    counts = []
    hooks = [b.register_forward_pre_hook(lambda m, a: counts.append(a[0].shape[1])) for b in model.blocks]
    with torch.no_grad():
        out = model.forward_features(images)
    for h in hooks:
        h.remove()
    return counts, out.shape[1]


def test_tome_token_counts_at_r16_on_197_tokens(images):
    model = tocom.patch(make_vit(), "tome")
    tocom.set_r(model, 16)
    counts, final = _token_counts(model, images)
    assert counts == [197, 181, 165, 149, 133, 117, 101, 85, 69, 53, 37, 21]
    assert final == 11     # the last layer is capped at half its 20 patch tokens (ToMe)
    assert tocom.flops(model, 16)["attn_tokens"] == counts


@pytest.mark.parametrize("name, tokens", [("deit_base_patch16_384", 577), ("vit_base_patch16_224.mae", 197)])
def test_paper_backbones_patch_with_the_same_code_path(name, tokens):
    model = tocom.patch(timm.create_model(name, pretrained=False, num_classes=0), "tome")
    f = tocom.flops(model, tocom.max_r(model))
    assert f["attn_tokens"][0] == tokens and f["attn_tokens"][-1] < tokens // 4


def test_deit_b_flops_match_the_papers():
    model = timm.create_model("deit_base_patch16_224", pretrained=False)
    f0, f16 = tocom.flops(model, 0), tocom.flops(model, 16)
    assert f0["gflops"] == pytest.approx(17.56, abs=0.02)       # DeiT paper: 17.6
    assert f16["gflops"] == pytest.approx(8.78, abs=0.05)       # ToMe paper: 8.8 at r = 16
    assert 1.9 < f0["gflops"] / f16["gflops"] < 2.05


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["tome", "evit"])
def test_merged_sizes_sum_to_the_original_token_count(kind, method, images):
    model = tocom.patch(make_vit(kind), method)
    tocom.set_r(model, 5)
    with torch.no_grad():
        out = model.forward_features(images)
    size = model._tocom_state.size
    assert size.shape[:2] == out.shape[:2]
    assert torch.allclose(size.sum(dim=1).squeeze(-1), torch.full((2,), 196.0 + model.num_prefix_tokens))
    assert torch.all(size[:, : model.num_prefix_tokens] == 1)     # prefix tokens are never merged


def test_the_two_most_similar_tokens_are_merged():
    torch.manual_seed(0)
    n, d = 9, 16                       # 1 class token + 8 patches: A = patches 0,2,4,6; B = 1,3,5,7
    metric = torch.linalg.qr(torch.randn(d, d))[0][:n][None]   # orthonormal rows: no similarity
    metric[0, 1 + 4] = metric[0, 1 + 7] * 2.0   # patch 4 (in A) points like patch 7 (in B)
    x = torch.randn(1, n, 5)
    size = torch.ones(1, n, 1)
    merge = bipartite_soft_matching(metric, r=1, prefix=1)
    merged, new_size = merge_wavg(merge, x, size)
    # [cls, A kept in order (0, 2, 6), B (1, 3, 5, 7)] with patch 4 averaged into patch 7
    expect = torch.cat([x[:, :1], x[:, [1, 3, 7]], x[:, [2, 4, 6]], (x[:, 5:6] + x[:, 8:9]) / 2], dim=1)
    assert torch.allclose(merged, expect)
    assert new_size.squeeze().tolist() == [1, 1, 1, 1, 1, 1, 1, 2]


def test_merging_exact_duplicates_changes_nothing(images):
    """Size-weighted merging + proportional attention make a merged pair act as the two tokens it
    replaced: merging duplicates must leave the class token's output unchanged."""
    model = tocom.patch(make_vit(), "tome")
    torch.manual_seed(3)
    half = torch.randn(1, 98, 48)
    x = torch.cat([torch.randn(1, 1, 48), half.repeat_interleave(2, dim=1)], dim=1)  # patch 2j == 2j+1
    def run(r_first):
        tocom.set_r(model, [r_first] + [0] * 11)
        model._tocom_state.reset()
        with torch.no_grad():
            return model.blocks(x)[:, 0]
    reference, merged = run(0), run(40)
    assert model._tocom_state.size.shape[1] == 197 - 40
    assert torch.allclose(reference, merged, atol=1e-5)


def test_weighted_average_pooling_matches_plain_pooling_on_duplicates():
    model = tocom.patch(make_vit("avg"), "tome")
    torch.manual_seed(4)
    x = torch.randn(1, 98, 48).repeat_interleave(2, dim=1)
    tocom.set_r(model, [30] + [0] * 11)
    model._tocom_state.reset()
    with torch.no_grad():
        merged = model.forward_head(model.norm(model.blocks(x)))
        tocom.set_r(model, 0)
        model._tocom_state.reset()
        plain = model.forward_head(model.norm(model.blocks(x)))
    assert torch.allclose(merged, plain, atol=1e-5)


def test_evit_keeps_the_most_attended_and_fuses_the_rest():
    torch.manual_seed(0)
    x = torch.randn(2, 11, 4)                      # 1 class token + 10 patches
    size = torch.ones(2, 11, 1)
    score = torch.rand(2, 11)
    out, new_size = evit_prune(x, size, score, r=3, prefix=1, has_fused=False)
    assert out.shape == (2, 1 + 7 + 1, 4)
    for b in range(2):
        order = score[b, 1:].argsort(descending=True) + 1
        kept, dropped = order[:7].sort().values, order[7:]
        assert torch.equal(out[b, 1:8], x[b, kept])
        w = score[b, dropped]
        assert torch.allclose(out[b, -1], (w[:, None] * x[b, dropped]).sum(0) / w.sum(), atol=1e-6)
        assert new_size[b, -1].item() == 3
    # the fused token absorbs the next layer's pruned tokens and is never pruned itself
    score2 = torch.rand(2, 9)
    score2[:, -1] = -1.0
    out2, size2 = evit_prune(out, new_size, score2, r=2, prefix=1, has_fused=True)
    assert out2.shape[1] == 1 + 5 + 1 and torch.all(size2[:, -1] == 5)
    assert torch.allclose(size2.sum(1), torch.full((2, 1), 11.0))


@pytest.mark.parametrize("r", [1, 4, 16])
def test_idle_tokens_pass_through_unchanged(r, images):
    model = tocom.patch(make_vit(), "idle")
    tocom.set_r(model, r)
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
    model._tocom_state.reset()
    blk = model.blocks[0]
    with torch.no_grad():
        y = blk(x)
        q, k, _ = blk.attn.heads(blk.norm1(x))
        active = select_active(class_attention(q, k, blk.attn.scale, 1), 196 - r, 1)
    assert y.shape == x.shape                       # no token is dropped
    idle = torch.ones(2, 197, dtype=torch.bool)
    idle.scatter_(1, active, False)
    assert idle.sum().item() == 2 * r
    assert torch.equal(y[idle], x[idle])
    assert not torch.allclose(y[~idle], x[~idle])
    # later layers may pick an idle token again: counts follow ToMe's schedule
    counts = token_schedule(196, [r] * 12)
    assert counts[1] == 196 - r


def test_idle_flops_follow_the_active_tokens():
    model = tocom.patch(make_vit(), "idle")
    f = tocom.flops(model, 8)
    assert f["attn_tokens"] == [1 + n for n in token_schedule(196, [8] * 12)[1:]]
    assert tocom.flops(model, 0)["gflops"] > f["gflops"]


def test_bad_input_gives_one_line_errors():
    model = make_vit()
    with pytest.raises(tocom.TocomError, match="not patched"):
        tocom.set_r(model, 4)
    tocom.patch(model, "tome")
    with pytest.raises(tocom.TocomError, match="12 blocks"):
        tocom.set_r(model, [1, 2])
    with pytest.raises(tocom.TocomError, match="unknown compression method"):
        tocom.patch(model, "magic")
    with pytest.raises(tocom.TocomError, match="not a timm VisionTransformer"):
        tocom.patch(torch.nn.Linear(2, 2))
    assert tocom.max_r(model) == 16
