"""The plugin-cost benchmark (`tocom bench --plugin-check`): merged vs plain throughput, switch vs floor.

Only the shape of the table is checked (rows, columns, finite positive ratios); the timings
themselves live in the benchmark, never in a unit test.
"""
import math

import pandas as pd
import pytest
import torch

import tocom
import tocom.models  # noqa: F401  (registers the tiny backbones with timm)
from tocom.engine.bench import PLUGIN_COLUMNS, bench_plugin
from tocom.settings import BenchSettings, MeasureSettings

MODEL = "tocom_vit_micro_patch4_56"     # 196 tokens over 12 blocks: max r = 16, like DeiT-B


def _finite_positive(df, *cols):
    for c in cols:
        assert df[c].map(lambda v: math.isfinite(v) and v > 0).all(), c


def test_plugin_check_rows_columns_and_ratios(tmp_path):
    out = tmp_path / "plugin.csv"
    df = bench_plugin(MeasureSettings(model=MODEL, method="tome", r=(0, 4, 16), device="cpu"),
                      BenchSettings(batch_size=2, warmup=1, repeats=2, switch_repeats=2), out=out, progress=False)
    assert list(df.columns) == PLUGIN_COLUMNS
    tp, sw = df[df.kind == "merged_throughput"], df[df.kind == "switch"]
    assert len(tp) + len(sw) == len(df)
    # one throughput row per r; at r = source (0) the move comes from r_max so the merge is not a no-op
    assert list(tp.target_r) == [0, 4, 16] and list(tp.source_r) == [16, 0, 0]
    assert (tp.unit == "images/s").all() and tp.repeats.eq(2).all()
    assert tp.from_r.isna().all()
    # per target != source, a switch entering from the source and one from the neighbouring degree;
    # 0 -> r_max is among them already
    assert list(zip(sw.source_r, sw.target_r, sw.from_r)) == [(0, 4, 0), (0, 4, 3), (0, 16, 0), (0, 16, 15)]
    assert list(sw.k) == [8, 8, 32, 32] and (sw.unit == "ms").all() and sw.repeats.eq(2).all()
    assert sw.groupby("target_r").reference.nunique().eq(1).all()    # one floor per move
    _finite_positive(df, "value", "reference", "ratio")
    assert df.value_std.ge(0).all() and df.reference_std.ge(0).all()
    assert pd.read_csv(out).shape == df.shape


def test_plugin_check_adds_the_largest_move_and_leaves_the_model_unchanged(monkeypatch):
    """With a source other than 0 the 0 -> r_max move is added; the model the benchmark builds ends
    with its original weights and r (every compensation removed)."""
    import tocom.engine.bench as bench_mod

    built = []
    create = bench_mod.create_backbone
    monkeypatch.setattr(bench_mod, "create_backbone", lambda name: built.append(create(name)) or built[-1])
    torch.manual_seed(0)
    df = bench_plugin(MeasureSettings(model=MODEL, method="evit", r=(4, 8), device="cpu"),
                      BenchSettings(source_r=4, plugin_rank=3, batch_size=1, warmup=0, repeats=1, switch_repeats=1),
                      progress=False)
    sw = df[df.kind == "switch"]
    assert list(zip(sw.source_r, sw.target_r, sw.from_r, sw.k)) == [(4, 8, 4, 12), (4, 8, 7, 12),
                                                                    (0, 16, 0, 48), (0, 16, 15, 48)]
    tp = df[df.kind == "merged_throughput"]
    assert list(zip(tp.source_r, tp.target_r)) == [(16, 4), (4, 8)]
    _finite_positive(df, "value", "reference", "ratio")
    model = built[0]
    torch.manual_seed(0)
    fresh = tocom.patch(create(MODEL), "evit")
    for (key, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), key
    assert model.r == 0


def test_plugin_check_rejects_degrees_the_backbone_cannot_carry():
    with pytest.raises(tocom.TocomError, match="exceeds"):
        bench_plugin(MeasureSettings(model=MODEL, r=(0, 4), device="cpu"), BenchSettings(source_r=17), progress=False)


def test_cli_prints_the_plugin_table(tmp_path, capsys):
    from tocom.cli import main

    out = tmp_path / "p.csv"
    assert main(["bench", "--model", MODEL, "--r", "0", "16", "--plugin-check", "--batch-size", "1", "--warmup", "0",
                 "--repeats", "1", "--switch-repeats", "1", "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "merged_throughput" in printed and "switch" in printed and "ratio" in printed
    assert len(pd.read_csv(out)) == 4
    assert main(["bench", "--model", MODEL, "--plugin-check", "--mode", "train"]) == 2
    assert "--plugin-check measures float32 inference" in capsys.readouterr().err
