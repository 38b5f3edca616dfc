"""The paper's protocol: config/paper.yaml against Table 13 (reference/paper_hparams.csv), with every
difference documented in docs/protocol.md; s never chosen on training images; the Table 6 grid; the
distillation recipe reaching the student; the hyper-parameter search."""
import copy
import json
import os
from functools import lru_cache
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tocom.errors import TocomError
from tocom.experiments import Grid
from tocom.settings import DistillSettings, EvalSettings, splits_overlap

ROOT = Path(__file__).resolve().parents[1]
PAPER = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
COLUMNS = {"ImageNet": "distill", "CIFAR": "cifar", "FGVC": "fgvc", "VTAB-1k": "vtab"}
TRANSFORM = {"ImageNet": "imagenet", "CIFAR": "cifar100", "FGVC": "cub200", "VTAB-1k": "vtab/cifar"}


def protocol_rows() -> dict[str, dict]:
    """Rows of docs/protocol.md's first table, keyed by setting id."""
    text = (ROOT / "docs/protocol.md").read_text()
    table = text.split("## Table 13")[1].split("## ")[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and "." in cells[0] and not cells[0].startswith("-"):
            rows[cells[0]] = dict(zip(["setting", "paper", "code", "ours", "reason"], cells))
    return rows


def norm(value) -> str:
    """One spelling per value: numbers by value, sets as {a, b}, '-' for not used."""
    if value is None or (isinstance(value, float) and value == 0.0) or value in ("-", "", False):
        return "-"
    if isinstance(value, (list, tuple)):
        return "{" + ", ".join(norm(v) for v in value) + "}"
    text = str(value).strip()
    if text.startswith("{"):
        return "{" + ", ".join(norm(v) for v in text.strip("{}").split(",")) + "}"
    try:
        return repr(float(text)) if float(text) != 0 else "-"      # 0 and "not used" are one thing
    except ValueError:
        return text


@lru_cache(maxsize=None)
def paper_grid() -> Grid:
    return Grid(PAPER, check_files=False, check_geometry=False)


def ours(column: str, key: str):
    """What config/paper.yaml (and the dataset transforms it implies) says for a Table 13 entry."""
    from tocom.data import get_spec

    grid = paper_grid()
    if column == "ImageNet":
        s, search = grid.distill_settings("deit_b", "tocom")[1], None
    else:
        s, search = grid.recipes[COLUMNS[column]]
    deit = get_spec(TRANSFORM[column]).default_transform == "deit"
    fixed = {"optimizer": "AdamW", "learning_rate_decay": "cosine", "rand_augment": "9/0.5" if deit else "-",
             "erasing_prob": 0.25 if deit else "-", "tocom_lora_targets": "W_q,W_v"}
    if key in fixed:
        return fixed[key]
    if key == "base_learning_rate":
        return (search.lr if search and search.lr else s.lr) if s.scale_lr else "-"
    if key == "learning_rate":
        return "-" if s.scale_lr else s.lr
    if key == "adaptformer_scale_grid":
        return search.adapter_scale
    if key == "tocom_scale_s_infer_grid":
        return grid.eval_settings.scales
    if key == "tocom_num_lora_groups":
        return s.r_max
    named = {"stochastic_depth": "drop_path", "mixup_prob": "mixup", "cutmix_prob": "cutmix",
             "tocom_lora_rank_h": "rank", "tocom_scale_s_train": "scale"}
    return getattr(s, named.get(key, key), None)


HPARAMS = pd.read_csv(ROOT / "reference/paper_hparams.csv", dtype=str, keep_default_na=False)
SKIP = {"tocom_train_gpu_hours", "peft_method"}      # a measurement and a method name, not settings


@pytest.mark.parametrize("column,key,paper", [tuple(r) for r in HPARAMS[["dataset", "key", "value"]].values
                                              if r[1] not in SKIP])
def test_paper_config_follows_table_13_or_documents_why_not(column, key, paper):
    rows = protocol_rows()
    mine, ident = norm(ours(column, key)), f"{column}.{key}"
    if ident in rows:            # a documented entry: its "ours" column must be what the config does
        assert norm(rows[ident]["ours"]) == mine, (ident, rows[ident]["ours"], mine)
        return
    assert mine == norm(paper), f"{ident}: paper {paper}, config/paper.yaml {mine}; fix it or add a row to docs/protocol.md"


def test_every_protocol_row_names_a_real_setting():
    known = {f"{c}.{k}" for c, k in HPARAMS[["dataset", "key"]].values}
    assert set(protocol_rows()) <= known


# ---- s is chosen on held-out images only ------------------------------------------------------------
def test_split_overlap_rule():
    assert splits_overlap("trainval", "val") and splits_overlap("train", "train") and splits_overlap("val", "trainval")
    assert not splits_overlap("train", "val") and not splits_overlap("trainval", "test")


@pytest.mark.parametrize("name", ["paper", "cpu", "smoke", "gpu"])
def test_no_config_selects_s_on_a_split_its_selecting_model_trained_on(name):
    config = yaml.safe_load((ROOT / f"config/{name}.yaml").read_text())
    grid = Grid(config, check_files=False, check_geometry=False)
    select = grid.eval_settings.select_split
    for ev in grid.evals.values():
        chooser = ev.selector or ev.finetune
        assert not splits_overlap(grid.finetune_settings(chooser).split, select), ev.finetune.path
        if ev.selector:      # the companion matches the final model but for the split
            final, sel = grid.finetune_settings(ev.finetune), grid.finetune_settings(ev.selector)
            assert sel.replace(split=final.split) == final and ev.selector.source == ev.finetune.source


def test_vtab_final_models_get_a_train800_companion():
    grid = Grid(PAPER, check_files=False, check_geometry=False)
    ev = next(e for e in grid.evals.values() if e.finetune.dataset == "vtab/dtd" and e.finetune.source == 16)
    assert grid.finetune_settings(ev.finetune).split == "trainval"
    assert ev.selector is not None and grid.finetune_settings(ev.selector).split == "train"


@pytest.mark.parametrize("dataset", ["cifar100", "cub200", "stanford_cars", "stanford_dogs", "oxford_flowers102"])
def test_cifar_and_fgvc_final_models_train_on_all_of_train(dataset):
    """As the paper and the authors: the evaluated models see all of train (trainval = train + the held-out 10 %);
    s is chosen on that 10 % by a companion trained on the other 90 %, at every source."""
    grid = Grid(PAPER, check_files=False, check_geometry=False)
    evs = [e for e in grid.evals.values() if e.finetune.dataset == dataset]
    assert {e.finetune.source for e in evs} == {0, 2, 4, 6, 8, 10, 12, 16}
    for ev in evs:
        assert grid.finetune_settings(ev.finetune).split == "trainval"
        assert ev.selector is not None and grid.finetune_settings(ev.selector).split == "train"
        assert (ev.selector.method, ev.selector.source) == (ev.finetune.method, ev.finetune.source)


def test_a_companion_that_would_retrain_the_search_winner_is_the_winner():
    """At the search's source r (0), a companion on `train` with the chosen settings is the winning candidate
    trained again (same seed, split, settings): it is that candidate's model, linked next to chosen.json. Above
    r = 0, and for datasets without a search (CIFAR-100), companions train."""
    from tocom import layout

    grid = Grid(PAPER, check_files=False, check_geometry=False)
    chosen = {(e.finetune.backbone, e.finetune.dataset, e.finetune.source): e.selector for e in grid.evals.values()
              if e.selector is not None and e.selector.role == "chosen"}
    searched = {(c.backbone, c.dataset) for c in grid.searches.values()}
    assert {(bb, d) for bb, d, _ in chosen} == searched and len(searched) == 4 + 19 * 3
    assert {source for *_, source in chosen} == {0}
    for sel in chosen.values():
        assert sel.path == layout.path(layout.CHOSEN_MODEL, backbone=sel.backbone, method=sel.method,
                                       dataset=sel.dataset, seed=sel.seed)
        assert sel.chosen_path == grid.chosen_path(sel) and sel.path not in grid.finetunes     # nothing trains
        assert grid.retrains_winner(sel)
    trained = [r for r in grid.finetunes.values() if r.role == "select"]
    assert not any(grid.retrains_winner(r) for r in trained)
    assert {r.source for r in trained if r.dataset == "cifar100"} == {0, 2, 4, 6, 8, 10, 12, 16}


def test_a_companion_that_differs_from_every_candidate_trains():
    """Settings the choice does not set, or a dataset override, make the companion another model: it trains."""
    config = copy.deepcopy(PAPER)
    config["dataset_settings"] = {"vtab/dtd": {"adapter_dim": 16}}        # companion and candidates alike: reused
    grid = Grid(config, check_files=False, check_geometry=False)
    dtd = next(e for e in grid.evals.values() if e.finetune.dataset == "vtab/dtd" and e.finetune.source == 0)
    assert dtd.selector.role == "chosen"
    config["recipes"]["fgvc"]["search"] = {"lr": [1.0e-3], "source_r": 4}       # searched at r = 4 (per method)
    grid = Grid(config, check_files=False, check_geometry=False)
    cub = {(e.method, e.finetune.source): e.selector for e in grid.evals.values() if e.finetune.dataset == "cub200"}
    assert cub[("tome", 4)].role == "chosen" and cub[("tome", 0)].role == "select"
    assert cub[("tome", 2)].role == "select"


def test_evaluation_refuses_to_select_on_training_images(tmp_path):
    from tocom.engine.evaluate import check_selection

    with pytest.raises(TocomError, match="contains the selection split"):
        check_selection({"split": "trainval"}, "val", "the final model")
    check_selection({"split": "train"}, "val", "the final model")


# ---- Table 6: the grid follows each plugin's training scale ---------------------------------------------
def test_scale_grid_follows_the_plugins_training_scale():
    s = EvalSettings()
    assert s.grid_for(0.1) == s.scales
    assert s.grid_for(1.0) == tuple(round(10 * v, 12) for v in s.scales)
    assert s.grid_for(0.01)[-1] == pytest.approx(0.015)


# ---- the search stage ---------------------------------------------------------------------------------
def test_search_expands_the_papers_grids_once_per_dataset():
    grid = Grid(PAPER, check_files=False, check_geometry=False)
    cub = [c for c in grid.searches.values() if c.dataset == "cub200"]
    assert sorted(dict(c.overrides)["lr"] for c in cub) == [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3]
    assert {c.method for c in cub} == {"none"} and {c.source for c in cub} == {0}   # r = 0 serves every method
    assert all(grid.finetune_settings(c).split == "train" for c in cub)
    dtd = {dict(c.overrides)["adapter_scale"] for c in grid.searches.values()
           if c.dataset == "vtab/dtd" and c.backbone == "deit_b"}
    assert dtd == {0.01, 0.1, 1.0, 10.0, 100.0}
    evit = next(r for r in grid.finetunes.values() if r.method == "evit" and r.dataset == "cub200")
    assert grid.chosen_path(evit) == cub[0].chosen_path


def test_select_keeps_the_best_held_out_score(tmp_path):
    from tocom.search import read_chosen, select

    paths = []
    for lr, top1 in ((1e-3, 50.0), (2e-3, 61.0), (5e-4, 61.0)):
        p = tmp_path / f"{lr}.json"
        p.write_text(json.dumps({"top1": top1, "split": "val", "settings": {"lr": lr, "adapter_scale": 0.1}}))
        paths.append(p)
    result = select(paths, tmp_path / "chosen.json")
    assert result["chosen"] == {"lr": 2e-3}                 # ties: the earlier candidate
    assert read_chosen(tmp_path / "chosen.json") == {"lr": 2e-3}
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(TocomError, match="not valid JSON"):
        select([tmp_path / "bad.json"], tmp_path / "x.json")


def test_link_chosen_links_the_winners_model_and_checks_its_settings(tmp_path):
    """`tocom link-chosen`: a relative symlink to the model whose score won (the same rule as `select`), replaced
    atomically; a model not trained with the chosen settings, or no model for the winner, is one line."""
    from tocom.cli import main
    from tocom.io import write_safetensors
    from tocom.search import link_chosen, select

    models = []
    for lr, top1 in ((1e-3, 50.0), (2e-3, 61.0), (5e-4, 61.0)):
        m = tmp_path / "search" / f"lr{lr!r}.safetensors"
        settings = {"lr": lr, "adapter_scale": 0.1, "split": "train"}
        write_safetensors({"w": torch.full((2,), lr)}, m, {"tocom": {"backbone": "b", "settings": settings}})
        Path(f"{m}.score.json").write_text(json.dumps({"top1": top1, "split": "val", "settings": settings}))
        models.append(m)
    chosen = tmp_path / "search" / "chosen.json"
    select([f"{m}.score.json" for m in models], chosen)
    out = tmp_path / "search" / "chosen.safetensors"
    assert link_chosen(chosen, models, out) == models[1]                       # ties: the earlier candidate
    assert out.is_symlink() and os.readlink(out) == models[1].name and out.resolve() == models[1].resolve()
    assert main(["link-chosen", "--chosen", str(chosen), "--candidates", *map(str, models), "--out", str(out)]) == 0
    assert out.resolve() == models[1].resolve() and not list(out.parent.glob(".*.tmp"))
    with pytest.raises(TocomError, match="not among the given candidates"):
        link_chosen(chosen, [models[0], models[2]], out)
    with pytest.raises(TocomError, match="is not a link"):                   # a file there is never replaced
        link_chosen(chosen, [models[0], models[2], models[1]], models[2])
    assert not models[2].is_symlink()
    write_safetensors({"w": torch.zeros(2)}, models[1], {"tocom": {"backbone": "b", "settings": {"lr": 1.0}}})
    with pytest.raises(TocomError, match="not trained with the chosen lr"):
        link_chosen(chosen, models, out)


# ---- the distillation recipe reaches the student ------------------------------------------------------
def test_distillation_recipe_reaches_the_student(monkeypatch):
    """Student in train mode with stochastic depth, LoRA dropout and mixed images; teacher in eval mode on
    the same mixed images; lr = base x batch / 512."""
    from tocom.engine import distill as engine
    from tocom.engine.common import set_drop_path
    from tocom.models import create_backbone
    from tocom.plugin import ToCom

    torch.manual_seed(0)
    model = create_backbone("tocom_vit_tiny_patch8_56", num_classes=10, embed_dim=48, num_heads=3)
    engine.patch(model, "tome")
    s = DistillSettings(r_max=4, batch_size=8, lr=1e-3, drop_path=0.1, lora_dropout=0.5, mixup=0.8, cutmix=0.0)
    assert s.effective_lr == pytest.approx(1e-3 * 8 / 512)
    plugin = ToCom.for_model(model, r_max=4)
    with torch.no_grad():
        for p in plugin.B.values():
            p.normal_()
    set_drop_path(model, s.drop_path)
    job = engine.SelfDistillation(model, plugin, s).train()
    seen = []
    model.register_forward_pre_hook(lambda mod, args: seen.append((mod.training, args[0].clone())))
    images, labels = torch.randn(8, 3, 56, 56), torch.arange(8) % 10
    job(images.clone(), labels)      # timm's Mixup mixes in place
    (student_mode, student_in), (teacher_mode, teacher_in) = seen
    assert student_mode and not teacher_mode
    assert torch.equal(student_in, teacher_in) and not torch.allclose(student_in, images)   # mixed, alike
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    # LoRA dropout: two student passes at the same degrees differ only through the dropout
    seen.clear()
    torch.manual_seed(1)
    model.train()
    with engine.compensate(model, plugin, 0, 4, scale=1.0, merge=False, set_degree=False, dropout=0.5):
        set_drop_path(model, 0.0)
        a, b = model(images), model(images)
    assert not torch.allclose(a, b)
    model.eval()
    with engine.compensate(model, plugin, 0, 4, scale=1.0, merge=False, set_degree=False, dropout=0.5):
        assert torch.allclose(model(images), model(images))


# ---- docs/results.md quotes a run of the committed CPU default --------------------------------------
def test_results_page_quotes_a_run_of_the_committed_cpu_config():
    """The results block is generated from a run (workflow/scripts/readme_results.py) and records the
    digest of the config it ran (what it computes, not how it is written); changing a value in config/cpu.yaml
    without rerunning and regenerating fails here."""
    import re

    from tocom.experiments import config_digest

    text = (ROOT / "docs" / "results.md").read_text()
    found = re.search(r"<!-- cpu-results config/cpu\.yaml sha256:([0-9a-f]{16}) ", text)
    assert found, "docs/results.md has no generated CPU results block: run the default, then workflow/scripts/readme_results.py"
    assert found.group(1) == config_digest(yaml.safe_load((ROOT / "config/cpu.yaml").read_text())), \
        "config/cpu.yaml changed since the run docs/results.md quotes: rerun it and regenerate the block"


def test_readme_lists_every_tocom_subcommand():
    """The README's command table names every subcommand the CLI registers, and nothing else."""
    import re

    from tocom.cli import COMMANDS

    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Command line"):]
    table = table[:table.index("\n## ", 1)]
    listed = re.findall(r"^\| `tocom ([a-z-]+)` \|", table, re.M)
    assert sorted(listed) == sorted(COMMANDS)
    assert len(listed) == len(set(listed))


def test_readme_stage_times_come_from_the_snakemake_log(tmp_path):
    """Jobs run side by side, so a stage's place on the run's timeline is read from Snakemake's log (job
    start and finish), not summed from benchmark files; a log in Snakemake 9's format, two jobs overlapping."""
    import sys

    sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
    import readme_results

    log = tmp_path / "run.snakemake.log"
    log.write_text(
        "[Sun Nov 22 08:00:00 2026]\nrule pretrain_backbone:\n    output: a\n    jobid: 3\n    threads: 2\n"
        "[Sun Nov 22 08:10:00 2026]\nFinished jobid: 3 (Rule: pretrain_backbone)\n1 of 4 steps (25%) done\n"
        "[Sun Nov 22 08:10:00 2026]\nrule distill:\n    output: b\n    jobid: 7\n"
        "[Sun Nov 22 08:11:00 2026]\nrule distill:\n    output: c\n    jobid: 8\n"
        "[Sun Nov 22 08:14:00 2026]\nlocalrule make_task:\n    jobid: 9\n"
        "[Sun Nov 22 08:14:30 2026]\nFinished jobid: 9 (Rule: make_task)\n"
        "[Sun Nov 22 08:16:00 2026]\nFinished jobid: 8 (Rule: distill)\n"
        "[Sun Nov 22 08:20:00 2026]\nFinished jobid: 7 (Rule: distill)\n")
    jobs = readme_results.job_times(log)
    assert sorted(jobs.rule) == ["distill", "distill", "make_task", "pretrain_backbone"]
    runtime = pd.DataFrame({"rule": ["pretrain", "distill", "distill"], "job": ["p", "d1", "d2"],
                            "s": [600.0, 600.0, 300.0]})
    table = readme_results.stage_table(runtime, jobs)
    assert "| pretrain backbone | 1 | 10.0 | 0 → 10 |" in table
    assert "| distil plugins | 2 | 15.0 | 10 → 20 |" in table   # 15 job-minutes in 10 minutes of wall-clock


def test_cpu_default_table_in_protocol_md_matches_config_cpu():
    """docs/protocol.md's table of the CPU default's differences quotes config/cpu.yaml's numbers."""
    cfg = yaml.safe_load((ROOT / "config/cpu.yaml").read_text())
    text = (ROOT / "docs/protocol.md").read_text()
    table = text[text.index("## The CPU default"):]
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    pre, dist = cfg["backbones"]["tiny"]["pretrain"], cfg["distill"]
    assert f"{pre['limit'] // 1000}k Fashion-MNIST train images ({pre['epochs']} epochs)" in rows["backbone and pre-training"]
    assert f"{dist['epochs']} epochs on {dist['limit'] // 1000}k pre-training images" in rows["distillation"]
    (epochs,) = {r["epochs"] for r in cfg["recipes"].values()}
    assert f"{epochs} epochs" in rows["fine-tuning"]
    assert f"{len(cfg['seeds'])} per fine-tune" in rows["seeds"]
    assert f"{cfg['evaluate']['limit']} per task" in rows["test images"] and cfg["tasks"]["n_test"] == cfg["evaluate"]["limit"]
