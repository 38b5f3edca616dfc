"""Nothing silently wrong (issue 18): every output records what it was made from (content digests), the
records are checked wherever two artefacts meet, selection never sees the test split, plugin and model
headers hold usable values, and a misfit is refused before the first forward pass.

Each test would fail with its check removed. The models are the tiny backbones on `digits` and `synth/*`,
trained for one epoch on a few dozen images (seconds each); commands run in this process through the CLI's
entry point, as in tests/test_engines.py.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch

from tocom.errors import TocomError
from tocom.io import file_digest, read_safetensors, read_safetensors_header, write_safetensors


# ---- 1. content digests, byte-reproducible safetensors ------------------------------------------------------
def test_file_digest_is_the_sha256_of_the_bytes(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"tocom" * 300_000)            # more than one 1 MiB block
    assert file_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_bytes(b"other")                      # a rewrite is a new digest, not the remembered one
    assert file_digest(path) == hashlib.sha256(b"other").hexdigest()


def test_identical_content_writes_identical_safetensors_files(tmp_path):
    """The library orders a header's metadata keys differently on every call; ours are sorted, so two writes of
    the same tensors and metadata are the same bytes, and the file still loads with safetensors itself."""
    from safetensors.torch import load_file

    tensors = {"b": torch.ones(2, dtype=torch.float64), "a": torch.arange(6.0).reshape(2, 3), "c": torch.arange(5)}
    metadata = {k: str(i) for i, k in enumerate("abcdefghij")} | {"record": {"z": 1, "a": [1, 2]}, "text": 'é"\n'}
    digests = set()
    for i in range(5):
        write_safetensors(tensors, tmp_path / f"{i}.safetensors", metadata)
        digests.add(file_digest(tmp_path / f"{i}.safetensors"))
    assert len(digests) == 1
    raw = (tmp_path / "0.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0 and list(json.loads(raw[8:8 + n])["__metadata__"]) == sorted(metadata)
    back = load_file(str(tmp_path / "0.safetensors"))
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in tensors)
    assert read_safetensors_header(tmp_path / "0.safetensors")[0]["text"] == 'é"\n'
    assert torch.equal(read_safetensors(tmp_path / "0.safetensors")["a"], tensors["a"])


# ---- the models every other test reads: two pretrainings of one architecture, plugins, fine-tunes ------------
BACKBONE = "tocom_vit_tiny_patch8_56"      # 49 patch tokens: r runs 0..4
SMALL = ["--limit", 32, "--epochs", 1, "--batch-size", 16]


def cli(*args) -> int:
    """One `tocom` command in this process (as `tocom ...` on the command line); its exit status."""
    from tocom.cli import main

    return main([*map(str, args), "--device", "cpu", "--quiet"])


def ok(*args) -> None:
    assert cli(*args) == 0, args


def refused(capfd, *args, needles=(), out=None) -> str:
    """The command exits 2 with exactly one stderr line holding every needle, and writes no output."""
    capfd.readouterr()
    assert cli(*args) == 2, args
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    for n in needles:
        assert n in lines[0], (n, lines[0])
    if out is not None:
        assert not out.exists() and not out.with_name(out.name + ".json").exists()
    return lines[0]


def header(path) -> dict:
    meta = read_safetensors_header(path)[0]
    return json.loads(meta["tocom"] if "tocom" in meta else meta["extra"])


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """bb1, bb2: the same architecture pretrained twice (other images); plugins distilled on each (p1 also with
    r_max 2 and for EViT); fine-tunes from bb1 on digits at r 0 (seed 2) and 2, from bb1 on synth/shapes at r 0,
    from bb2 on digits at r 0."""
    root = tmp_path_factory.mktemp("made")
    p = {k: root / f"{k}.safetensors" for k in ("bb1", "bb2", "p1", "p2", "p1_r2", "p1_evit", "ft0", "ft2", "shapes0",
                                                "other0")}
    for name, limit in (("bb1", 32), ("bb2", 48)):
        ok("pretrain-backbone", "--backbone", BACKBONE, "--dataset", "digits", "--limit", limit, "--epochs", 1,
           "--batch-size", 16, "--out", p[name])
    distill = ["--dataset", "digits", "--limit", 16, "--epochs", 1, "--batch-size", 16]
    for name, bb, extra in (("p1", "bb1", ["--r-max", 4]), ("p2", "bb2", ["--r-max", 4]),
                            ("p1_r2", "bb1", ["--r-max", 2]), ("p1_evit", "bb1", ["--r-max", 4, "--method", "evit"])):
        ok("distill", "--checkpoint", p[bb], *distill, *extra, "--out", p[name])
    for name, bb, dataset, r, seed in (("ft0", "bb1", "digits", 0, 2), ("ft2", "bb1", "digits", 2, 2),
                                       ("shapes0", "bb1", "synth/shapes", 0, 2), ("other0", "bb2", "digits", 0, 2)):
        ok("finetune", "--checkpoint", p[bb], "--dataset", dataset, *SMALL, "--r", r, "--seed", seed, "--out", p[name])
    return p


EVAL = ["--targets", 0, 2, "--limit", 16, "--batch-size", 16, "--scales", 0.1]


# ---- 2. every output records what it was made from -----------------------------------------------------------
def test_outputs_record_the_digests_of_their_inputs(made, tmp_path):
    """The backbone's identity is carried down unchanged: a fine-tune of a fine-tune still names bb1; a plugin
    names the backbone it was distilled on; a pretrained backbone is the root of its own lineage."""
    bb1 = file_digest(made["bb1"])
    assert header(made["bb1"])["lineage"]["role"] == "backbone"
    ft0 = header(made["ft0"])["lineage"]
    assert ft0["backbone"]["sha256"] == bb1 and ft0["checkpoint"]["sha256"] == bb1
    assert ft0["data"]["dataset"] == "digits" and ft0["data"]["split"] == "train" and ft0["data"]["n"] == 32
    assert header(made["p1"])["lineage"]["backbone"]["sha256"] == bb1
    assert header(made["p2"])["lineage"]["backbone"]["sha256"] == file_digest(made["bb2"]) != bb1
    again = tmp_path / "again.safetensors"
    ok("finetune", "--checkpoint", made["ft0"], "--dataset", "digits", *SMALL, "--out", again)
    lineage = header(again)["lineage"]
    assert lineage["backbone"]["sha256"] == bb1 and lineage["checkpoint"]["sha256"] == file_digest(made["ft0"])
    # a CSV's record: the model, each plugin and each split it read
    out = tmp_path / "eval.csv"
    ok("evaluate", "--checkpoint", made["ft0"], *EVAL, "--plugin", f"main={made['p1']}", "--out", out)
    record = json.loads((tmp_path / "eval.csv.json").read_text())["lineage"]
    assert record["model"]["sha256"] == file_digest(made["ft0"]) and record["model"]["backbone"]["sha256"] == bb1
    assert record["plugins"]["main"]["sha256"] == file_digest(made["p1"])
    assert set(record["data"]) == {"val", "test"} and record["allowed"] == []
    # and where each was computed: the CPU kernel class and threads decide the bytes (docs/determinism.md)
    for made_by in (tmp_path / "eval.csv.json", Path(f"{again}.json")):
        where = json.loads(made_by.read_text())["machine"]
        assert where["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and where["threads"] >= 1


def test_starting_points_of_every_kind_have_an_identity(tmp_path):
    """A third-party .pth is identified by its bytes, timm's hub weights by their full tag, a fresh init by its
    name and seed; a tocom file carries the identity it records."""
    from tocom.lineage import start

    pth = tmp_path / "release.pth"
    torch.save({"model": {"w": torch.ones(2)}}, pth)
    assert start(pth, BACKBONE, False, 0)["backbone"] == {"kind": "file", "name": BACKBONE, "path": str(pth),
                                                          "sha256": file_digest(pth)}
    assert start(None, "deit_base_patch16_224", True, 0)["backbone"] == {"kind": "timm",
                                                                         "name": "deit_base_patch16_224.fb_in1k"}
    assert start(None, BACKBONE, False, 3)["backbone"] == {"kind": "init", "name": BACKBONE, "seed": 3}


def _vtab_task(root, seed: int, n: int = 24):
    """A VTAB-1k-layout task folder for vtab/kitti (4 classes) with random 8 x 8 images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    task = root / "kitti"
    (task / "images").mkdir(parents=True)
    for split, name in (("train", "train800.txt"), ("val", "val200.txt"), ("trainval", "train800val200.txt"),
                        ("test", "test.txt")):
        lines = []
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(task / "images" / f"{split}{i}.png")
            lines.append(f"images/{split}{i}.png {(i + seed) % 4}")
        (task / name).write_text("\n".join(lines) + "\n")
    return root


def test_list_based_data_records_its_split_files(tmp_path):
    from tocom.data import build_dataset
    from tocom.lineage import data_entry

    root = _vtab_task(tmp_path / "vtab", 0)
    entry = data_entry(build_dataset("vtab/kitti", root=str(root), split="train", img_size=56))
    assert entry["files"] == {"train800.txt": file_digest(root / "kitti" / "train800.txt")}
    assert entry["root"] == str(root.resolve()) and entry["dataset"] == "vtab/kitti" and entry["n"] == 24


# ---- 3. resume: the fingerprint covers the inputs ---------------------------------------------------------------
def _killed_after_first_epoch(monkeypatch, *args) -> None:
    from tocom.engine import common

    save = common._save_resume

    def save_then_stop(*a, **kw):
        save(*a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(common, "_save_resume", save_then_stop)
    assert cli(*args) == 130
    monkeypatch.setattr(common, "_save_resume", save)


def _same_weights(a, b) -> bool:
    a, b = read_safetensors(a), read_safetensors(b)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rerun_with_another_checkpoint_starts_afresh(made, tmp_path, monkeypatch, capfd):
    """Killed after epoch 1 of a fine-tune from bb1, rerun from bb2: the old state is discarded with one line
    naming the changed input, and the result is bb2's fine-tune, not bb1's finished."""
    common = ["finetune", "--dataset", "digits", "--limit", 16, "--epochs", 2, "--batch-size", 16]
    out = tmp_path / "ft.safetensors"
    _killed_after_first_epoch(monkeypatch, *common, "--checkpoint", made["bb1"], "--out", out)
    assert not out.exists()
    capfd.readouterr()
    ok(*common, "--checkpoint", made["bb2"], "--out", out)
    err = capfd.readouterr().err
    assert "resuming" not in err
    assert "made from other inputs" in err and f"checkpoint.sha256: {file_digest(made['bb1'])[:12]}..." in err
    ok(*common, "--checkpoint", made["bb2"], "--out", tmp_path / "straight.safetensors")
    assert _same_weights(out, tmp_path / "straight.safetensors")


def test_rerun_with_another_data_root_starts_afresh(tmp_path, monkeypatch, capfd):
    one, two = _vtab_task(tmp_path / "one", 0), _vtab_task(tmp_path / "two", 1)
    common = ["finetune", "--backbone", BACKBONE, "--dataset", "vtab/kitti", "--epochs", 2, "--batch-size", 12]
    out = tmp_path / "ft.safetensors"
    _killed_after_first_epoch(monkeypatch, *common, "--data-root", one, "--out", out)
    capfd.readouterr()
    ok(*common, "--data-root", two, "--out", out)
    err = capfd.readouterr().err
    assert "resuming" not in err and "made from other inputs" in err and "data.root" in err, err
    assert header(out)["lineage"]["data"]["root"] == str(two.resolve())


# ---- 3. checks where two artefacts meet ---------------------------------------------------------------------------
def test_plugin_from_another_pretraining_is_refused_unless_allowed(made, tmp_path, capfd):
    """bb2 is the same architecture pretrained on other images: its plugin used to be applied without a word."""
    out = tmp_path / "eval.csv"
    refused(capfd, "evaluate", "--checkpoint", made["ft0"], *EVAL, "--plugin", made["p2"], "--out", out,
            needles=(f"plugin tocom ({made['p2']})", file_digest(made["bb1"])[:12], file_digest(made["bb2"])[:12],
                     "--allow-other-backbone"), out=out)
    capfd.readouterr()
    ok("evaluate", "--checkpoint", made["ft0"], *EVAL, "--plugin", made["p2"], "--allow-other-backbone", "--out", out)
    err = capfd.readouterr().err
    assert "going on as --allow-other-backbone says" in err
    record = json.loads(out.with_name("eval.csv.json").read_text())["lineage"]
    assert record["allowed"] == ["other_backbone"]
    assert record["plugins"]["tocom"]["backbone"]["sha256"] == file_digest(made["bb2"])


def test_selection_companion_of_another_dataset_or_backbone_is_refused(made, tmp_path, capfd):
    out = tmp_path / "eval.csv"
    args = ["evaluate", "--checkpoint", made["ft0"], *EVAL, "--splits", "test", "--out", out]
    refused(capfd, *args, "--select-checkpoint", made["shapes0"],
            needles=("fine-tuned on synth/shapes", "on digits"), out=out)
    refused(capfd, *args, "--select-checkpoint", made["other0"],
            needles=(f"--select-checkpoint {made['other0']} from", file_digest(made["bb2"])[:12]), out=out)
    ok(*args, "--select-checkpoint", made["ft0"])         # same dataset, backbone and source r: accepted


def test_transfer_checks_what_its_row_claims(made, tmp_path, capfd):
    """M_high^A - M_0^A + M_0^B: three different models (not plugins), at the degrees the row names, A's two on
    one dataset, all from B's backbone."""
    out = tmp_path / "t.csv"

    def transfer(high, low, b, *more):
        return ["transfer", "--high-a", high, "--low-a", low, "--model-b", b, "--target-r", 2, "--limit", 16,
                "--batch-size", 16, *more, "--out", out]

    refused(capfd, *transfer(made["ft0"], made["ft0"], made["shapes0"]), needles=("are the same model",), out=out)
    refused(capfd, *transfer(made["ft0"], made["ft2"], made["shapes0"]),
            needles=(f"--low-a {made['ft2']} was fine-tuned at r=2",), out=out)
    refused(capfd, *transfer(made["ft2"], made["ft0"], made["ft2"]), needles=("--model-b", "r=2"), out=out)
    refused(capfd, *transfer(made["p1"], made["ft0"], made["shapes0"]), needles=("is a ToCom plugin",), out=out)
    refused(capfd, *transfer(made["ft2"], made["shapes0"], made["ft0"]),
            needles=("fine-tuned on digits", "on synth/shapes"), out=out)
    refused(capfd, *transfer(made["ft2"], made["ft0"], made["other0"]),
            needles=(f"--model-b {made['other0']} from", "--allow-other-backbone"), out=out)
    ok(*transfer(made["ft2"], made["ft0"], made["shapes0"]))
    record = json.loads(out.with_name("t.csv.json").read_text())["lineage"]
    assert record["high_a"]["sha256"] == file_digest(made["ft2"]) and record["allowed"] == []
    ok(*transfer(made["ft2"], made["ft0"], made["other0"], "--allow-other-backbone"))
    assert json.loads(out.with_name("t.csv.json").read_text())["lineage"]["allowed"] == ["other_backbone"]


def test_a_search_result_applies_to_its_own_dataset_and_backbone(made, tmp_path, capfd):
    chosen = tmp_path / "chosen.json"
    chosen.write_text(json.dumps({"chosen": {"lr": 0.002}, "dataset": "synth/shapes",
                                  "backbone": header(made["ft0"])["lineage"]["backbone"]}))
    out = tmp_path / "ft.safetensors"
    args = ["finetune", "--checkpoint", made["bb1"], "--dataset", "digits", *SMALL, "--chosen", chosen, "--out", out]
    refused(capfd, *args, needles=("searched on synth/shapes, not digits",), out=out)
    chosen.write_text(json.dumps({"chosen": {"lr": 0.002}, "dataset": "digits",
                                  "backbone": header(made["other0"])["lineage"]["backbone"]}))
    refused(capfd, *args, needles=(file_digest(made["bb2"])[:12], "this fine-tune starts from"), out=out)


# ---- 4. selection never sees the test split -----------------------------------------------------------------------
@pytest.mark.parametrize("splits, select, needle", [
    (["test"], "test", "nothing is ever chosen on the test split"),
    (["val", "test"], "test", "nothing is ever chosen on the test split"),
    (["trainval", "test"], "val", "overlaps the reported split 'trainval'"),
])
def test_s_is_never_chosen_on_test_nor_on_a_reported_split(made, tmp_path, capfd, splits, select, needle):
    out = tmp_path / "eval.csv"
    refused(capfd, "evaluate", "--checkpoint", made["ft0"], *EVAL, "--splits", *splits, "--select-split", select,
            "--plugin", made["p1"], "--out", out, needles=(needle,), out=out)


def test_a_search_never_scores_on_test(made, tmp_path, capfd):
    out = tmp_path / "cand.safetensors"
    refused(capfd, "finetune", "--checkpoint", made["bb1"], "--dataset", "digits", *SMALL, "--score-split", "test",
            "--out", out, needles=("--score-split is 'test'",), out=out)


def test_refusal_for_a_model_trained_on_the_selection_split_points_away_from_test():
    from tocom.engine.evaluate import check_selection

    with pytest.raises(TocomError) as e:
        check_selection({"split": "trainval"}, "val", "the final model")
    assert "--select-checkpoint" in str(e.value) and "test" not in str(e.value) and "another split" not in str(e.value)


def _score(tmp_path, name, **change):
    sc = {"top1": 50.0, "n": 10, "split": "val", "dataset": "digits", "source_r": 0, "settings": {"lr": 0.001},
          "backbone": {"kind": "file", "name": BACKBONE, "sha256": "a" * 64}} | change
    path = tmp_path / f"{name}.score.json"
    path.write_text(json.dumps(sc))
    return str(path)


@pytest.mark.parametrize("change, needle", [
    ({"split": "test"}, "nothing is ever chosen on the test split"),
    ({"top1": float("nan")}, "top1=nan, not a finite number"),
    ({"top1": "99"}, "its top1 '99' is not what a search score holds"),
    ({"dataset": "synth/shapes"}, "different datasets"),
    ({"backbone": {"kind": "file", "name": BACKBONE, "sha256": "b" * 64}}, "different backbones"),
])
def test_select_refuses_test_scores_nan_and_mixed_candidates(tmp_path, change, needle):
    """A NaN compares false with everything, so it used to win; the other candidate's score is lower here."""
    from tocom.search import select

    good = _score(tmp_path, "good", top1=40.0)
    bad = _score(tmp_path, "bad", settings={"lr": 0.002}, **change)
    with pytest.raises(TocomError) as e:
        select([bad, good], tmp_path / "chosen.json")
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "chosen.json").exists()


def test_score_files_and_search_results_say_what_they_were_taken_on(made, tmp_path):
    from tocom.search import select

    out = tmp_path / "cand.safetensors"
    ok("finetune", "--checkpoint", made["bb1"], "--dataset", "digits", *SMALL, "--score-split", "val", "--out", out)
    score = json.loads((tmp_path / "cand.safetensors.score.json").read_text())
    assert (score["split"], score["dataset"], score["source_r"]) == ("val", "digits", 0)
    assert score["backbone"]["sha256"] == file_digest(made["bb1"])
    assert score["lineage"]["model"]["sha256"] == file_digest(out) and score["lineage"]["data"]["split"] == "val"
    result = select([str(tmp_path / "cand.safetensors.score.json")], tmp_path / "chosen.json")
    assert result["dataset"] == "digits" and result["backbone"] == score["backbone"]


# ---- 5. plugin and model header values -------------------------------------------------------------------------
def _edit(path, out, extra=None, tensors=None, record=None):
    """A copy of a safetensors file with its `extra` / `tocom` record or its tensors changed."""
    meta = read_safetensors_header(path)[0]
    if extra:
        meta["extra"] = json.dumps({**json.loads(meta["extra"]), **extra})
    if record:
        meta["tocom"] = json.dumps({**json.loads(meta["tocom"]), **record})
    weights = read_safetensors(path)
    if tensors:
        tensors(weights)
    write_safetensors(weights, out, meta)
    return out


def _poison(value):
    def change(weights):
        weights["B.q"][0, 0, 0, 0] = value
    return change


@pytest.mark.parametrize("extra, tensors, needle", [
    ({"train_scale": -1}, None, "train_scale=-1, not a number > 0"),
    ({"train_scale": 0}, None, "train_scale=0, not a number > 0"),
    ({"train_scale": "nan"}, None, "train_scale='nan', not a number > 0"),
    ({"train_scale": "abc"}, None, "train_scale='abc', not a number > 0"),
    ({"train_scale": True}, None, "train_scale=True"),
    ({"seed": "2"}, None, "seed='2', not a whole number"),
    (None, _poison(float("nan")), "tensor B.q holds NaN or inf"),
    (None, _poison(float("inf")), "tensor B.q holds NaN or inf"),
], ids=["scale-1", "scale0", "scale-nan-text", "scale-abc", "scale-bool", "seed-text", "nan-tensor", "inf-tensor"])
def test_plugin_with_unusable_values_is_refused_in_one_line(made, tmp_path, extra, tensors, needle):
    from tocom.plugin import ToCom

    path = _edit(made["p1"], tmp_path / "p.safetensors", extra=extra, tensors=tensors)
    with pytest.raises(TocomError) as e:
        ToCom.load(path)
    assert needle in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("record, needle", [
    ({"source_r": "abc"}, "source_r='abc', not a whole number >= 0"),
    ({"source_r": -1}, "source_r=-1"),
    ({"seed": 2.5}, "seed=2.5"),
    ({"epochs": 0}, "epochs=0, not a whole number >= 1"),
    ({"dataset": 7}, "dataset=7, not a name"),
    ({"lineage": [1]}, "lineage=[1], not an object"),
])
def test_model_header_with_values_that_are_not_numbers_is_refused(made, tmp_path, capfd, record, needle):
    path = _edit(made["ft0"], tmp_path / "m.safetensors", record=record)
    out = tmp_path / "eval.csv"
    refused(capfd, "evaluate", "--checkpoint", path, *EVAL, "--out", out, needles=(needle, str(path)), out=out)


def test_model_with_nan_weights_is_refused(made, tmp_path):
    from tocom.models import load_model

    def poison(weights):
        weights["blocks.0.attn.qkv.weight"][0, 0] = float("nan")
    path = _edit(made["ft0"], tmp_path / "m.safetensors", tensors=poison)
    with pytest.raises(TocomError, match="tensor blocks.0.attn.qkv.weight holds NaN or inf"):
        load_model(path)


# ---- 6. seed and dataset from the model's header ---------------------------------------------------------------
def test_evaluation_rows_carry_the_seed_of_the_model(made, tmp_path, capfd):
    import pandas as pd

    out = tmp_path / "eval.csv"
    ok("evaluate", "--checkpoint", made["ft0"], *EVAL, "--out", out)
    assert set(pd.read_csv(out).seed) == {2}                 # ft0 was trained with seed 2; no --seed given
    capfd.readouterr()
    ok("evaluate", "--checkpoint", made["ft0"], *EVAL, "--seed", 1, "--out", out)
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained with seed 2" in err[0] and "seed 1, as --seed says" in err[0]
    assert set(pd.read_csv(out).seed) == {1}
    capfd.readouterr()
    ok("transfer", "--high-a", made["ft2"], "--low-a", made["ft0"], "--model-b", made["shapes0"], "--target-r", 2,
       "--limit", 16, "--batch-size", 16, "--out", tmp_path / "t.csv")
    assert set(pd.read_csv(tmp_path / "t.csv").seed) == {2} and capfd.readouterr().err == ""


def test_another_dataset_with_the_same_classes_is_said_unless_named(made, tmp_path, capfd):
    out = tmp_path / "eval.csv"
    capfd.readouterr()
    ok("evaluate", "--checkpoint", made["ft0"], *EVAL, "--dataset", "synth/shapes", "--out", out)
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fine-tuned on digits; evaluating it on synth/shapes" in err[0]
    assert json.loads(out.with_name("eval.csv.json").read_text())["lineage"]["allowed"] == []
    ok("evaluate", "--checkpoint", made["ft0"], *EVAL, "--dataset", "synth/shapes", "--allow-other-dataset",
       "--out", out)
    assert capfd.readouterr().err == ""
    assert json.loads(out.with_name("eval.csv.json").read_text())["lineage"]["allowed"] == ["other_dataset"]


# ---- 7. a misfit is refused before the first forward pass ------------------------------------------------------
@pytest.mark.parametrize("plugin, needle", [
    ("p1_r2", "target_r=4 is outside this plugin's degrees 0..2"),
    ("p1_evit", "method evit vs model tome"),
])
def test_a_plugin_that_does_not_fit_is_refused_before_any_pass(made, tmp_path, capfd, monkeypatch, plugin, needle):
    """Found in the plugin loop, the misfit used to come after every plain pass (26 in one probe)."""
    from tocom.engine import evaluate

    def no_pass(*a, **k):
        raise AssertionError("a forward pass ran before the plugin was checked")

    monkeypatch.setattr(evaluate, "accuracy", no_pass)
    out = tmp_path / "eval.csv"
    refused(capfd, "evaluate", "--checkpoint", made["ft0"], "--targets", 0, 2, 4, "--limit", 16, "--batch-size", 16,
            "--plugin", f"x={made[plugin]}", "--out", out, needles=(f"plugin x ({made[plugin]})", needle), out=out)


def test_every_evaluator_checks_its_plugins_first(made):
    """The segmentation evaluator shares the loop: `measure` is never called for a plugin that cannot move."""
    from tocom.compress import patch
    from tocom.engine.common import evaluate_targets
    from tocom.models import load_model
    from tocom.plugin import ToCom
    from tocom.settings import EvalSettings

    model, _ = load_model(made["ft0"])
    patch(model, "tome")

    def measure(*a):
        raise AssertionError("measured before the plugins were checked")

    with pytest.raises(TocomError, match="plugin x .*outside this plugin's degrees 0..2"):
        evaluate_targets([model], ["val", "test"], [0, 4], 0, {"x": ToCom.load(made["p1_r2"])}, EvalSettings(), measure,
                         "top1", torch.device("cpu"), {})
