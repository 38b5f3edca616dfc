"""The Snakemake workflow: config checks, the paper DAG, the smoke pipeline, and reliability
(killed training job, killed snakemake, failing job, rerun of a finished pipeline)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# The reliability tests' fine-tune (mini_config: source r = 0, so filed under method "none", shared by every method)
MINI_FT = "finetune/tiny/none/synth__count/r0_seed0.safetensors"
MINI_FT_LOG = "logs/finetune/tiny_none_synth__count_r0_seed0.log"


def snakemake(*args, cwd=REPO, timeout=900, **kw):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.run(SNAKEMAKE + list(args), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, **kw)


def our_lines(res) -> list[str]:
    """Non-empty output lines, without Snakemake's banner naming the profiles it applied."""
    return [line for line in (res.stdout + res.stderr).splitlines()
            if line.strip() and not re.match(r"Using (workflow specific )?profiles? ", line)]


def smoke_config(**changes) -> dict:
    config = yaml.safe_load((REPO / "config/smoke.yaml").read_text())
    config.update(changes)
    return config


def write(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def mini_config(name: str, epochs: int = 1) -> dict:
    """Pretrain -> distill -> fine-tune -> evaluate on one dataset: the reliability tests' DAG."""
    config = smoke_config(name=name, transfer=[], bench=[])
    config["studies"] = [{"name": "tome", "backbone": "tiny", "method": "tome",
                          "sets": [{"datasets": ["synth/count"], "recipe": "vtab", "sources": [0],
                                    "targets": [0, 2], "variants": ["tocom"]}]}]
    config["recipes"]["vtab"].update(epochs=epochs, limit=256, batch_size=16)
    return config


def outputs_are_whole(results: Path) -> None:
    """Every safetensors and CSV under `results` loads; no temporary files are left behind."""
    for f in results.rglob("*.safetensors"):
        if ".resume" not in f.parts[-2]:
            load_file(str(f))
    for f in results.rglob("*.csv"):
        pd.read_csv(f)
    assert not [p for p in results.rglob("*.tmp")], "temporary files left behind"


# ---- configs and the paper DAG ----------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(scalez=[0.1]), "'scalez' was unexpected"),
    (lambda c: c["studies"][0]["sets"][0].update(targets=[0, 9]), "r [9] exceeds what tiny carries (max r = 4"),
    (lambda c: (c.update(data_roots={"fashion_mnist": "/nowhere/fmnist"}),
                c["studies"][0]["sets"][0].update(datasets=["fashion_mnist"])), "/nowhere/fmnist"),
    (lambda c: c["distill"].update(r_max=2), "need a plugin with r_max >= 4"),
    (lambda c: c["backbones"]["tiny"].update(checkpoint="/nowhere/deit.pth"), "give exactly one of pretrain"),
    (lambda c: c["studies"][0].update(backbone="vit_huge"), "backbone 'vit_huge' is not defined"),
    (lambda c: c["studies"][0]["sets"][0].update(datasets=["cifar1000"]), "unknown dataset 'cifar1000'"),
    (lambda c: c["transfer"][0].update(high_r=99), "transfer: r [99] exceeds what tiny carries"),
    (lambda c: c["evaluate"].update(select_split="vall"), "select_split"),
    # EViT (and IdleViT, which shares its sets) asks for synth/texture at r = 0 with another recipe than ToMe
    (lambda c: c["studies"][1]["sets"][0].update(recipe="vtab"),
     "synth/texture is fine-tuned with two recipes (cifar, vtab) for tiny at source r = 0 (one fine-tune serves every"),
    (lambda c: c["evaluate"].update(scales=[-0.1]), "evaluate/scales/0"),
    (lambda c: c["recipes"]["cifar"].update(epochs=0), "recipes/cifar/epochs"),
    (lambda c: c["distill"].update(lr=float("nan")), "lr must be a finite number"),
    (lambda c: c["recipes"]["vtab_refit"]["search"].update(lr=[]), "search/lr"),
    (lambda c: (c.update(data_root="/nonexistent"),
                c["studies"][0]["sets"][0].update(datasets=["fashion_mnist"])), "/nonexistent/fashion-mnist"),
    (lambda c: c.update(seeds=[0, 0]), "seeds: 0 listed more than once"),       # Table 1 would count pairs twice
    (lambda c: c.update(name=".."), "name: '..' does not match"),                # results would land in the repo root
    # a per-GPU batch that cannot fit the GPU the config names (8,192 images of 2.2 MB of activations > 16 GB)
    (lambda c: (c["resources"]["finetune"].update(gpus=1, gpu_model="V100-16GB"),
                c["recipes"]["cifar"].update(batch_size=8192)), "resources.finetune.gpu_model V100-16GB (16 GB): job"),
    (lambda c: c["resources"].update({"finetune.nope": {"gpus": 1}}), "resources.finetune.nope: no recipe 'nope'"),
    (lambda c: c["resources"]["eval"].update(gpu_model="H100"), "resources/eval/gpu_model"),
])
def test_bad_config_stops_before_any_job_with_one_line(tmp_path, change, message):
    config = smoke_config()
    change(config)
    res = snakemake("-n", "--configfile", str(write(config, tmp_path / "c.yaml")))
    assert res.returncode != 0
    lines = our_lines(res)
    assert len(lines) == 1 and lines[0].startswith("config error: "), lines
    assert "Traceback" not in lines[0] and "rule " not in res.stdout
    if message:
        assert message in lines[0]


def test_default_config_applies_unless_a_configfile_is_given(tmp_path):
    """--config alone overrides on top of the CPU default; an empty --configfile is named, not replaced."""
    res = snakemake("-n", "--config", "device=cpu")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "results/cpu/" in res.stdout
    (tmp_path / "empty.yaml").write_text("{}\n")
    res = snakemake("-n", "--configfile", str(tmp_path / "empty.yaml"))
    lines = our_lines(res)
    assert res.returncode != 0 and len(lines) == 1 and "holds no pipeline config" in lines[0], lines


def test_config_overrides_in_lists_and_mappings_are_typed_as_in_a_config_file():
    """`--config seeds=[3,4,5]` (the disjoint-seed rerun docs/results.md quotes) runs seeds 3-5, pre-training and
    distillation included (they take the first seed); a nested override keeps the rest of its section."""
    res = snakemake("-n", "-p", "--config", "seeds=[3,4,5]", "distill={epochs: 2}")
    assert res.returncode == 0, our_lines(res)[-3:]
    out = res.stdout
    assert all(f"_seed{s}.safetensors" in out for s in (3, 4, 5)) and "_seed0.safetensors" not in out
    pretrain = next(line for line in out.splitlines() if "pretrain-backbone" in line)
    distill = next(line for line in out.splitlines() if " distill " in line and "--out" in line)
    assert "--seed 3" in pretrain and "--seed 3" in distill
    assert "--epochs 2" in distill and "--limit 20000" in distill      # the file's other distill settings stay


def test_the_cpu_defaults_generated_task_is_made_by_its_rule(tmp_path):
    """make_task through Snakemake, as the CPU default runs it: Snakemake makes the task's folder before the job,
    and the step replaces that empty folder (never a user's); a second run has nothing to do."""
    from tocom import layout

    target = layout.run_dir("cpu") + "/" + layout.path(layout.TASK_LIST, task="small",
                                                       split_file=layout.VTAB_SPLIT_FILES["test"])
    cpu = ("--configfile", str(REPO / "config/cpu.yaml"), "--cores", "1", "--directory", str(tmp_path))
    res = snakemake(*cpu, target)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / target).is_file() and (tmp_path / target).with_name("tocom-task.json").is_file()
    again = snakemake("-n", *cpu, target)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_missing_data_root_and_checkpoint_are_named(tmp_path):
    config = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    res = snakemake("-n", "--configfile", str(write({**config, "data_root": str(tmp_path / "none")}, tmp_path / "p.yaml")))
    assert res.returncode != 0 and str(tmp_path / "none") in res.stderr + res.stdout
    config["backbones"]["deit_b"] = {"timm": "deit_base_patch16_224", "checkpoint": str(tmp_path / "deit.pth")}
    res = snakemake("-n", "--configfile", str(write(config, tmp_path / "p2.yaml")), "--config", f"data_root={tmp_path}")
    assert "no checkpoint at" in res.stdout + res.stderr and str(tmp_path / "deit.pth") in res.stdout + res.stderr


def test_jobs_read_the_grid_without_torch():
    """Every job re-parses the Snakefile; with the checks off (the main process ran them) the grid
    must not import torch or timm, or each SLURM job pays seconds for it. The paths are the same."""
    code = (
        "import sys, yaml; from tocom.experiments import Grid; "
        "c = yaml.safe_load(open('config/paper.yaml')); "
        "g = Grid(c, check_files=False, check_geometry=False); "
        "assert not {'torch', 'timm'} & set(sys.modules), sorted(m for m in sys.modules if m.startswith(('torch', 'timm'))); "
        "print(len(g.finetunes), len(g.evals), sorted(g.final_outputs())[:3])"
    )
    light = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert light.returncode == 0, light.stderr[-2000:]
    from tocom.experiments import Grid

    full = Grid(yaml.safe_load((REPO / "config/paper.yaml").read_text()), check_files=False)
    assert light.stdout.strip() == f"{len(full.finetunes)} {len(full.evals)} {sorted(full.final_outputs())[:3]}"


@pytest.fixture
def paper_data_root(tmp_path):
    for d in ("imagenet", "cifar100", "cub200", "stanford_cars", "stanford_dogs", "oxford_flowers102", "vtab-1k",
              "ade20k"):
        (tmp_path / "data" / d).mkdir(parents=True)
    return tmp_path / "data"


def test_paper_dag_dry_run(paper_data_root):
    started = time.time()
    res = snakemake("-n", "--configfile", "config/paper.yaml", "--config", f"data_root={paper_data_root}")
    assert res.returncode == 0, res.stderr[-2000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", res.stdout, re.M))
    # 14 plugins: 9 ToMe variants on DeiT-B, EViT, IdleViT, DeiT-S, MAE, and Table 11's tome_ffn plugin (DeiT-B/384)
    assert counts["distill"] == "14" and counts["transfer"] == "4" and counts["bench"] == "3"
    assert counts["segment_finetune"] == "1" == counts["segment_evaluate"]
    # Evaluations, one per model and method: CIFAR+FGVC 5 datasets x 8 sources for each of ToMe, EViT, IdleViT
    # (Figs. 2, 7 need source = target); VTAB-1k 19 x (4 ToMe sources + 2 each for EViT, IdleViT, DeiT-S, MAE).
    assert counts["evaluate"] == str(3 * 5 * 8 + 19 * (4 + 4 * 2))                         # 348
    # Fine-tunes: a source r = 0 model compresses nothing, so ToMe, EViT and IdleViT share it (one per backbone
    # and dataset): CIFAR+FGVC 5 x (8 ToMe sources + the 7 sources > 0 of EViT and of IdleViT); VTAB-1k DeiT-B
    # 19 x (4 ToMe sources + r = 16 for EViT and for IdleViT), DeiT-S and MAE 19 x 2 each (one method each).
    assert counts["finetune"] == str(5 * (8 + 2 * 7) + 19 * (4 + 2 * 1) + 19 * 2 * 2)       # 300 (was 348)
    # every final model trains on all of its training data (CIFAR/FGVC train, VTAB-1k train800val200), so each has
    # a companion trained on `train` that chooses s, shared at r = 0 like the model itself: 300, of which the 61
    # at r = 0 of a searched dataset (FGVC 4, VTAB-1k 19 x 3 backbones) are their search's winning candidate,
    # linked (search_chosen), not retrained
    assert counts["finetune_select"] == str(300 - 4 - 19 * 3)                                # 239
    assert counts["search_chosen"] == str(4 + 19 * 3)
    # searches at r = 0, shared by the methods: FGVC lr (4 x 6), VTAB adapter scale (19 x 5 x 3 backbones)
    assert counts["search_candidate"] == str(4 * 6 + 19 * 5 * 3) and counts["search_select"] == str(4 + 19 * 3)
    # CIFAR-100's batch of 1,024 runs on 8 GPUs (resources.finetune.cifar), FGVC's 64 on one (resources.finetune)
    jobs = dict(re.findall(r"output: results/paper/(\S+)\n(?:    .*\n)*?    resources: (.*)\n", res.stdout))
    assert "gpu=8," in jobs["finetune/deit_b/tome/cifar100/r4_seed0.safetensors"]
    assert "gpu=8," in jobs["select/deit_b/none/cifar100/r0_seed0.safetensors"]
    assert "gpu=1," in jobs["finetune/deit_b/tome/cub200/r4_seed0.safetensors"]
    print(f"paper dry run: {time.time() - started:.1f} s")


@pytest.mark.parametrize("name, finetunes", [
    ("cpu", None),
    # paper: test_paper_dag_dry_run's 300 final models and 239 trained companions (the 61 others are search winners)
    ("paper", 300 + 239),
])
def test_one_source0_finetune_serves_every_method(name, finetunes):
    """At source r = 0 nothing is compressed while fine-tuning: one model per (backbone, dataset, seed, role),
    filed under method none, whatever the number of methods; each evaluation keeps the method it evaluates."""
    from tocom.experiments import Grid
    from tocom.settings import UNCOMPRESSED

    config = yaml.safe_load((REPO / f"config/{name}.yaml").read_text())
    grid = Grid(config, check_files=False, check_geometry=False)
    assert finetunes is None or len(grid.finetunes) == finetunes
    at0 = [r for r in grid.finetunes.values() if r.source == 0]
    keys = [(r.backbone, r.dataset, r.seed, r.role) for r in at0]
    assert len(keys) == len(set(keys)) and {r.method for r in at0} == {UNCOMPRESSED}
    # exactly the (backbone, dataset, seed) any method or the transfer check asks for at r = 0, once each
    asked = {(st["backbone"], d, seed) for st in config["studies"] for block in st["sets"] if 0 in block["sources"]
             for d in block["datasets"] for seed in grid.seeds}
    asked |= {(t["backbone"], d, seed) for t in config.get("transfer", []) for d in [t["a"], *t["b"]]
              for seed in grid.seeds}
    assert {(bb, d, seed) for bb, d, seed, role in keys if role == "final"} == asked
    assert all(r.method != UNCOMPRESSED for r in grid.finetunes.values() if r.source > 0)
    evaluated: dict = {}
    for path, ev in grid.evals.items():
        ft = ev.finetune
        assert path == ev.path and path.split("/")[2] == ev.method != UNCOMPRESSED
        assert grid.finetunes[ft.path] == ft and ft.method == (UNCOMPRESSED if ft.source == 0 else ev.method)
        assert ev.selector is None or (ev.selector.method, ev.selector.source) == (ft.method, ft.source)
        evaluated.setdefault(ft.path, set()).add(ev.method)
    assert set(evaluated) == {r.path for r in grid.finetunes.values() if r.role == "final"}
    assert {"tome", "evit", "idle"} in evaluated.values()       # one model, three evaluations
    for t in grid.transfers:                                      # Table 1 reads the shared r = 0 models
        assert [(r.method, r.source) for r in t.models] == [(t.method, t.high_r), (UNCOMPRESSED, 0), (UNCOMPRESSED, 0)]
        assert all(grid.finetunes[r.path] == r for r in t.models)
    # the r = 0 searches are filed under the same name as the models that apply them
    assert {c.method for c in grid.searches.values()} <= {UNCOMPRESSED}


def test_ablation_plugins_on_every_task_are_evaluated_at_the_ablation_pairs_only():
    """Tables 5-7's plugins on every task's models of the CPU default (claims 6-7 over 6 tasks x seeds; the
    design for its next run, docs/results.md) are evaluated only at the report's ablation degree pairs: a plugin's
    targets are those of the sets that name it, not every target the model is evaluated at (4 -> 2 is evaluated
    plain and with ToCom, never with an ablation plugin)."""
    from tocom.experiments import Grid

    config = yaml.safe_load((REPO / "config/cpu.yaml").read_text())
    tome = next(st for st in config["studies"] if st["name"] == "tome")
    variants = tome["sets"].pop()["variants"]                   # the ablation set, on two tasks today
    for recipe in ("full", "vtab"):
        tasks = [d for st in tome["sets"] if st["recipe"] == recipe for d in st["datasets"]]
        tome["sets"] += [{"datasets": tasks, "recipe": recipe, "sources": [0], "targets": [2, 4], "variants": variants},
                         {"datasets": tasks, "recipe": recipe, "sources": [4], "targets": [0], "variants": variants}]
    grid = Grid(config, check_files=False, check_geometry=False)
    ablations = {v for kind in config["report"]["variants"].values() for v in kind}
    wanted = {tuple(p) for p in config["report"]["degrees"]["ablation"]}
    pairs, tasks = set(), set()
    for ev in grid.evals.values():
        source = ev.finetune.source
        assert ev.plugin_targets.get("tocom") == ev.targets
        for v, targets in ev.plugin_targets.items():
            assert targets <= ev.targets
            if v in ablations:
                pairs |= {(source, t) for t in targets}
                tasks.add((ev.finetune.dataset, ev.finetune.seed))
                assert set(ev.plugin_targets) >= ablations and ev.method == "tome"
    assert pairs == wanted and len(tasks) == 6 * len(grid.seeds)
    assert any(ev.finetune.source == 4 and 2 in ev.targets for ev in grid.evals.values())


def test_plugins_with_the_same_teacher_share_its_outputs_computed_once():
    """distill.teacher once: the plugins of a backbone and method whose teachers see the same images at the same
    degrees read one teacher-outputs file; the cls loss (no teacher), a plugin alone in its method and plugins
    that keep teacher live read none; a dataset read with augmentations refuses teacher once before any job."""
    from tocom.experiments import Grid
    from tocom.errors import TocomError

    config = smoke_config()
    grid = Grid(config, check_files=False, check_geometry=False)
    assert list(grid.teachers) == ["teachers/tiny/tome.safetensors"]
    assert grid.teachers["teachers/tiny/tome.safetensors"] == ("tiny", "tome", "tocom")
    sharing = {v for b, m, v in grid.plugins if grid.teacher_file(b, m, v)}
    assert sharing == {"tocom", "shared", "no_inversion", "h1", "h4", "h8", "s1", "s0.01"}      # not cls
    assert not any(grid.teacher_file(b, m, v) for b, m, v in grid.plugins if (b, m) != ("tiny", "tome"))
    other = smoke_config()
    other["variants"]["h4"] = {"rank": 4, "limit": 64}              # other images: its own teacher, as it goes
    assert Grid(other, check_files=False, check_geometry=False).teacher_file("tiny", "tome", "h4") is None
    paper = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    assert not Grid(paper, check_files=False, check_geometry=False).teachers     # the paper mixes its images
    augmented = smoke_config()
    augmented["distill"]["dataset"] = "imagenet"
    with pytest.raises(TocomError, match="teacher once needs images read without augmentation, but imagenet"):
        Grid(augmented, check_files=True, check_geometry=False)


def test_a_search_above_r0_keeps_the_r0_finetune_per_method():
    """A recipe searched at a source r > 0 chooses its settings per method, so its r = 0 fine-tune is the method's own."""
    from tocom.experiments import Grid

    config = smoke_config()
    config["recipes"]["vtab_refit"]["search"]["source_r"] = 4
    grid = Grid(config, check_files=False, check_geometry=False)
    refit = [r for r in grid.finetunes.values() if r.recipe == "vtab_refit"]
    assert {(r.method, r.source) for r in refit} == {("tome", 0), ("tome", 4)}
    assert {(c.method, c.source) for c in grid.searches.values()} == {("tome", 4)}


def test_smoke_dag_dry_run_counts(tmp_path):
    res = snakemake("-n", "--configfile", "config/smoke.yaml", "--directory", str(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    counts = {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", res.stdout, re.M)}
    # Fine-tunes on tiny: ToMe shapes {0, 4}, texture {0, 1, 2, 4}, orientation and count {0, 1, 2, 4} = 14;
    # EViT and IdleViT texture {0, 4}, whose r = 0 model is ToMe's: + 1 each; tiny2 count {0, 4} = 2.
    # 18 in all (20 before the r = 0 fine-tune was shared); the transfer check's models are among them.
    assert counts["finetune"] == 2 + 4 + 2 * 4 + 2 * 1 + 2 == 18
    # one evaluation per model and method: 14 ToMe + 2 EViT + 2 IdleViT + 2 tiny2
    assert counts["evaluate"] == 14 + 2 + 2 + 2 == 20
    # tiny2's vtab_refit trains on trainval: a train companion per source, and one adapter-scale search
    # (2 candidates) at r = 0, whose winner is the r = 0 companion (linked, not retrained)
    assert (counts["finetune_select"], counts["search_candidate"], counts["search_select"]) == (1, 2, 1)
    assert counts["search_chosen"] == 1
    assert "results/smoke/search/tiny2/none/synth__count/seed0/chosen.safetensors" in res.stdout
    assert (counts["pretrain_backbone"], counts["distill"], counts["transfer"]) == (2, 14, 1)
    assert "results/smoke/finetune/tiny/none/synth__texture/r0_seed0.safetensors" in res.stdout
    assert "finetune/tiny/evit/synth__texture/r0" not in res.stdout
    # every job has a log under the run's logs/ ("all" runs nothing)
    jobs = re.findall(r"^(?:local)?rule (\w+):\n((?:    .*\n)*)", res.stdout, re.M)
    assert len(jobs) == sum(counts.values()) - counts["total"]
    unlogged = {name for name, body in jobs if "    log: results/smoke/logs/" not in body}
    assert unlogged == {"all"}, unlogged


# ---- the run layout and the plugin variants ----------------------------------------------------------
LAYOUT_VALUES = dict(backbone="deit_b", method="tome_ffn", variant="s0.01", dataset="vtab/cifar", source=16, seed=2,
                     candidate="adapter_scale0.1", a="vtab/dtd", b="cub200", high=12, mode="plugin", task="count",
                     split_file="test.txt", table="eval", stage="bench", job="deit_b_tome_infer", item="table1",
                     ext=".md")


def test_layout_parses_back_what_it_fills_in():
    """Every template of the run layout: a filled-in path (under any run folder) parses back to the same
    fields, integers as integers and dataset names with their "/"; a path of another shape does not parse."""
    from tocom import layout

    templates = {k: v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str) and "{" in v}
    assert {"EVAL", "TRANSFER", "BENCH", "PLUGIN", "FINETUNE", "SELECT", "CHOSEN", "LOG", "BENCHMARK"} <= set(templates)
    for name, template in templates.items():
        fields = {f: LAYOUT_VALUES[f] for f in layout.fields_of(template)}
        path = layout.path(template, **fields)
        assert "{" not in path and "vtab/" not in path, (name, path)
        assert layout.parse(template, f"results/paper/{path}") == fields, name
    assert layout.path(layout.TRANSFER, **{k: LAYOUT_VALUES[k] for k in ("backbone", "method", "a", "b", "high",
                                                                          "seed")}) == \
        "transfer/deit_b/tome_ffn/vtab__dtd_to_cub200_r12_seed2.csv"
    for template, wrong in ((layout.EVAL, "eval/deit_b/tome/cifar100/seed0.csv"),           # no source r
                            (layout.EVAL, "eval/deit_b/merge/cifar100/r0_seed0.csv"),       # not a method
                            (layout.BENCH, "bench/deit_b/tome.csv"),
                            (layout.FINETUNE, "select/deit_b/tome/cifar100/r0_seed0.safetensors")):
        with pytest.raises(ValueError, match="is not laid out as"):
            layout.parse(template, wrong)
    with pytest.raises(KeyError, match="seed"):
        layout.path(layout.EVAL, backbone="b", method="tome", dataset="d", source=0)


def test_layout_names_jobs_after_their_outputs():
    """A job's log and benchmark are named after its output (the rules' `log:`/`benchmark:` patterns); unfilled
    fields stay Snakemake wildcards; the method wildcard takes exactly the methods of tocom.settings."""
    from tocom import layout
    from tocom.settings import DENSE_METHODS, METHODS, UNCOMPRESSED

    assert layout.log("finetune", layout.FINETUNE) == "logs/finetune/{backbone}_{method}_{dataset}_r{source}_seed{seed}.log"
    assert layout.log("finetune", layout.FINETUNE, backbone="tiny", method=UNCOMPRESSED, dataset="synth/count",
                      source=0, seed=0) == MINI_FT_LOG
    assert layout.benchmark("search", layout.SEARCH, candidate="select") == \
        "benchmarks/search/{backbone}_{method}_{dataset}_seed{seed}_select.tsv"
    assert layout.pattern(layout.EVAL, "results/x", method="evit") == \
        "results/x/eval/{backbone}/evit/{dataset}/r{source}_seed{seed}.csv"
    method = re.compile(layout.WILDCARDS["method"])
    assert all(method.fullmatch(m) for m in (*METHODS, *DENSE_METHODS, UNCOMPRESSED))
    assert not any(method.fullmatch(m) for m in ("tome_", "tomeevit", "dense", ""))
    # a search candidate's label never names the linked winner (search/.../chosen.safetensors has one producer)
    candidate = re.compile(layout.WILDCARDS["candidate"])
    assert candidate.fullmatch("lr0.001") and candidate.fullmatch("lr0.001_adapter_scale10.0")
    assert not candidate.fullmatch("chosen")


def test_paper_variants_follow_the_main_plugin_and_a_config_adds_or_replaces_them():
    """Tables 5-7's plugins are defined once, relative to the config's `distill` (shared: the same budget,
    R = r_max / r_step pairs x rank h); the config's `variants` adds plugins or replaces one of them."""
    from tocom.errors import TocomError
    from tocom.experiments import Grid, resolve_variants

    config = smoke_config()
    variants = resolve_variants(config)
    assert list(variants)[:9] == ["tocom", "shared", "cls", "no_inversion", "h1", "h4", "h8", "s1", "s0.01"]
    assert variants["shared"] == {"variant": "shared", "rank": 4 * 2} and variants["kd"] == {"loss": "kd"}
    assert (variants["s0.01"], variants["h8"]) == ({"scale": 0.01}, {"rank": 8})
    config["distill"].update(rank=3, r_step=2)
    config["variants"]["h4"] = {"rank": 5, "scale": 0.5}
    grid = Grid(config, check_files=False, check_geometry=False)
    _, shared = grid.distill_settings("tiny", "shared")
    assert (shared.variant, shared.rank, shared.r_step) == ("shared", 4 // 2 * 3, 2)
    _, h4 = grid.distill_settings("tiny", "h4")
    assert (h4.rank, h4.scale) == (5, 0.5)
    _, cls = grid.distill_settings("tiny2", "cls")      # the backbone's own overrides stay beneath the variant's
    assert (cls.loss, cls.rank) == ("cls", 3)
    config["studies"][0]["sets"][0]["variants"] = ["h16"]
    with pytest.raises(TocomError, match="variant 'h16' is not defined under `variants`"):
        Grid(config, check_files=False, check_geometry=False)


# ---- the smoke pipeline ---------------------------------------------------------------------------
def check_smoke_results(results: Path) -> None:
    tables = results / "tables"
    evals = pd.read_csv(tables / "eval.csv")
    assert set(evals.method) == {"tome", "evit", "idle"}
    assert {"tocom", "shared", "cls", "no_inversion", "h1", "h4", "h8", "s1", "s0.01"} <= set(evals.variant.dropna())
    assert len(pd.read_csv(tables / "transfer.csv")) == 2
    bench = pd.read_csv(tables / "bench.csv")
    assert {"infer", "train"} <= set(bench["mode"].dropna()) and {"merged_throughput", "switch"} <= set(bench["kind"])
    assert "Mean test top-1" in (tables / "summary.md").read_text()
    assert set(evals.backbone_key) == {"tiny", "tiny2"}
    # source r = 0: one fine-tune per backbone and dataset (method none), evaluated under every method
    assert {p.parts[-3] for p in (results / "finetune").glob("*/*/*/r0_seed0.safetensors")} == {"none"}
    texture0 = evals[(evals.backbone_key == "tiny") & (evals.dataset == "synth/texture") & (evals.source_r == 0)]
    assert set(texture0.method) == {"tome", "evit", "idle"}
    assert {"tocom", "h1", "h4", "h8", "kd"} <= set(pd.read_csv(tables / "plugins.csv").variant)
    # the VTAB-1k protocol on tiny2: adapter scale searched on train -> val, final model on trainval, s chosen
    # by the train companion on val and applied to the final model on test
    chosen = json.loads((results / "search/tiny2/none/synth__count/seed0/chosen.json").read_text())
    assert set(chosen["chosen"]) == {"adapter_scale"} and len(chosen["candidates"]) == 2
    refit = evals[(evals.backbone_key == "tiny2")]
    assert set(refit[refit.checkpoint == "select"].split) == {"val"}
    assert set(refit[refit.checkpoint == "final"].split) == {"test"}
    assert set(evals[evals.checkpoint == "select"].backbone_key) == {"tiny2"}
    # Table 6: the s = 1 plugin is scored on the grid x 10
    s1 = evals[(evals.variant == "s1") & (evals.split == "val")]
    assert sorted(s1.s.unique()) == [0.5, 1.0]
    # the report: every item of the paper, produced (no stub), in the paper's order
    report, figures = results / "report", results.parents[1] / "figures" / results.name
    tables_ = ["table1_transfer", "table2_vtab_natural_specialized", "table3_vtab_structured", "table4_vtab_training",
               "table5_ablation", "table6_scale", "table7_rank", "table8_evit", "table_idle", "table9_deit_s",
               "table10_mae", "table12_backbones", "table13_hparams", "table14_datasets", "setup_degrees"]
    figs = ["fig2_source_target", "fig3_throughput", "fig5_inference", "fig6_training", "fig7_evit", "fig_idle"]
    for stem in tables_ + figs:
        exts = [".md", ".csv"] + ([".tex"] if stem in tables_ else [])
        for ext in exts:
            assert (report / f"{stem}{ext}").stat().st_size > 0, f"{stem}{ext}"
        assert "Not in this run's grid" not in (report / f"{stem}.md").read_text(), stem
    for stem in figs:
        assert (figures / f"{stem}.png").stat().st_size > 1000 and (figures / f"{stem}.pdf").stat().st_size > 0
    text = (results / "report.md").read_text()
    order = ["Fig. 2", "Fig. 3", "Table 1:", "Fig. 5", "Table 2:", "Table 3:", "Fig. 6", "Table 4:", "Table 5:",
             "Table 6:", "Table 7:", "Fig. 7", "Table 8:", "IdleViT figure", "IdleViT table", "Table 9:", "Table 10:",
             "Table 12:", "Table 13:", "Table 14:"]
    positions = [text.find(f"### {o}") for o in order]
    assert -1 not in positions and positions == sorted(positions), dict(zip(order, positions))
    assert "not compared with the paper" in text and "1 seed, no interval" in text and "↳ paper" not in text
    # Table 11: Segmenter on fashion_mnist_seg at 0 -> 8/16/24 (tome_ffn), plain and + ToCom (step-8 plugin)
    for ext in (".md", ".csv", ".tex"):
        assert (report / f"table11_segmentation{ext}").stat().st_size > 0, ext
    assert "Not in this run's grid" not in (report / "table11_segmentation.md").read_text()
    assert text.find("### Table 10:") < text.find("### Table 11:") < text.find("### Table 12:")
    seg = pd.read_csv(tables / "segment.csv")
    assert set(seg.target_r) == {0, 8, 16, 24} and set(seg[seg.tocom == 1].variant) == {"seg"}
    assert seg.miou.between(0, 100).all() and (seg.method == "tome_ffn").all()
    for step in ("aggregate", "aggregate_segment"):       # the steps that run once write their logs too
        assert "rows" in (results / "logs" / f"{step}.log").read_text(), step
    assert set(seg[(seg.tocom == 1) & seg.selected.astype(str).str.lower().eq("true")].split) == {"val", "test"}
    seg_cells = pd.read_csv(report / "table11_segmentation.csv")
    seg_cells = seg_cells[(seg_cells.kind == "cell") & (seg_cells.n_seeds > 0)]
    assert {"target r = 8", "target r = 8 + ToCom", "target r = 8 Δ", "target r = 24 Δ"} <= set(seg_cells.row)
    assert set(seg_cells["column"]) == {"mIoU", "GFLOPs"}

    def cells(stem):
        df = pd.read_csv(report / f"{stem}.csv")
        df = df[(df.kind == "cell") & (df.n_seeds > 0)]
        return df, set(df.block.dropna()), set(df.row), set(df["column"])

    _, blocks, rows, cols = cells("table1_transfer")
    assert rows == {"synth/texture"} and cols == {"M_0^B", "M_4^A − M_0^A + M_0^B", "Δ"}
    _, blocks, rows, cols = cells("table2_vtab_natural_specialized")
    assert len(blocks) == 2 and {"texture", "Natural", "Natural Δ", "orientation", "Specialized", "Specialized Δ"} <= cols
    assert {"source r = 0", "source r = 0 + ToCom", "source r = 1", "source r = 1 + ToCom", "source r = 4",
            "source r = 2"} <= rows
    _, blocks, rows, cols = cells("table3_vtab_structured")
    assert {"count", "Structured", "Structured Δ"} <= cols and len(blocks) == 2
    _, blocks, rows, cols = cells("table4_vtab_training")
    assert len(blocks) == 2 and {"target r = 0 + ToCom", "target r = 1 + ToCom", "target r = 4", "target r = 2"} <= rows
    assert {"Natural", "Specialized", "Structured"} <= cols
    ablation_cols = {"0 → 4", "0 → 4 Δ", "0 → 2", "0 → 2 Δ", "4 → 0", "4 → 0 Δ"}
    for stem, expected in (("table5_ablation", {"Baseline", "Shared LoRA (h = 8)", "CLS loss", "No inversion",
                                                "ToCom (ours)"}),
                           ("table6_scale", {"Baseline", "s = 1", "s = 0.1 (ours)", "s = 0.01"}),
                           ("table7_rank", {"Baseline", "h = 1", "h = 2 (ours)", "h = 4", "h = 8"})):
        df, _, rows, cols = cells(stem)
        assert rows == expected and ablation_cols <= cols, stem
    df, _, _, _ = cells("table7_rank")
    params = df[df.column == "# params (M)"].set_index("row")["mean"]
    assert params["h = 2 (ours)"] == pytest.approx(4 * 12 * 2 * 2 * 96 * 2 / 1e6)     # R x depth x q,v x A,B x width x h
    for stem, group in (("table8_evit", "Natural"), ("table_idle", "Natural"), ("table9_deit_s", "Structured"),
                        ("table10_mae", "Structured")):
        _, blocks, rows, cols = cells(stem)
        assert blocks == {"source r = 0 → target r = 4", "source r = 4 → target r = 0"} and rows == {
            "source r = 0", "source r = 4", "+ ToCom"} and {group, f"{group} Δ"} <= cols, stem
    for stem, source, targets in (("fig5_inference", 0, {1, 2, 3, 4}), ("fig6_training", 4, {0, 1, 2, 3}),
                                  ("fig7_evit", 0, {1, 2, 3, 4}), ("fig_idle", 0, {1, 2, 3, 4})):
        _, blocks, rows, cols = cells(stem)
        assert {f"source r = {source}", "+ ToCom", "Δ ToCom"} <= rows and "mean" in blocks, stem
        assert cols == {f"r = {t}" for t in targets}, stem
    _, blocks, rows, cols = cells("fig2_source_target")
    assert {"synth/shapes", "synth/texture", "mean"} <= blocks and {"source r = 0", "source r = 4"} <= rows
    _, blocks, rows, cols = cells("fig3_throughput")
    assert blocks == {"inference", "training"} and rows == {"r = 0", "r = 2", "r = 4"} and "speed-up" in cols
    assert set(pd.read_csv(report / "table12_backbones.csv").key) == {"tiny", "tiny2"}
    roles = pd.read_csv(report / "table14_datasets.csv").set_index("dataset").role
    assert len(roles) == 4 and roles["synth/texture"] == "CIFAR-100/FGVC role; VTAB-1k Natural"
    outputs_are_whole(results)


@pytest.mark.slow
def test_smoke_pipeline_local_profile_and_rerun_does_nothing(tmp_path):
    res = snakemake("--profile", "local", "--configfile", "config/smoke.yaml", "--directory", str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    check_smoke_results(tmp_path / "results/smoke")
    html = tmp_path / "report.html"                 # Snakemake's own report of the marked tables and figures
    res = snakemake("--configfile", "config/smoke.yaml", "--directory", str(tmp_path), "--report", str(html))
    assert res.returncode == 0, res.stderr[-3000:]
    page = html.read_text()
    assert all(s in page for s in ("Claims at this scale", "Table 5", "fig5_inference.png")), "report.html misses items"
    # the results page's block made from this run, then the run compared with it as a user would (compare_run.py)
    results, block = tmp_path / "results/smoke", tmp_path / "results.md"
    block.write_text("<!-- cpu-results -->\n<!-- /cpu-results -->\n")
    scripts = REPO / "workflow" / "scripts"
    for script, args in (("readme_results.py", ["--wall", "1 min", "--readme", str(block)]),
                         ("compare_run.py", ["--page", str(block)])):
        res = subprocess.run([sys.executable, str(scripts / script), str(results), "--config", "config/smoke.yaml",
                              *args], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, (script, res.stdout[-2000:], res.stderr[-2000:])
    assert "**Identical artefacts at every stage.**" in res.stdout and "Config: the same" in res.stdout
    assert re.search(r"Verdicts: \*\*(\d+) of \1 agree\*\*", res.stdout), res.stdout
    again = snakemake("--profile", "local", "--configfile", "config/smoke.yaml", "--directory", str(tmp_path))
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


# ---- reliability --------------------------------------------------------------------------------------
def _wait_for(predicate, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _training_pids(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.slow
def test_sigkill_of_a_training_job_then_rerun_completes(tmp_path):
    cfg = write(mini_config("killjob", epochs=4), tmp_path / "c.yaml")
    run = SNAKEMAKE + ["--cores", "2", "--configfile", str(cfg), "--directory", str(tmp_path)]
    proc = subprocess.Popen(run, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = tmp_path / "results/killjob"
    resume = results / f"{MINI_FT}.resume/state.pt"
    assert _wait_for(resume.exists), "fine-tuning never wrote its first epoch"
    for pid in _training_pids("tocom.cli finetune"):
        os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=300) != 0                          # snakemake saw the job die
    assert not (results / MINI_FT).exists()
    res = subprocess.run(run, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    log = (results / MINI_FT_LOG).read_text()
    assert "resuming" in log                                   # picked up where the killed job stopped
    assert pd.read_csv(results / "tables/eval.csv").shape[0] > 0
    outputs_are_whole(results)


@pytest.mark.slow
def test_sigkill_of_snakemake_then_rerun_completes(tmp_path):
    cfg = write(mini_config("killsm", epochs=3), tmp_path / "c.yaml")
    run = SNAKEMAKE + ["--cores", "2", "--configfile", str(cfg), "--directory", str(tmp_path)]
    proc = subprocess.Popen(run, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    results = tmp_path / "results/killsm"
    assert _wait_for(lambda: (results / "backbones/tiny.safetensors").exists())
    time.sleep(2)                                              # the plugin/fine-tune jobs are running now
    os.killpg(proc.pid, signal.SIGKILL)                        # snakemake and every job it started
    proc.wait()
    # A killed snakemake leaves its lock; Snakemake's own recovery is --unlock, then the same command
    # (the workflow profile, profiles/default, makes it redo the jobs the kill cut short).
    assert subprocess.run(run + ["--unlock"], cwd=REPO, capture_output=True).returncode == 0
    res = subprocess.run(run, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    outputs_are_whole(results)
    nothing = subprocess.run(run + ["-n"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "Nothing to be done" in nothing.stdout + nothing.stderr


@pytest.mark.slow
def test_a_failing_job_leaves_no_partial_output(tmp_path):
    config = mini_config("failing", epochs=2)
    config["recipes"]["vtab"]["lr"] = 1.0e12                   # diverges: the job raises mid-training
    cfg = write(config, tmp_path / "c.yaml")
    res = snakemake("--cores", "2", "--configfile", str(cfg), "--directory", str(tmp_path), timeout=600)
    assert res.returncode != 0
    results = tmp_path / "results/failing"
    log = (results / MINI_FT_LOG).read_text()
    assert "lower the learning rate" in log and "Traceback" not in log
    assert not (results / MINI_FT).exists()
    assert not (results / "eval").exists() and not (results / "tables").exists()
    outputs_are_whole(results)
