"""Consistency checks on the transcribed paper numbers in reference/.

These tests only read the CSV files (plain pandas, no project code) and check
the paper's own arithmetic, so that a mistyped number shows up as a failure:
group means vs per-task values, deltas vs (ToCom - baseline), the ablation
baselines vs the 19-task means of Tables 2/3/4, and the LoRA parameter counts.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

REF = Path(__file__).resolve().parents[1] / "reference"

COLUMNS = [
    "source", "backbone", "method", "dataset", "source_r", "target_r",
    "tocom", "variant", "metric", "value", "note",
]
KEY = [c for c in COLUMNS if c not in ("value", "note")]

NATURAL = ["cifar", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397"]
SPECIALIZED = ["patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"]
STRUCTURED = ["clevr_count", "clevr_dist", "dmlab", "kitti", "dsprites_loc",
              "dsprites_ori", "smallnorb_azi", "smallnorb_ele"]
GROUPS = {
    "vtab/natural": ("Table 2", NATURAL),
    "vtab/specialized": ("Table 2", SPECIALIZED),
    "vtab/structured": ("Table 3", STRUCTURED),
}
VTAB_TASKS = NATURAL + SPECIALIZED + STRUCTURED
OTHER_DATASETS = {
    "vtab/natural", "vtab/specialized", "vtab/structured", "vtab/mean",
    "cub200", "stanford_cars", "stanford_dogs", "oxford_flowers102_fgvc", "cifar100", "ade20k",
    "fgvc/mean", "cifar100+fgvc/mean",
}
BACKBONES = {"deit_base_patch16_224", "deit_small_patch16_224",
             "vit_base_patch16_224.mae", "deit_base_patch16_384"}
VARIANTS = {"", "tocom", "shared", "cls", "no_inversion", "h1", "h2", "h4", "h8",
            "s1", "s0.1", "s0.01", "task_arithmetic"}
METRICS = {"top1", "mIoU", "gflops", "params_M", "delta",
           "inference_speedup", "training_speedup"}
# metrics that describe a model / plugin rather than a dataset
DATASET_FREE_METRICS = {"params_M", "inference_speedup", "training_speedup"}

# Rounding: a group mean printed to 0.1 from unrounded per-task accuracies can
# differ from the mean of the printed (rounded) per-task values by up to 0.1.
# The default tolerance is the strict 0.05; rows exceeding it are listed here
# explicitly (and reported) instead of loosening the tolerance for everyone.
MEAN_TOL = 0.05 + 1e-9
MEAN_TOL_EXCEPTIONS = {
    # Table 2, target 16, source 4, no ToCom: the 7 natural tasks average 74.057,
    # printed 74.0 (poster: 74.0 as well). Within the 0.1 bound for
    # rounded-then-averaged values, so most likely rounding, not a typo.
    ("vtab/natural", 4, 16, 0): 0.1,
}


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    d = pd.read_csv(REF / "paper_results.csv", dtype=str, keep_default_na=False)
    d["value"] = d["value"].astype(float)
    d["tocom"] = d["tocom"].astype(int)
    for c in ("source_r", "target_r"):
        d[c] = pd.to_numeric(d[c], errors="coerce").astype("Int64")
    return d


def one(df: pd.DataFrame, **kw) -> float:
    sel = df
    for k, v in kw.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, f"expected exactly one row for {kw}, got {len(sel)}"
    return float(sel["value"].iloc[0])


def vtab_row(df, source_r, target_r, tocom):
    """The 19 per-task values of one Table 2/3 row, in standard VTAB order."""
    out = []
    for group, (table, tasks) in GROUPS.items():
        for t in tasks:
            out.append(one(df, source=table, dataset=t, source_r=source_r,
                           target_r=target_r, tocom=tocom, metric="top1"))
    return out


def weighted_group_mean(nat, spe, stru):
    return (7 * nat + 4 * spe + 8 * stru) / 19


# ----------------------------------------------------------------- schema ---

def test_columns(df):
    assert list(df.columns) == COLUMNS


def test_every_row_has_source_backbone_method_metric(df):
    for c in ("source", "backbone", "method", "metric"):
        assert (df[c].str.strip() != "").all(), c


def test_controlled_vocabularies(df):
    assert set(df["backbone"]) <= BACKBONES
    assert set(df["method"]) <= {"tome", "evit"}
    assert set(df["variant"]) <= VARIANTS
    assert set(df["metric"]) <= METRICS
    assert set(df["tocom"]) <= {0, 1}
    allowed = set(VTAB_TASKS) | OTHER_DATASETS
    with_ds = df[~df["metric"].isin(DATASET_FREE_METRICS)]
    assert set(with_ds["dataset"]) <= allowed
    assert (with_ds["dataset"] != "").all()
    assert (df[df["metric"].isin(DATASET_FREE_METRICS)]["dataset"] == "").all()


def test_tocom_flag_matches_variant(df):
    assert (df[df["tocom"] == 0]["variant"].isin(["", "task_arithmetic"])).all()
    assert (df[df["tocom"] == 1]["variant"] != "").all()
    # a delta is always "with something" minus baseline
    assert (df[df["metric"] == "delta"]["tocom"] == 1).all()


def test_no_duplicate_keys(df):
    dup = df[df.duplicated(KEY, keep=False)]
    assert dup.empty, dup[KEY].to_string()


def test_values_in_range(df):
    acc = df[df["metric"].isin(["top1", "mIoU"])]["value"]
    assert acc.between(0, 100).all()
    d = df[df["metric"] == "delta"]["value"]
    assert d.between(-5, 5).all()


def test_r_values_in_range(df):
    tome224 = df[(df["backbone"] != "deit_base_patch16_384")]
    for c in ("source_r", "target_r"):
        vals = tome224[c].dropna()
        assert vals.between(0, 16).all(), c


def test_inferred_entries_are_flagged(df):
    # Tables 8-11 lost their r labels in the extraction: every row must say so.
    for t in ("Table 8", "Table 9", "Table 10", "Table 11"):
        notes = df[df["source"] == t]["note"]
        assert notes.str.contains("INFERRED").all(), t


def test_expected_row_counts(df):
    counts = df["source"].value_counts().to_dict()
    assert counts["Table 1"] == 8
    assert counts["Table 2"] == 2 * (5 * 13 + 2 * 2) + 2  # + 2 speedup rows
    assert counts["Table 3"] == 2 * (5 * 9 + 2)
    assert counts["Table 4"] == 2 * (5 * 3 + 2 * 3) + 2
    assert counts["Table 5"] == 3 + 4 * 3 * 2
    assert counts["Table 6"] == 3 + 3 * 3 * 2
    assert counts["Table 7"] == 3 + 4 * 3 * 2 + 4
    for t in ("Table 8", "Table 9", "Table 10"):
        assert counts[t] == 2 * 3 * 3
    assert counts["Table 11"] == 2 + 3 * 4


# -------------------------------------------------------- Tables 2 and 3 ---

T23_ROWS = [(s, t, c) for t, sources in ((16, (0, 4, 16)), (12, (0, 4, 12)))
            for s in sources for c in ((0, 1) if s != t else (0,))]


@pytest.mark.parametrize("source_r,target_r,tocom", T23_ROWS)
@pytest.mark.parametrize("group", list(GROUPS))
def test_group_mean_matches_tasks(df, group, source_r, target_r, tocom):
    table, tasks = GROUPS[group]
    vals = [one(df, source=table, dataset=t, source_r=source_r, target_r=target_r,
                tocom=tocom, metric="top1") for t in tasks]
    reported = one(df, source=table, dataset=group, source_r=source_r,
                   target_r=target_r, tocom=tocom, metric="top1")
    tol = MEAN_TOL_EXCEPTIONS.get((group, source_r, target_r, tocom), MEAN_TOL)
    mean = sum(vals) / len(vals)
    assert abs(mean - reported) <= tol, (group, source_r, target_r, tocom, mean, reported)


def test_mean_tolerance_exceptions_are_still_needed(df):
    """Keep the exception list honest: each listed row must exceed the strict 0.05."""
    for (group, s, t, c) in MEAN_TOL_EXCEPTIONS:
        table, tasks = GROUPS[group]
        vals = [one(df, source=table, dataset=x, source_r=s, target_r=t, tocom=c, metric="top1")
                for x in tasks]
        reported = one(df, source=table, dataset=group, source_r=s, target_r=t, tocom=c, metric="top1")
        assert abs(sum(vals) / len(vals) - reported) > MEAN_TOL


def _delta_cases(df, tables):
    d = df[df["source"].isin(tables) & (df["metric"] == "delta")]
    return [tuple(r) for r in d[["source", "backbone", "method", "dataset", "source_r",
                                 "target_r", "variant"]].itertuples(index=False)]


@pytest.mark.parametrize("table", ["Table 2", "Table 3", "Table 4", "Table 8", "Table 9", "Table 10"])
def test_delta_equals_tocom_minus_baseline(df, table):
    cases = _delta_cases(df, [table])
    assert cases
    for source, bb, m, ds, s, t, var in cases:
        kw = dict(source=source, backbone=bb, method=m, dataset=ds, source_r=s, target_r=t)
        delta = one(df, **kw, tocom=1, variant=var, metric="delta")
        with_ = one(df, **kw, tocom=1, variant=var, metric="top1")
        base = one(df, **kw, tocom=0, metric="top1")
        assert abs((with_ - base) - delta) <= 0.1 + 1e-9, (kw, with_, base, delta)


def test_table4_reference_rows_equal_tables_2_3(df):
    """Source = target rows (16->16, 12->12) are printed in both Table 2/3 and Table 4."""
    for r in (16, 12):
        for group, (table, _) in GROUPS.items():
            a = one(df, source=table, dataset=group, source_r=r, target_r=r, metric="top1")
            b = one(df, source="Table 4", dataset=group, source_r=r, target_r=r, metric="top1")
            assert a == b, (r, group)


def test_sec52_text_gains_equal_table_deltas(df):
    for group, (table, _) in GROUPS.items():
        text = one(df, source="Sec. 5.2 text", dataset=group, metric="delta")
        tab = one(df, source=table, dataset=group, source_r=0, target_r=16, metric="delta")
        assert text == tab, group


# ------------------------------------------------------ Tables 5, 6, 7 ---

ABLATIONS = ["Table 5", "Table 6", "Table 7"]


@pytest.mark.parametrize("table", ABLATIONS)
def test_ablation_deltas(df, table):
    sub = df[(df["source"] == table) & (df["metric"] == "delta")]
    assert len(sub) > 0
    for r in sub.itertuples(index=False):
        base = one(df, source=table, dataset="vtab/mean", source_r=r.source_r,
                   target_r=r.target_r, tocom=0, metric="top1")
        acc = one(df, source=table, dataset="vtab/mean", source_r=r.source_r,
                  target_r=r.target_r, variant=r.variant, metric="top1")
        assert abs((acc - base) - r.value) <= 0.1 + 1e-9, (table, r.variant, r.source_r, r.target_r)


@pytest.mark.parametrize("table", ABLATIONS)
def test_ablation_baseline_0_to_16_is_table2_19task_mean(df, table):
    base = one(df, source=table, dataset="vtab/mean", source_r=0, target_r=16, tocom=0, metric="top1")
    assert base == 67.9
    mean19 = sum(vtab_row(df, 0, 16, 0)) / 19
    assert abs(mean19 - base) <= 0.05, mean19


@pytest.mark.parametrize("table", ABLATIONS)
def test_ablation_baseline_0_to_12_is_table2_19task_mean(df, table):
    base = one(df, source=table, dataset="vtab/mean", source_r=0, target_r=12, tocom=0, metric="top1")
    assert base == 70.1
    mean19 = sum(vtab_row(df, 0, 12, 0)) / 19
    assert abs(mean19 - base) <= 0.05, mean19


@pytest.mark.parametrize("table", ABLATIONS)
def test_ablation_baseline_16_to_0_is_table4_weighted_mean(df, table):
    base = one(df, source=table, dataset="vtab/mean", source_r=16, target_r=0, tocom=0, metric="top1")
    assert base == 70.0
    g = [one(df, source="Table 4", dataset=x, source_r=16, target_r=0, tocom=0, metric="top1")
         for x in ("vtab/natural", "vtab/specialized", "vtab/structured")]
    # group means are themselves rounded, hence the looser bound
    assert abs(weighted_group_mean(*g) - base) <= 0.05 + 1e-9, weighted_group_mean(*g)


def test_ablation_tocom_rows_match_main_tables(df):
    """'ToCom (Ours)' in Table 5 (= s 0.1 in Table 6 = h 2 in Table 7) is the same
    model as the +ToCom rows of Tables 2/3 (0->16, 0->12) and Table 4 (16->0)."""
    for (s, t) in ((0, 16), (0, 12)):
        ours = one(df, source="Table 5", dataset="vtab/mean", source_r=s, target_r=t,
                   variant="tocom", metric="top1")
        assert abs(sum(vtab_row(df, s, t, 1)) / 19 - ours) <= 0.05
    ours = one(df, source="Table 5", dataset="vtab/mean", source_r=16, target_r=0,
               variant="tocom", metric="top1")
    g = [one(df, source="Table 4", dataset=x, source_r=16, target_r=0, tocom=1, metric="top1")
         for x in ("vtab/natural", "vtab/specialized", "vtab/structured")]
    assert abs(weighted_group_mean(*g) - ours) <= 0.05 + 1e-9
    for (s, t) in ((0, 16), (0, 12), (16, 0)):
        for metric in ("top1", "delta"):
            a = one(df, source="Table 5", dataset="vtab/mean", source_r=s, target_r=t, variant="tocom", metric=metric)
            b = one(df, source="Table 6", dataset="vtab/mean", source_r=s, target_r=t, variant="s0.1", metric=metric)
            c = one(df, source="Table 7", dataset="vtab/mean", source_r=s, target_r=t, variant="h2", metric=metric)
            assert a == b == c, (s, t, metric)


def test_ablation_baselines_identical_across_tables(df):
    for (s, t) in ((0, 16), (0, 12), (16, 0)):
        vals = {one(df, source=x, dataset="vtab/mean", source_r=s, target_r=t, tocom=0, metric="top1")
                for x in ABLATIONS}
        assert len(vals) == 1, (s, t, vals)


def test_abstract_vtab_max_gain_is_table5_gain(df):
    assert one(df, source="Abstract", dataset="vtab/mean", metric="delta") == \
        one(df, source="Table 5", dataset="vtab/mean", source_r=0, target_r=16, variant="tocom", metric="delta")


def test_table7_params_scale_linearly_with_h(df):
    p = {int(v[1:]): one(df, source="Table 7", variant=v, metric="params_M") for v in ("h1", "h2", "h4", "h8")}
    for h, val in p.items():
        assert abs(val - p[1] * h) <= 0.01 + 1e-9, (h, val)


def test_table7_params_from_architecture(df):
    # 16 adjacent-degree LoRA groups x 12 blocks x {W_q, W_v} x {A, B} x 768 x h
    for h in (1, 2, 4, 8):
        n = 16 * 12 * 2 * 2 * 768 * h / 1e6
        assert abs(one(df, source="Table 7", variant=f"h{h}", metric="params_M") - n) <= 0.005 + 1e-9, h
    assert abs(one(df, source="Sec. 5.1 text", tocom=1, metric="params_M") - 16 * 12 * 2 * 2 * 768 * 2 / 1e6) <= 0.05


# ----------------------------------------------------------- other tables ---

def test_table1_task_arithmetic_improves_every_dataset(df):
    sub = df[df["source"] == "Table 1"]
    for ds in sub["dataset"].unique():
        base = one(df, source="Table 1", dataset=ds, variant="")
        ta = one(df, source="Table 1", dataset=ds, variant="task_arithmetic")
        assert ta > base, ds


def test_table11_tocom_keeps_gflops_and_gflops_step_is_linear(df):
    seg = df[df["source"] == "Table 11"]
    g = {}
    for t in sorted(seg["target_r"].dropna().unique()):
        vals = set(seg[(seg["target_r"] == t) & (seg["metric"] == "gflops")]["value"])
        assert len(vals) == 1, t  # ToCom is merged into the weights: no extra cost
        g[int(t)] = vals.pop()
    drops = [g[0] - g[t] for t in sorted(g) if t]
    # equal steps between consecutive targets (basis of the inferred r = 256/384/512)
    assert abs((drops[1] - drops[0]) - (drops[2] - drops[1])) <= 0.1 + 1e-9
    # first drop = two steps (r = 2k, 3k, 4k); each GFLOPs value is printed to 0.1,
    # so a drop carries up to +-0.1 and twice a step up to +-0.2 of rounding error
    assert abs(drops[0] - 2 * (drops[1] - drops[0])) <= 0.3 + 1e-9
    for t in (256, 384, 512):
        assert one(df, source="Table 11", target_r=t, tocom=1, metric="mIoU") > \
            one(df, source="Table 11", target_r=t, tocom=0, metric="mIoU")


def test_sec52_average_gain_consistent_with_abstract_maxima(df):
    """(CIFAR100 max 2.3 + 4 x FGVC-mean max 1.5) / 5 = 1.66 ~ the 1.7 average gain
    at target 16: supports reading the abstract maxima as the target-16 setting."""
    c = one(df, source="Abstract", dataset="cifar100", metric="delta")
    f = one(df, source="Abstract", dataset="fgvc/mean", metric="delta")
    avg16 = one(df, source="Sec. 5.2 text", dataset="cifar100+fgvc/mean", target_r=16, metric="delta")
    assert abs((c + 4 * f) / 5 - avg16) <= 0.05 + 1e-9


def test_speedups_consistent(df):
    s16 = one(df, source="Table 2", target_r=16, metric="inference_speedup")
    s16_text = one(df, source="Sec. 5.2 text", target_r=16, metric="inference_speedup")
    assert round(s16_text, 1) == s16
    sp = df[df["metric"] == "inference_speedup"].sort_values("target_r")
    assert sp.groupby("target_r")["value"].max().is_monotonic_increasing


# ------------------------------------------------------------ small files ---

def test_hparams_file():
    h = pd.read_csv(REF / "paper_hparams.csv", dtype=str, keep_default_na=False)
    assert list(h.columns) == ["dataset", "key", "value", "source", "note"]
    assert set(h["dataset"]) == {"ImageNet", "CIFAR", "FGVC", "VTAB-1k"}
    assert not h.duplicated(["dataset", "key"]).any()
    t13 = h[h["source"] == "Table 13"]
    assert len(t13) == 14 * 4
    assert t13.set_index(["dataset", "key"]).loc[("VTAB-1k", "batch_size"), "value"] == "64"
    assert t13.set_index(["dataset", "key"]).loc[("ImageNet", "epochs"), "value"] == "10"


def test_datasets_file():
    d = pd.read_csv(REF / "paper_datasets.csv", keep_default_na=False, dtype=str)
    assert list(d.columns) == ["dataset", "group", "classes", "train", "val", "test", "note"]
    assert not d["dataset"].duplicated().any()
    vt = d[d["group"].str.startswith("vtab/")]
    assert list(vt["dataset"]) == VTAB_TASKS
    assert (vt["train"] == "800").all() and (vt["val"] == "200").all()
    assert (vt.groupby("group").size().to_dict()
            == {"vtab/natural": 7, "vtab/specialized": 4, "vtab/structured": 8})
    assert set(d[d["group"] == "fgvc"]["dataset"]) == {
        "cub200", "stanford_cars", "stanford_dogs", "oxford_flowers102_fgvc"}
    for c in ("classes", "train", "val", "test"):
        nums = d[c][d[c] != ""]
        assert nums.str.fullmatch(r"\d+").all(), c
