"""The report scripts (workflow/scripts/report/) on a small fabricated results folder: the numbers in the
tables are the right means and deltas, the paper's numbers and ours − paper appear only at scale `paper`,
several seeds give intervals and paired tests, and items without data become labelled stubs.
Also the aggregate step (backbone keys from paths, plugin sizes from safetensors headers)."""
from __future__ import annotations

import copy
import importlib
import itertools
import math
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "workflow" / "scripts" / "report"
sys.path.insert(0, str(SCRIPTS))
common = importlib.import_module("common")

PAPER = yaml.safe_load((REPO / "config/paper.yaml").read_text())
CIFAR_FGVC = ["cifar100", "cub200"]
VTAB = {"natural": ["vtab/cifar", "vtab/dtd"], "specialized": ["vtab/eurosat"], "structured": ["vtab/clevr_count"]}
BASE = {"cifar100": 90.0, "cub200": 80.0, "vtab/cifar": 60.0, "vtab/dtd": 70.0, "vtab/eurosat": 90.0,
        "vtab/clevr_count": 50.0}
GAIN = {"tocom": 2.0, "shared": 1.0, "cls": 1.5, "no_inversion": 1.8, "h1": 1.2, "h4": 2.1, "h8": 2.2, "s1": 1.9,
        "s0.01": 1.7}
SEED_OFFSET = {0: 0.0, 1: 1.0}
TASK_GAIN = {"vtab/cifar": 0.0, "vtab/dtd": 1.0, "vtab/eurosat": 0.5, "vtab/clevr_count": 2.0, "cifar100": 0.0,
             "cub200": 0.4}


def top1(ds, source, target, variant="", seed=0):
    """The fabricated accuracy: the farther source is from target the worse; each plugin adds its gain."""
    gain = GAIN[variant] + TASK_GAIN[ds] if variant else 0.0
    return BASE[ds] - 0.25 * abs(source - target) + gain + SEED_OFFSET[seed]


def eval_rows(key, method, datasets, sources, targets, variants, seeds):
    """eval.csv rows: plain, and each plugin at a chosen s (selected) and at one not chosen (must be ignored)."""
    rows, same = [], dict(backbone="deit_base_patch16_224", method=method, n=100, backbone_key=key)
    for ds, s, t, seed, split in itertools.product(datasets, sources, targets, seeds, ("val", "test")):
        rows.append(dict(same, dataset=ds, source_r=s, target_r=t, tocom=0, variant=None, s=None, split=split,
                         seed=seed, top1=top1(ds, s, t, seed=seed), selected=False))
        for v in variants if s != t else []:
            for scale, chosen in ((0.1, True), (0.01, False)):
                rows.append(dict(same, dataset=ds, source_r=s, target_r=t, tocom=1, variant=v, s=scale, split=split,
                                 seed=seed, selected=chosen, top1=top1(ds, s, t, v, seed) if chosen else 0.0))
    return rows


def fabricate(root: Path, scale="smoke", seeds=(0,)) -> common.Ctx:
    config = copy.deepcopy(PAPER)
    config.update(name="fab", scale=scale, seeds=list(seeds))
    config["report"]["cifar_fgvc"] = list(CIFAR_FGVC)
    config["report"]["vtab_groups"] = copy.deepcopy(VTAB)
    vtab = [d for ds in VTAB.values() for d in ds]
    rows = eval_rows("deit_b", "tome", CIFAR_FGVC + vtab, [0, 4, 12, 16], [0, 2, 4, 12, 16], ["tocom"], seeds)
    rows += eval_rows("deit_b", "tome", vtab, [0, 16], [0, 12, 16],
                      ["shared", "cls", "no_inversion", "h1", "h4", "h8", "s1", "s0.01"], seeds)
    rows += eval_rows("deit_b", "evit", CIFAR_FGVC[:1] + vtab, [0, 16], [0, 4, 16], ["tocom"], seeds)
    ev = pd.DataFrame(rows)
    ev = ev.drop_duplicates(subset=["dataset", "method", "source_r", "target_r", "variant", "s", "split", "seed"],
                            keep="last")
    tables = root / "results/fab/tables"
    tables.mkdir(parents=True)
    ev.to_csv(tables / "eval.csv", index=False)
    tr = [dict(dataset=b, backbone="deit_base_patch16_224", method="tome", model=m, target_r=16, seed=seed,
               top1=BASE[b] + (1.5 if m != "M0_B" else 0.0) + SEED_OFFSET[seed], n=100, backbone_key="deit_b",
               a="cifar100", high_r=16)
          for b in ("cub200",) for m in ("M0_B", "M16_A-M0_A+M0_B") for seed in seeds]
    pd.DataFrame(tr).to_csv(tables / "transfer.csv", index=False)
    bench = [dict(model="deit_base_patch16_224", method="tome", r=r, mode=mode, device="cpu", threads=2, batch_size=8,
                  repeats=3, images_per_s=10.0 * (1 + r / 16), images_per_s_std=0.1, gflops=17.56 / (1 + r / 16),
                  speedup=1 + r / 16, flops_ratio=1 + r / 16, backbone_key="deit_b")
             for mode in ("infer", "train") for r in (0, 2, 12, 16)]
    pd.DataFrame(bench).to_csv(tables / "bench.csv", index=False)
    plugins = [dict(backbone_key="deit_b", backbone="deit_base_patch16_224", method="tome", variant=v, kind="tocom",
                    loss="kd", rank=h, r_max=16, groups=16, width=768, depth=12, train_scale=0.1,
                    params=16 * 12 * 2 * 2 * 768 * h) for v, h in (("tocom", 2), ("h1", 1), ("h4", 4), ("h8", 8))]
    pd.DataFrame(plugins).to_csv(tables / "plugins.csv", index=False)
    pd.DataFrame([dict(backbone_key="deit_b", backbone="deit_base_patch16_224", method="tome", dataset=d, source_r=0,
                       seed=0, mode="full", num_classes=100, epochs=1) for d in BASE]).to_csv(tables / "models.csv",
                                                                                             index=False)
    return common.Ctx(config, tables, root / "results/fab/report", root / "figures/fab",
                      REPO / "reference/paper_results.csv")


def run(name, ctx):
    importlib.import_module(name).make(ctx)


def cells(ctx, stem):
    df = pd.read_csv(ctx.report_dir / f"{stem}.csv").fillna({"block": ""})
    return df[df.kind == "cell"].set_index(["block", "row", "column"]), df[df.kind == "test"]


def mean(values):
    return float(np.mean(values))


# ---- numbers ----------------------------------------------------------------------------------------
def test_table1_means_and_delta(tmp_path):
    ctx = fabricate(tmp_path)
    run("table1_transfer", ctx)
    c, _ = cells(ctx, "table1_transfer")
    block = "`deit_b`/tome, D_A = cifar100, target r = 16"
    assert c.loc[(block, "cub200", "M_0^B"), "mean"] == pytest.approx(80.0)
    assert c.loc[(block, "cub200", "M_16^A − M_0^A + M_0^B"), "mean"] == pytest.approx(81.5)
    assert c.loc[(block, "cub200", "Δ"), "mean"] == pytest.approx(1.5)
    assert c.paper.isna().all()                                      # scale smoke: no comparison
    md = (ctx.report_dir / "table1_transfer.md").read_text()
    assert "not compared with the paper" in md and "1 seed, no interval" in md and "↳ paper" not in md
    assert (ctx.report_dir / "table1_transfer.tex").read_text().startswith(r"\begin{table}")


def test_vtab_tables_group_means_and_deltas(tmp_path):
    ctx = fabricate(tmp_path)
    ctx.report["vtab_groups"]["natural"] = VTAB["natural"] + ["vtab/svhn"]     # a task this run lacks
    run("table2_3_vtab_inference", ctx)
    c, tests = cells(ctx, "table2_vtab_natural_specialized")
    block = next(b for b in c.index.get_level_values(0) if b.startswith("target r = 16"))
    assert "2.00× measured inference speed-up" in block                    # read from bench.csv
    nat = VTAB["natural"]
    assert c.loc[(block, "source r = 0", "Natural"), "mean"] == pytest.approx(mean([top1(d, 0, 16) for d in nat]))
    assert c.loc[(block, "source r = 4 + ToCom", "Natural"), "mean"] == \
        pytest.approx(mean([top1(d, 4, 16, "tocom") for d in nat]))
    assert c.loc[(block, "source r = 0 + ToCom", "Natural Δ"), "mean"] == pytest.approx(2.0 + 0.5)
    assert c.loc[(block, "source r = 0 + ToCom", "dtd"), "mean"] == pytest.approx(top1("vtab/dtd", 0, 16, "tocom"))
    assert c.loc[(block, "source r = 16", "Specialized"), "mean"] == pytest.approx(top1("vtab/eurosat", 16, 16))
    assert set(tests.n_tasks) == {3}                                  # natural + specialized tasks
    c3, _ = cells(ctx, "table3_vtab_structured")
    assert c3.loc[(block, "source r = 0 + ToCom", "Structured Δ"), "mean"] == pytest.approx(4.0)
    md = (ctx.report_dir / "table2_vtab_natural_specialized.md").read_text()
    assert "Paired test" in md and "not in this run's grid (left out of the means): vtab/svhn" in md

    run("table4_vtab_training", ctx)
    c4, _ = cells(ctx, "table4_vtab_training")
    b16 = next(b for b in c4.index.get_level_values(0) if b.startswith("source r = 16"))
    assert c4.loc[(b16, "target r = 4", "Structured"), "mean"] == pytest.approx(top1("vtab/clevr_count", 16, 4))
    assert c4.loc[(b16, "target r = 0 + ToCom", "Specialized Δ"), "mean"] == pytest.approx(2.5)
    assert (b16, "target r = 16", "Natural") in c4.index                  # target = source reference


def test_ablation_tables_and_rank_parameter_counts(tmp_path):
    ctx = fabricate(tmp_path)
    for name in ("table5_ablation", "table6_scale", "table7_rank"):
        run(name, ctx)
    tasks = [d for ds in VTAB.values() for d in ds]
    c5, tests5 = cells(ctx, "table5_ablation")
    assert c5.loc[("", "Baseline", "0 → 16"), "mean"] == pytest.approx(mean([top1(d, 0, 16) for d in tasks]))
    assert c5.loc[("", "CLS loss", "16 → 0 Δ"), "mean"] == pytest.approx(1.5 + mean([TASK_GAIN[d] for d in tasks]))
    assert c5.loc[("", "Shared LoRA (h = 32)", "0 → 12"), "mean"] == \
        pytest.approx(mean([top1(d, 0, 12, "shared") for d in tasks]))
    assert len(tests5) == 4 * 3
    c6, _ = cells(ctx, "table6_scale")
    assert {"s = 1", "s = 0.1 (ours)", "s = 0.01"} <= set(c6.index.get_level_values(1))
    c7, _ = cells(ctx, "table7_rank")
    assert c7.loc[("", "h = 2 (ours)", "# params (M)"), "mean"] == pytest.approx(1.179648)
    assert c7.loc[("", "h = 8", "0 → 16 Δ"), "mean"] == pytest.approx(2.2 + mean([TASK_GAIN[d] for d in tasks]))


def test_figures_write_png_pdf_and_their_numbers(tmp_path):
    ctx = fabricate(tmp_path)
    for name in ("fig2_source_target", "fig3_throughput", "fig5_inference", "fig6_training"):
        run(name, ctx)
    for stem in ("fig2_source_target", "fig3_throughput", "fig5_inference", "fig6_training"):
        assert (ctx.fig_dir / f"{stem}.png").stat().st_size > 1000 and (ctx.fig_dir / f"{stem}.pdf").exists()
        assert f"](../../figures/fab/{stem}.png)" in (ctx.report_dir / f"{stem}.md").read_text()
    c5, _ = cells(ctx, "fig5_inference")
    assert c5.loc[("mean", "+ ToCom", "r = 12"), "mean"] == \
        pytest.approx(mean([top1(d, 0, 12, "tocom") for d in CIFAR_FGVC]))
    assert c5.loc[("mean", "source = target", "r = 12"), "mean"] == \
        pytest.approx(mean([top1(d, 12, 12) for d in CIFAR_FGVC]))
    assert c5.loc[("cub200", "Δ ToCom", "r = 16"), "mean"] == pytest.approx(2.4)
    assert not any(col == "r = 0" for col in c5.index.get_level_values(2))   # targets above the source only
    c6, _ = cells(ctx, "fig6_training")
    assert sorted(set(c6.index.get_level_values(2))) == ["r = 0", "r = 12", "r = 2", "r = 4"]
    c3, _ = cells(ctx, "fig3_throughput")
    assert c3.loc[("training", "r = 16", "speed-up"), "mean"] == pytest.approx(2.0)


def test_missing_roles_become_labelled_stubs(tmp_path):
    ctx = fabricate(tmp_path)
    run("fig7_table8_evit", ctx)
    run("table_idle", ctx)        # no IdleViT rows in this run
    run("table9_deit_s", ctx)
    c8, _ = cells(ctx, "table8_evit")
    assert c8.loc[("source r = 0 → target r = 16", "+ ToCom", "Structured Δ"), "mean"] == pytest.approx(4.0)
    for stem in ("table_idle", "fig_idle", "table9_deit_s"):
        assert "Not in this run's grid" in (ctx.report_dir / f"{stem}.md").read_text()
        assert list(pd.read_csv(ctx.report_dir / f"{stem}.csv").columns) == common.CSV_COLUMNS
    assert (ctx.fig_dir / "fig_idle.png").exists() and (ctx.report_dir / "table_idle.tex").exists()
    ctx.report.pop("mae")                                            # a role the config does not declare
    run("table10_mae", ctx)
    assert "no such role" in (ctx.report_dir / "table10_mae.md").read_text()


# ---- scale paper, seeds -------------------------------------------------------------------------------
def test_scale_paper_shows_the_paper_beside_ours(tmp_path):
    ctx = fabricate(tmp_path, scale="paper")
    run("table1_transfer", ctx)
    run("table2_3_vtab_inference", ctx)
    run("table7_rank", ctx)
    c, _ = cells(ctx, "table1_transfer")
    row = c.loc[("`deit_b`/tome, D_A = cifar100, target r = 16", "cub200", "M_0^B")]
    assert row.paper == 82.4 and row.diff_paper == pytest.approx(80.0 - 82.4)
    md = (ctx.report_dir / "table1_transfer.md").read_text()
    assert "↳ paper" in md and "↳ ours − paper" in md and "82.4" in md and "-2.4" in md
    c2, _ = cells(ctx, "table2_vtab_natural_specialized")
    block = next(b for b in c2.index.get_level_values(0) if b.startswith("target r = 16"))
    assert block == "target r = 16 (2.00× measured inference speed-up; paper 1.9×)"
    assert c2.loc[(block, "source r = 0 + ToCom", "Natural"), "paper"] == 75.8
    assert c2.loc[(block, "source r = 0 + ToCom", "Natural Δ"), "paper"] == 2.1
    assert c2.loc[(block, "source r = 0", "dtd"), "paper"] == 65.4
    c7, _ = cells(ctx, "table7_rank")
    assert c7.loc[("", "h = 4", "# params (M)"), "paper"] == 2.36
    assert c7.loc[("", "Baseline", "16 → 0"), "paper"] == 70.0


def test_two_seeds_give_intervals_and_paired_tests(tmp_path):
    ctx = fabricate(tmp_path, seeds=(0, 1))
    run("table2_3_vtab_inference", ctx)
    c, tests = cells(ctx, "table3_vtab_structured")
    block = next(b for b in c.index.get_level_values(0) if b.startswith("target r = 16"))
    cell = c.loc[(block, "source r = 0", "clevr_count")]
    values = [top1("vtab/clevr_count", 0, 16, seed=s) for s in (0, 1)]
    assert cell["mean"] == pytest.approx(np.mean(values)) and cell.n_seeds == 2
    assert cell.ci == pytest.approx(stats.t.ppf(0.975, 1) * np.std(values, ddof=1) / math.sqrt(2))
    md = (ctx.report_dir / "table3_vtab_structured.md").read_text()
    assert "2 seeds: mean ± half-width of the 95 % confidence interval" in md and " ± " in md

    run("table5_ablation", ctx)
    _, tests = cells(ctx, "table5_ablation")
    t = tests[(tests.block == "0 → 16") & (tests.row == "ToCom (ours)")].iloc[0]
    tasks = [d for ds in VTAB.values() for d in ds]
    gains = np.array([GAIN["tocom"] + TASK_GAIN[d] + 0.25 * 0 for d in tasks])
    assert t.n_tasks == 4 and t["mean"] == pytest.approx(gains.mean())
    assert t.p_wilcoxon == pytest.approx(stats.wilcoxon(gains).pvalue)
    assert t.p_ttest == pytest.approx(stats.ttest_1samp(gains, 0).pvalue)
    assert "Wilcoxon p" in (ctx.report_dir / "table5_ablation.md").read_text()


def test_setup_tables_come_from_the_config_and_assemble_in_paper_order(tmp_path):
    ctx = fabricate(tmp_path)
    for name in ("fig2_source_target", "fig3_throughput", "table1_transfer", "fig5_inference",
                 "table2_3_vtab_inference", "fig6_training", "table4_vtab_training", "table5_ablation", "table6_scale",
                 "table7_rank", "fig7_table8_evit", "table_idle", "table9_deit_s", "table10_mae", "setup_tables"):
        run(name, ctx)
    hp = pd.read_csv(ctx.report_dir / "table13_hparams.csv").set_index("setting")
    assert hp.loc["epochs", "ToCom distillation"] == "10" and hp.loc["batch_size", "fine-tune: fgvc"] == "64"
    bb = pd.read_csv(ctx.report_dir / "table12_backbones.csv").set_index("key")
    assert bb.loc["mae_b", "ToCom loss"] == "features" and str(bb.loc["deit_b", "width"]) == "768"
    ds = pd.read_csv(ctx.report_dir / "table14_datasets.csv").set_index("dataset")
    assert ds.loc["vtab/eurosat", "role"] == "VTAB-1k Specialized" and str(ds.loc["cub200", "test evaluated"]) == "100"
    text = importlib.import_module("assemble").make(ctx)
    assert (ctx.report_dir.parent / "report.md").read_text() == text
    order = ["Fig. 2", "Fig. 3", "Table 1:", "Fig. 5", "Table 2:", "Table 3:", "Fig. 6", "Table 4:", "Table 5:",
             "Table 6:", "Table 7:", "Fig. 7", "Table 8:", "IdleViT table", "Table 9:", "Table 10:", "Table 12:",
             "Table 13:", "Table 14:"]
    positions = [text.index(f"### {o}") for o in order]
    assert positions == sorted(positions)


# ---- aggregate --------------------------------------------------------------------------------------
class Named(SimpleNamespace):
    """Stands in for Snakemake's named lists (attribute and item access)."""

    def __getitem__(self, key):
        return getattr(self, key)


def test_aggregate_adds_backbone_keys_and_plugin_sizes(tmp_path):
    from safetensors.numpy import save_file

    out = tmp_path / "results/x"
    ev = out / "eval/deit_s/tome/vtab__cifar/r4_seed1.csv"
    ev.parent.mkdir(parents=True)
    pd.DataFrame([dict(dataset="vtab/cifar", backbone="deit_small_patch16_224", method="tome", source_r=4,
                       target_r=4, tocom=0, variant=None, s=None, split="test", seed=1, top1=50.0, n=10,
                       selected=False)]).to_csv(ev, index=False)
    tr = out / "transfer/deit_b/tome/cifar100_to_stanford_cars_r16_seed0.csv"
    tr.parent.mkdir(parents=True)
    pd.DataFrame([dict(dataset="stanford_cars", backbone="b", method="tome", model="M0_B", target_r=16, seed=0,
                       top1=1.0, n=1)]).to_csv(tr, index=False)
    pl = out / "plugins/deit_s/tome/h4.safetensors"
    pl.parent.mkdir(parents=True)
    shapes = {"A.q": (16, 12, 4, 384), "A.v": (16, 12, 4, 384), "B.q": (16, 12, 384, 4), "B.v": (16, 12, 384, 4)}
    save_file({k: np.zeros(s, np.float32) for k, s in shapes.items()}, str(pl),
              metadata={"rank": "4", "r_max": "16", "width": "384", "depth": "12", "variant": "tocom",
                        "backbone": "deit_small_patch16_224", "extra": '{"loss": "kd", "train_scale": 0.1}'})
    ft = out / "finetune/deit_s/tome/vtab__cifar/r4_seed1.safetensors"
    ft.parent.mkdir(parents=True)
    save_file({"head.weight": np.zeros((100, 4), np.float32)}, str(ft),
              metadata={"tocom": '{"dataset": "vtab/cifar", "num_classes": 100, "mode": "adaptformer"}'})
    files = {"evals": "eval.csv", "transfers": "transfer.csv", "benches": "bench.csv", "plugins": "plugins.csv",
             "models": "models.csv", "summary": "summary.md"}
    sm = SimpleNamespace(input=Named(evals=[str(ev)], transfers=[str(tr)], benches=[], plugins=[str(pl)],
                                     models=[str(ft)]),
                         output=Named(**{k: str(out / "tables" / f) for k, f in files.items()}),
                         params=Named(name="x", scale="smoke"))
    runpy.run_path(str(REPO / "workflow/scripts/aggregate.py"), init_globals={"snakemake": sm})
    tables = out / "tables"
    assert pd.read_csv(tables / "eval.csv").backbone_key.tolist() == ["deit_s"]
    t = pd.read_csv(tables / "transfer.csv").iloc[0]
    assert (t.backbone_key, t.a, t.high_r) == ("deit_b", "cifar100", 16)
    p = pd.read_csv(tables / "plugins.csv").iloc[0]
    assert (p.backbone_key, p.variant, p["rank"], p.groups) == ("deit_s", "h4", 4, 16)
    assert p.params == 16 * 12 * 2 * 2 * 384 * 4
    m = pd.read_csv(tables / "models.csv").iloc[0]
    assert (m.dataset, m.num_classes, m.source_r, m.seed) == ("vtab/cifar", 100, 4, 1)
    assert list(pd.read_csv(tables / "bench.csv").columns)[-1] == "backbone_key"


def test_every_item_survives_a_sparse_grid(tmp_path):
    """A config that produces little (one VTAB task, one source, no transfer/bench): nothing crashes; what
    is missing is a labelled stub or a named missing row, and the report still assembles."""
    ctx = fabricate(tmp_path)
    ev = pd.read_csv(ctx.tables / "eval.csv")
    ev = ev[(ev.dataset == "vtab/clevr_count") & (ev.method == "tome") & (ev.source_r == 0) & ev.target_r.isin([0, 12])]
    ev.to_csv(ctx.tables / "eval.csv", index=False)
    for name in ("transfer", "bench"):
        pd.read_csv(ctx.tables / f"{name}.csv").iloc[:0].to_csv(ctx.tables / f"{name}.csv", index=False)
    for name in ("fig2_source_target", "fig3_throughput", "table1_transfer", "fig5_inference",
                 "table2_3_vtab_inference", "fig6_training", "table4_vtab_training", "table5_ablation", "table6_scale",
                 "table7_rank", "fig7_table8_evit", "table_idle", "table9_deit_s", "table10_mae", "setup_tables"):
        run(name, ctx)
    text = importlib.import_module("assemble").make(ctx)
    for stem in ("fig2_source_target", "fig3_throughput", "table1_transfer", "fig5_inference", "fig6_training",
                 "table2_vtab_natural_specialized", "table4_vtab_training", "fig7_evit", "table8_evit"):
        assert "Not in this run's grid" in (ctx.report_dir / f"{stem}.md").read_text(), stem
    t3 = (ctx.report_dir / "table3_vtab_structured.md").read_text()
    assert "Rows not in this run's grid" in t3 and "source r = 4" in t3           # partial: rows named
    t5 = (ctx.report_dir / "table5_ablation.md").read_text()
    assert "| Baseline" in t5 and "VTAB-1k tasks not in this run's grid" in t5 and "vtab/dtd" in t5
    assert text.count("Not in this run's grid") >= 9


@pytest.mark.parametrize("change, message", [
    (lambda r: r["main"].update(backbone="vit_huge"), "report.main: backbone 'vit_huge' is not defined"),
    (lambda r: r["small"].update(variant="h3"), "report.small: variant 'h3' is not defined"),
    (lambda r: r["degrees"].update(ablation=[[0, 4, 2]]), "report/degrees/ablation/0"),
])
def test_bad_report_section_stops_before_any_job(tmp_path, change, message):
    import subprocess

    from test_workflow import our_lines

    config = yaml.safe_load((REPO / "config/smoke.yaml").read_text())
    change(config["report"])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(path)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    lines = our_lines(res)
    assert res.returncode != 0 and len(lines) == 1 and lines[0].startswith("config error: ") and message in lines[0], lines
