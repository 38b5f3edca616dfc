"""Engines end to end on procedural data, kill-and-resume, and DDP on two CPU processes.

The chain (pretrain a tiny backbone -> distill ToCom -> fine-tune at r = 0 -> evaluate several
target r with and without ToCom) runs once per session through the public functions; the other
tests check what it produced. Everything runs on the CPU in well under two minutes.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import tocom
from tocom.data import build_dataset
from tocom.engine.distill import distill
from tocom.engine.evaluate import cross_evaluate, task_arithmetic
from tocom.engine.finetune import train_classifier
from tocom.models import create_backbone, load_model
from tocom.plugin import ToCom
from tocom.settings import DistillSettings, EvalSettings, FinetuneSettings, PretrainSettings, RunSettings

BACKBONE = "tocom_vit_tiny_patch8_56"       # 49 patch tokens, r = 0..4
TINY = dict(embed_dim=48, num_heads=3)       # narrower than the registered model: faster tests
CLI = [sys.executable, "-m", "tocom.cli"]
QUIET = RunSettings(quiet=True)
# The mechanism tests switch the regularisers of the paper's recipe off: they check what the plugin learns.
PLAIN_DISTILL = dict(mixup=0.0, cutmix=0.0, drop_path=0.0, lora_dropout=0.0, scale_lr=False, split="train")


def data(name, split, limit, seed=0):
    return build_dataset(name, split=split, img_size=56, seed=seed, limit=limit)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    torch.manual_seed(0)
    backbone = create_backbone(BACKBONE, num_classes=data("synth/pretrain", "train", 8).num_classes, **TINY)
    meta = {"backbone": BACKBONE, "dataset": "synth/pretrain", "model_kwargs": TINY}
    train_classifier(backbone, data("synth/pretrain", "train", 512), root / "backbone.safetensors", meta,
                     PretrainSettings(epochs=3, batch_size=64, lr=2e-3, label_smoothing=0.0), QUIET)
    model, _ = load_model(root / "backbone.safetensors")
    plugin = distill(model, data("synth/pretrain", "train", 256), root / "plugin.safetensors",
                     DistillSettings(r_max=4, epochs=4, batch_size=32, lr=1e-2, scale=1.0, **PLAIN_DISTILL), QUIET)
    start, _ = load_model(root / "backbone.safetensors")
    start.reset_classifier(8)
    train_classifier(start, data("synth/count", "train", 256), root / "ft_r0.safetensors",
                     {**meta, "dataset": "synth/count"},
                     FinetuneSettings(mode="adaptformer", epochs=2, batch_size=32, lr=1e-3), QUIET, r=0)
    ft, ft_meta = load_model(root / "ft_r0.safetensors")
    splits = {"val": data("synth/count", "val", 64), "test": data("synth/count", "test", 64)}
    df = cross_evaluate(ft, ft_meta, splits, [0, 2, 4], {"tocom": ToCom.load(root / "plugin.safetensors")},
                        EvalSettings(scales=(0.5, 1.0), grid_scale=1.0), QUIET, out=root / "eval.csv")
    return root, plugin, df


def _kl_gap(model, plugin, images, pairs, use_plugin):
    total = 0.0
    with torch.no_grad():
        for m, n in pairs:
            tocom.set_r(model, m)
            teacher = model(images)
            with tocom.compensate(model, plugin, m, n, scale=0.1 if use_plugin else 0.0):
                student = model(images)
            total += F.kl_div(student.log_softmax(-1), teacher.log_softmax(-1), log_target=True,
                              reduction="batchmean").item()
    return total / len(pairs)


def test_distillation_closes_the_gap_between_degrees(tmp_path):
    """The trained plugin makes the model at n behave like the model at m, on the distillation
    images and on unseen ones, for up and down moves alike.

    A random tiny ViT with a sharpened head stands in for a pretrained one: what matters is that
    its predictions change with r, so there is a gap to learn."""
    torch.manual_seed(0)
    model = create_backbone(BACKBONE, num_classes=10, **TINY)
    with torch.no_grad():
        model.head.weight.mul_(40)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    train = data("synth/pretrain", "train", 512)
    plugin = distill(model, train, tmp_path / "p.safetensors",
                     DistillSettings(r_max=4, epochs=12, batch_size=64, lr=2e-3, **PLAIN_DISTILL), QUIET)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in reference.items())   # backbone frozen
    pairs = [(m, n) for m in range(5) for n in range(5) if m != n]
    for split, factor in (("train", 0.8), ("test", 0.8)):
        ds = train if split == "train" else data("synth/pretrain", "test", 64)
        images = torch.stack([ds[i][0] for i in range(64)])
        without, with_plugin = _kl_gap(model, plugin, images, pairs, False), _kl_gap(model, plugin, images, pairs, True)
        assert without > 1e-3
        assert with_plugin < factor * without, (split, with_plugin, without)


@pytest.mark.slow
def test_teacher_computed_once_gives_the_same_losses_and_plugin(tmp_path):
    """On unaugmented images the teacher (the plain model in eval mode) depends only on the image and the degree:
    computed once per (image, degree), in the job or by `teacher_outputs` for several plugins, a step's loss and
    the distilled plugin are those of running it every step (the same degrees, dropouts and stochastic depth are
    drawn), and the job computes no (image, degree) twice; a file made for other settings or images, mixed images
    and an augmenting transform are refused."""
    from tocom.engine.distill import Indexed, SelfDistillation, TeacherOutputs, read_teacher_outputs, teacher_outputs

    torch.manual_seed(0)
    model = create_backbone(BACKBONE, num_classes=10, **TINY)
    with torch.no_grad():
        model.head.weight.mul_(40)
    train = data("synth/pretrain", "train", 64)
    live = DistillSettings(r_max=4, epochs=1, batch_size=16, lr=2e-3, scale_lr=False, split="train", mixup=0.0,
                           cutmix=0.0)                       # stochastic depth and LoRA dropout stay on
    once = live.replace(teacher="once")
    path = tmp_path / "teacher.safetensors"
    outputs = teacher_outputs(model, train, path, once, QUIET)
    assert outputs.shape == (64, 5, 10)
    shared = read_teacher_outputs(path, train, once, QUIET.seed)
    assert torch.equal(shared, outputs)

    plugin = ToCom.for_model(model, r_max=4)
    with torch.no_grad():
        for b in plugin.B.values():
            b.normal_(0, 0.05)
    images = torch.stack([train[i][0] for i in range(8)])
    losses = []
    for s, teacher, second in ((live, None, torch.tensor(train.targets[:8])),
                               (once, TeacherOutputs(64, 5, shared), torch.arange(8)),
                               (once, TeacherOutputs(64, 5), torch.arange(8))):
        torch.manual_seed(3)
        losses.append(SelfDistillation(model, plugin, s, 10, teacher).train()(images, second))
    assert losses[0].item() > 0
    assert all(torch.allclose(losses[0], x, rtol=1e-5, atol=1e-7) for x in losses[1:]), losses

    plugins = [distill(model, train, tmp_path / "live.safetensors", live, QUIET),
               distill(model, train, tmp_path / "shared.safetensors", once, QUIET, teacher=shared),
               distill(model, train, tmp_path / "kept.safetensors", once, QUIET)]
    for k in ("A", "B"):
        for proj in plugins[0].A:
            ref = getattr(plugins[0], k)[proj]
            assert all(torch.allclose(ref, getattr(p, k)[proj], rtol=1e-4, atol=1e-6) for p in plugins[1:]), (k, proj)
    assert not torch.equal(plugins[0].B["q"], torch.zeros_like(plugins[0].B["q"]))

    kept = TeacherOutputs(64, 5)                # three steps on the same 16 images: 3 degrees drawn of 5
    torch.manual_seed(0)
    sd = SelfDistillation(model, plugin, once, 10, kept).train()
    batches = [(torch.stack([train[i][0] for i in idx]), torch.tensor(idx)) for idx in ([*range(16)],) * 3]
    for x, idx in batches:
        sd(x, idx)
    assert 16 <= kept.computed <= 3 * 16 and kept.computed == int(kept.known.sum())   # a repeat costs nothing
    assert Indexed(train)[5][1] == 5

    with pytest.raises(tocom.TocomError, match=r"r_max 4 \(this plugin: 2\)"):
        read_teacher_outputs(path, train, once.replace(r_max=2), QUIET.seed)
    with pytest.raises(tocom.TocomError, match="other images"):
        read_teacher_outputs(path, data("synth/pretrain", "train", 64, seed=1), once, QUIET.seed)
    with pytest.raises(tocom.TocomError, match="teacher once needs unmixed images"):
        once.replace(mixup=0.8)
    with pytest.raises(tocom.TocomError, match="set mixup and cutmix to 0"):
        SelfDistillation(model, plugin, live.replace(mixup=0.8), 10, TeacherOutputs(64, 5))
    augmented = build_dataset("synth/pretrain", split="train", img_size=56, limit=16, transform="deit")
    with pytest.raises(tocom.TocomError, match="random augmentations"):
        teacher_outputs(model, augmented, tmp_path / "no.safetensors", once, QUIET)
    with pytest.raises(tocom.TocomError, match="random augmentations"):
        distill(model, augmented, tmp_path / "no.safetensors", once, QUIET)
    assert not (tmp_path / "no.safetensors").exists()


def test_evaluation_table_is_tidy_and_picks_s_on_val(chain):
    root, _, df = chain
    assert list(df.columns) == ["dataset", "backbone", "method", "source_r", "target_r", "tocom", "variant", "s",
                                "split", "seed", "top1", "n", "selected", "checkpoint"]
    assert pd.read_csv(root / "eval.csv").shape == df.shape
    plain = df[df.tocom == 0]
    assert sorted(plain.target_r.unique()) == [0, 2, 4] and set(plain.split) == {"val", "test"}
    assert (df.n == 64).all() and df.top1.between(0, 100).all()
    for target in (2, 4):
        val = df[(df.tocom == 1) & (df.target_r == target) & (df.split == "val")]
        assert sorted(val.s) == [0.5, 1.0]
        best = val.sort_values(["top1", "s"], ascending=[False, True]).iloc[0]
        assert val[val.selected].s.tolist() == [best.s]
        test = df[(df.tocom == 1) & (df.target_r == target) & (df.split == "test")]
        assert test.s.tolist() == [best.s] and test.selected.all()
    assert df[(df.tocom == 1) & (df.target_r == 0)].empty     # source == target needs no plugin


def test_a_plugin_is_evaluated_at_its_own_targets_only(chain):
    """plugin_targets restricts where a plugin is evaluated (the grid asks no more than its study sets need); the
    rows it keeps are the ones a full evaluation gives, and a target outside --targets is refused."""
    root, _, df = chain
    ft, ft_meta = load_model(root / "ft_r0.safetensors")
    plugin = ToCom.load(root / "plugin.safetensors")
    splits = {"val": data("synth/count", "val", 64), "test": data("synth/count", "test", 64)}
    s = EvalSettings(scales=(0.5, 1.0), grid_scale=1.0)
    out = cross_evaluate(ft, ft_meta, splits, [0, 2, 4], {"tocom": plugin, "narrow": plugin}, s, QUIET,
                         plugin_targets={"narrow": [4]})
    assert sorted(out[out.variant == "narrow"].target_r.unique()) == [4]
    assert sorted(out[out.variant == "tocom"].target_r.unique()) == [2, 4]
    same = ["target_r", "s", "split", "top1", "selected"]
    narrow = out[out.variant == "narrow"][same].reset_index(drop=True)
    full = df[(df.variant == "tocom") & (df.target_r == 4)][same].reset_index(drop=True)
    pd.testing.assert_frame_equal(narrow, full)
    with pytest.raises(tocom.TocomError, match="plugin targets narrow=3"):
        cross_evaluate(ft, ft_meta, splits, [0, 2, 4], {"narrow": plugin}, s, QUIET, plugin_targets={"narrow": [3]})


def test_fine_tuned_checkpoint_records_its_recipe(chain):
    root, _, _ = chain
    model, meta = load_model(root / "ft_r0.safetensors")
    assert (meta["source_r"], meta["mode"], meta["num_classes"], meta["dataset"]) == (0, "adaptformer", 8, "synth/count")
    assert meta["split"] == "train" and meta["settings"]["stage"] == "finetune" and meta["settings"]["epochs"] == 2
    backbone, _ = load_model(root / "backbone.safetensors")
    # PET: the backbone's weights did not move, the adapters did
    assert torch.equal(model.blocks[3].attn.qkv.weight, backbone.blocks[3].attn.qkv.weight)
    assert model.blocks[3].mlp.adapter.up.weight.abs().sum() > 0
    assert not (root / "ft_r0.safetensors.resume").exists()     # resume state is dropped when done


def test_task_arithmetic_moves_the_backbone_and_keeps_b_head():
    a16 = {"blocks.0.w": torch.tensor([3.0]), "head.weight": torch.ones(5, 2)}
    a0 = {"blocks.0.w": torch.tensor([1.0]), "head.weight": torch.zeros(5, 2)}
    b0 = {"blocks.0.w": torch.tensor([10.0]), "head.weight": torch.full((7, 2), 4.0)}
    out = task_arithmetic(a16, a0, b0)
    assert out["blocks.0.w"].item() == 12.0 and torch.equal(out["head.weight"], b0["head.weight"])


def _run(args, **kw):
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run(CLI + args, env=env, capture_output=True, text=True, **kw)


def _pretrain_args(out, epochs=4):
    return ["pretrain-backbone", "--backbone", BACKBONE, "--dataset", "synth/shapes", "--limit", "256",
            "--epochs", str(epochs), "--batch-size", "32", "--out", str(out), "--quiet"]


def test_kill_and_resume_ends_with_the_same_weights(tmp_path):
    straight, resumed = tmp_path / "straight.safetensors", tmp_path / "resumed.safetensors"
    assert _run(_pretrain_args(straight)).returncode == 0
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(CLI + _pretrain_args(resumed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = resumed.with_name(resumed.name + ".resume") / "state.pt"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists() and not resumed.exists()       # killed mid-run: no final output
    done = _run(_pretrain_args(resumed))
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout + done.stderr
    a, b = load_file(str(straight)), load_file(str(resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_on_two_cpu_processes_matches_one_process(tmp_path):
    """Gloo DDP over 2 ranks, each half the batch: the same plugin as one process on the full batch."""
    bb = tmp_path / "bb.safetensors"
    assert _run(_pretrain_args(bb, epochs=1)).returncode == 0
    common = ["distill", "--checkpoint", str(bb), "--dataset", "synth/pretrain", "--limit", "32", "--r-max", "4",
              "--epochs", "2", "--batch-size", "32", "--lr", "1e-2", "--quiet", "--mixup", "0", "--cutmix", "0",
              "--drop-path", "0", "--lora-dropout", "0"]
    single = _run(common + ["--out", str(tmp_path / "one.safetensors")])
    assert single.returncode == 0, single.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "tocom.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(torchrun + common + ["--out", str(tmp_path / "two.safetensors")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = load_file(str(tmp_path / "one.safetensors")), load_file(str(tmp_path / "two.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in one.items() if k.startswith("B."))
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-5), k


def test_cli_errors_are_one_line(tmp_path):
    cases = [
        (["finetune", "--backbone", "no_such_vit", "--dataset", "synth/count", "--out", str(tmp_path / "x")], "unknown backbone"),
        (["finetune", "--backbone", BACKBONE, "--dataset", "nope", "--out", str(tmp_path / "x")], "nope"),
        (["finetune", "--backbone", BACKBONE, "--dataset", "synth/count", "--r", "9", "--out", str(tmp_path / "x")],
         "carries (0..4"),
        (["finetune", "--backbone", BACKBONE, "--dataset", "synth/count", "--epochs", "0", "--out", str(tmp_path / "x")],
         "epochs must be > 0"),
        (["distill", "--backbone", BACKBONE, "--dataset", "synth/count", "--lr", "nan", "--out", str(tmp_path / "x")],
         "lr must be a finite number"),
        (["evaluate", "--checkpoint", "x", "--targets", "0", "--scales", "-1", "--out", str(tmp_path / "e.csv")],
         "scales must be > 0"),
        (["evaluate", "--checkpoint", "x", "--targets", "0", "2", "--plugin-targets", "shared:2",
          "--out", str(tmp_path / "e.csv")], "write LABEL=R[,R...]"),
        (["flops", "--model", BACKBONE, "--r", "9"], "carries (0..4"),
        (["transfer", "--model-b", "x", "--high-a", "y", "--low-a", "z", "--target-r", "3", "--batch-size", "0",
          "--out", str(tmp_path / "t.csv")], "batch_size must be > 0"),
        (["finetune", "--backbone", BACKBONE, "--dataset", "synth/count", "--bogus", "1", "--out", str(tmp_path / "x")],
         "unrecognized arguments: --bogus"),
        (["evaluate", "--checkpoint", str(tmp_path / "missing.safetensors"), "--targets", "0", "--out", str(tmp_path / "e.csv")],
         "no model checkpoint at"),
        (["distill", "--backbone", BACKBONE, "--dataset", "cifar100", "--data-root", str(tmp_path), "--r-max", "4",
          "--out", str(tmp_path / "p")], str(tmp_path)),
        (["finetune", "--backbone", BACKBONE, "--dataset", "synth/count", "--method", "none", "--r", "2",
          "--out", str(tmp_path / "x")], "--method none trains uncompressed, at --r 0"),
    ]
    for args, needle in cases:
        res = _run(args)
        assert res.returncode == 2, (args, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], res.stderr
        assert "Traceback" not in res.stderr
        assert not [p for p in tmp_path.iterdir()], "a refused command left output behind"


def test_checked_before_any_work_on_real_checkpoints(chain, tmp_path):
    """A model scored on another label set, a transfer degree the backbone cannot carry, s chosen on a split
    the model trained on: one line each, exit 2, no output."""
    root, _, _ = chain
    ft = str(root / "ft_r0.safetensors")
    out = tmp_path / "x.csv"
    cases = [
        (["evaluate", "--checkpoint", ft, "--dataset", "synth/shapes", "--targets", "0", "--limit", "8"],
         "has 8 classes but synth/shapes has 10"),
        (["transfer", "--model-b", ft, "--high-a", ft, "--low-a", ft, "--target-r", "99"], "--target-r [99] is outside"),
        (["evaluate", "--checkpoint", ft, "--targets", "0", "--select-split", "train", "--splits", "train", "test",
          "--limit", "8"], "contains the selection split 'train'"),
        (["finetune", "--checkpoint", str(root / "backbone.safetensors"), "--dataset", "synth/count", "--split",
          "trainval", "--score-split", "val"], "overlaps the training split"),
    ]
    for args, needle in cases:
        res = _run(args + ["--out", str(out), "--quiet"])
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and needle in lines[0], (args, res.stderr[-2000:])
        assert not out.exists()


def test_official_style_checkpoints_load_with_a_new_head(tmp_path):
    """DeiT/MAE releases are .pth files with the weights under 'model'; a new task drops their head."""
    torch.manual_seed(0)
    source = create_backbone(BACKBONE, num_classes=1000, **TINY)
    torch.save({"model": source.state_dict(), "epoch": 300}, tmp_path / "deit_release.pth")
    model = create_backbone(BACKBONE, num_classes=8, checkpoint=tmp_path / "deit_release.pth", **TINY)
    assert torch.equal(model.blocks[2].attn.qkv.weight, source.blocks[2].attn.qkv.weight)
    assert model.head.weight.shape == (8, 48)
    torch.save({"model": {"unrelated.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(tocom.TocomError, match="does not fit"):
        create_backbone(BACKBONE, num_classes=8, checkpoint=tmp_path / "other.pth", **TINY)


def test_feature_distillation_for_a_headless_backbone(tmp_path):
    """MAE has no classifier: the plugin learns from L1 on the final pooled features (Sec. 5.6)."""
    torch.manual_seed(0)
    model = create_backbone(BACKBONE, num_classes=0, **TINY)
    with pytest.raises(tocom.TocomError, match="loss='features'"):
        distill(model, data("synth/pretrain", "train", 32), tmp_path / "x.safetensors", DistillSettings(r_max=4), QUIET)
    # the paper's recipe mixes the images; a headless backbone has no head to size the mixed labels
    distill(model, data("synth/pretrain", "train", 16), tmp_path / "mixed.safetensors",
            DistillSettings(r_max=4, loss="features", epochs=1, batch_size=8, mixup=0.8, cutmix=1.0), QUIET)
    train = data("synth/pretrain", "train", 64)
    plugin = distill(model, train, tmp_path / "p.safetensors",
                     DistillSettings(r_max=4, loss="features", epochs=30, batch_size=64, lr=2e-3, **PLAIN_DISTILL),
                     QUIET)
    images = torch.stack([train[i][0] for i in range(64)])

    def gap(scale):
        total = 0.0
        with torch.no_grad():
            for m, n in [(0, 4), (4, 0), (1, 3)]:
                tocom.set_r(model, m)
                teacher = model(images)
                with tocom.compensate(model, plugin, m, n, scale=scale):
                    total += F.l1_loss(model(images), teacher).item()
        return total

    assert gap(0.1) < 0.9 * gap(0.0)


def test_bench_rows_per_degree_and_ratios(tmp_path):
    """One row per r in the order asked, speed-up and FLOPs ratio relative to r = 0, FLOPs falling
    with r; an r the backbone cannot carry is one TocomError."""
    from tocom.engine.bench import bench
    from tocom.settings import BenchSettings, MeasureSettings

    df = bench(MeasureSettings(model="tocom_vit_tiny_patch8_56", r=(0, 2, 4), mode="train", device="cpu"),
               BenchSettings(batch_size=4, warmup=1, repeats=2), out=tmp_path / "b.csv", progress=False)
    assert list(df.r) == [0, 2, 4] and (df.images_per_s > 0).all() and df.repeats.eq(2).all()
    assert df.speedup.iloc[0] == 1.0 and df.flops_ratio.iloc[0] == 1.0
    assert df.gflops.is_monotonic_decreasing and df.flops_ratio.iloc[-1] > 1.5
    assert pd.read_csv(tmp_path / "b.csv").shape == df.shape
    with pytest.raises(tocom.TocomError, match="exceeds"):
        bench(MeasureSettings(model="tocom_vit_tiny_patch8_56", r=(0, 5), device="cpu"), BenchSettings(batch_size=2),
              progress=False)


# ---- same seed, same numbers ------------------------------------------------------------------------------
def _cli(*args) -> None:
    """One `tocom` command in this process, through the CLI's entry point (which seeds before building anything)."""
    from tocom.cli import main

    assert main([*map(str, args), "--device", "cpu", "--quiet"]) == 0, args


def _finetune_then_evaluate(folder: Path, seed: int) -> tuple[dict, bytes, bytes]:
    """A random-init tiny ViT fine-tuned on 32 digits for 1 epoch with ToMe at r = 2 and every random draw
    of a fine-tune on (shuffling, mixup/cutmix, stochastic depth, a fresh head), then evaluated at r = 0, 2."""
    folder.mkdir()
    model, table = folder / "ft.safetensors", folder / "eval.csv"
    _cli("finetune", "--backbone", BACKBONE, "--dataset", "digits", "--limit", 32, "--epochs", 1, "--batch-size", 16,
         "--mixup", 0.8, "--cutmix", 1.0, "--drop-path", 0.1, "--method", "tome", "--r", 2, "--seed", seed,
         "--out", model)
    _cli("evaluate", "--checkpoint", model, "--targets", 0, 2, "--limit", 32, "--batch-size", 16, "--seed", seed,
         "--out", table)
    return load_file(str(model)), model.read_bytes(), table.read_bytes()


def test_same_seed_same_numbers(tmp_path):
    """Twice in one process with seed 0: bit-identical weights (the whole checkpoint file, header included)
    and identical evaluation rows; seed 1 trains other weights."""
    weights, model, table = _finetune_then_evaluate(tmp_path / "first", 0)
    again, model_again, table_again = _finetune_then_evaluate(tmp_path / "again", 0)
    other, _, _ = _finetune_then_evaluate(tmp_path / "other", 1)
    assert weights.keys() == again.keys() and all(torch.equal(weights[k], again[k]) for k in weights)
    assert model == model_again
    assert table == table_again and len(pd.read_csv(tmp_path / "first" / "eval.csv")) == 4   # 2 targets x 2 splits
    assert any(not torch.equal(weights[k], other[k]) for k in weights)


def test_interrupted_fine_tune_with_mixup_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """Stopped after its first epoch and rerun, a fine-tune with mixup/cutmix (numpy's RNG in timm) ends with
    the uninterrupted run's weights: every RNG is re-seeded from (seed, epoch), not only torch's."""
    from tocom.engine import common

    args = ["finetune", "--backbone", BACKBONE, "--dataset", "digits", "--limit", 32, "--epochs", 2, "--batch-size",
            16, "--mixup", 0.8, "--cutmix", 1.0, "--r", 2]
    _cli(*args, "--out", tmp_path / "straight.safetensors")
    save = common._save_resume

    def save_then_stop(*a, **kw):
        save(*a, **kw)
        raise KeyboardInterrupt

    from tocom.cli import main

    monkeypatch.setattr(common, "_save_resume", save_then_stop)
    assert main([*map(str, args), "--out", str(tmp_path / "resumed.safetensors"), "--device", "cpu", "--quiet"]) == 130
    monkeypatch.setattr(common, "_save_resume", save)
    assert not (tmp_path / "resumed.safetensors").exists()
    _cli(*args, "--out", tmp_path / "resumed.safetensors")
    a, b = load_file(str(tmp_path / "straight.safetensors")), load_file(str(tmp_path / "resumed.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- one fine-tune at source r = 0 for every method ----------------------------------------------------------
def test_r0_fine_tune_records_no_method_and_is_evaluated_under_any(tmp_path):
    """At r = 0 nothing is compressed: the checkpoint says method 'none' whatever --method said, and
    `evaluate`/`transfer --method` choose the method they run (default: ToMe); a model fine-tuned at r > 0
    keeps its own method as the default."""
    ft, ft2 = tmp_path / "r0.safetensors", tmp_path / "r2.safetensors"
    small = ["--dataset", "digits", "--limit", 16, "--epochs", 1, "--batch-size", 16]
    _cli("finetune", "--backbone", BACKBONE, *small, "--method", "evit", "--r", 0, "--out", ft)
    _cli("finetune", "--backbone", BACKBONE, *small, "--method", "idle", "--r", 2, "--out", ft2)
    assert load_model(ft)[1]["method"] == "none" and load_model(ft2)[1]["method"] == "idle"
    evaluate = ["--targets", 0, 2, "--limit", 16, "--splits", "val", "--batch-size", 16]
    for checkpoint, method, expected in ((ft, None, "tome"), (ft, "evit", "evit"), (ft, "idle", "idle"),
                                         (ft2, None, "idle")):
        out = tmp_path / f"{checkpoint.stem}_{method}.csv"
        _cli("evaluate", "--checkpoint", checkpoint, *evaluate, *(["--method", method] if method else []), "--out", out)
        assert set(pd.read_csv(out).method) == {expected}, (checkpoint, method)
    out = tmp_path / "transfer.csv"
    _cli("transfer", "--model-b", ft, "--high-a", ft2, "--low-a", ft, "--target-r", 2, "--limit", 16,
         "--batch-size", 16, "--method", "evit", "--out", out)
    assert set(pd.read_csv(out).method) == {"evit"}
    assert set(pd.read_csv(out).model) == {"M0_B", "M2_A-M0_A+M0_B"}     # named after --high-a's own degree
