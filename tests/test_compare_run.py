"""compare_run.py and the run record in docs/results.md's block: a user's finished run is compared with ours
stage by stage (identical, or where the two first part) and claim by claim, on a small fabricated run folder
(the smoke run's own check is in test_workflow.py's pipeline test)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from tocom import layout
from tocom.io import write_safetensors

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
import compare_run  # noqa: E402
import readme_results  # noqa: E402

VERDICTS = {"1 plain 0 → 4": "not significant", "2 ToCom 0 → 4": "holds", "7a": "holds",
            "8 evit 0 → 4": "holds"}


def fabricate(root: Path, seed: int = 0) -> Path:
    """A finished run's artefacts, tables and verdicts, as the workflow lays them out (small tensors)."""
    run = root / layout.run_dir("smoke")
    g = torch.Generator().manual_seed(seed)
    files = {layout.path(layout.BACKBONE, backbone="tiny"): {"tocom": {"stage": "pretrain", "seed": seed}},
             **{layout.path(layout.PLUGIN, backbone="tiny", method="tome", variant=v):
                {"format": "tocom", "variant": v, "rank": "2", "extra": {"seed": seed}} for v in ("tocom", "h4")},
             **{layout.path(layout.FINETUNE, backbone="tiny", method="none", dataset="fmnist_vtab/small", source=0,
                            seed=s): {"tocom": {"seed": s}} for s in (0, 1)}}
    for rel, meta in files.items():
        write_safetensors({"a": torch.randn(3, 4, generator=g), "b": torch.randn(2, generator=g)}, run / rel, meta)
    rows = [dict(dataset="fmnist_vtab/small", backbone="tocom_vit_tiny_patch8_56", method="tome", source_r=0,
                 target_r=t, tocom=int(v != ""), variant=v, s=0.1 if v else None, split="test", seed=s,
                 top1=50.0 + s + t + (v != ""), n=500, selected=bool(v), checkpoint="final", backbone_key="tiny")
            for s in (0, 1) for t in (0, 2, 4) for v in ("", "tocom") if not (t == 0 and v)]
    tables = run / "tables"
    tables.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(tables / "eval.csv", index=False)
    pd.DataFrame([dict(dataset="fmnist_vtab/tops", model="M0_B", target_r=4, seed=0, top1=40.0)]).to_csv(
        tables / "transfer.csv", index=False)
    claims = run / layout.REPORT_ITEM.format(item=compare_run.VERDICT_ITEM, ext=".csv")
    claims.parent.mkdir(parents=True)
    pd.DataFrame([dict(kind="claim", block=k, row="x", key=k, verdict=v) for k, v in VERDICTS.items()]
                 + [dict(kind="detail", block="7a", row="h = 1", key="h = 1", verdict="")]).to_csv(claims, index=False)
    claims.with_suffix(".md").write_text("### Claims\n\n(the claims table)\n")
    return run


def rewrite_header_in_another_order(path: Path) -> None:
    """The same tensors and metadata with the header's keys written in another order (what the safetensors
    library may do for several metadata keys)."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header["__metadata__"] = dict(reversed(list(header["__metadata__"].items())))
    header = dict(reversed(list(header.items())))
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])


def test_a_copy_is_identical_and_a_header_order_does_not_count(tmp_path, capsys):
    a = fabricate(tmp_path / "a")
    b = tmp_path / "b" / "results" / "smoke"
    shutil.copytree(a, b)
    plugin = b / layout.path(layout.PLUGIN, backbone="tiny", method="tome", variant="tocom")
    before = plugin.read_bytes()
    rewrite_header_in_another_order(plugin)
    assert plugin.read_bytes() != before
    assert compare_run.main([str(a), "--with", str(b)]) == 0
    out = capsys.readouterr().out
    assert "**Identical artefacts at every stage.**" in out and "Verdicts: **4 of 4 agree**." in out
    rec = compare_run.record(a)
    assert rec["digests"]["fine-tune"]["fine-tuned models"]["files"] == 2 and rec["seeds"] == [0, 1]
    assert rec["digests"]["evaluation"]["segment.csv"] == {"files": 0, "sha256": None}


def test_where_two_runs_first_part_and_which_verdicts_differ(tmp_path, capsys):
    a = fabricate(tmp_path / "a")
    b = tmp_path / "b" / "results" / "smoke"
    shutil.copytree(a, b)
    h4 = b / layout.path(layout.PLUGIN, backbone="tiny", method="tome", variant="h4")
    write_safetensors({"a": torch.zeros(3, 4), "b": torch.zeros(2)}, h4,
                      {"format": "tocom", "variant": "h4", "rank": "2", "extra": {"seed": 0}})
    assert compare_run.main([str(a), "--with", str(b)]) == 1
    out = capsys.readouterr().out
    assert "**The runs first part at distillation**" in out
    assert "| pre-training | backbones |" in out and out.count("| **no** |") == 1       # the plugins only
    (b / "tables" / "eval.csv").write_text((b / "tables" / "eval.csv").read_text().replace("51.0", "51.2"))
    claims = b / layout.REPORT_ITEM.format(item=compare_run.VERDICT_ITEM, ext=".csv")
    df = pd.read_csv(claims, keep_default_na=False)
    df.loc[df.key == "8 evit 0 → 4", "verdict"] = "not significant"
    df.to_csv(claims, index=False)
    assert compare_run.main([str(a), "--with", str(b)]) == 1
    out = capsys.readouterr().out
    assert "| evaluation | eval.csv |" in out and "Verdicts: **3 of 4 agree**." in out
    assert "| 8 evit 0 → 4 | holds | not significant | **no** |" in out


def test_a_users_run_against_the_block_of_the_results_page(tmp_path, capsys):
    """readme_results.py writes the record into the block (digests table + run-record comment); compare_run.py
    reads it back: the same run is identical, a rerun with other seeds is named as such, a page without a
    record is one line and exit 2. --replicate puts the second run's verdicts beside the first's."""
    ours = fabricate(tmp_path / "ours")
    config = REPO / "config" / "cpu.yaml"
    page = tmp_path / "results.md"
    page.write_text(f"# Results\n\n{readme_results.START} x -->\nold\n{readme_results.END}\n\nnarrative\n")
    other = fabricate(tmp_path / "other", seed=3)
    claims = other / layout.REPORT_ITEM.format(item=compare_run.VERDICT_ITEM, ext=".csv")
    df = pd.read_csv(claims, keep_default_na=False)
    df.loc[df.key == "7a", "verdict"] = "does not hold"
    df.to_csv(claims, index=False)
    sys.argv = ["readme_results.py", str(ours), "--config", str(config), "--wall", "70 min", "--readme", str(page),
                "--replicate", str(other)]
    readme_results.main()
    text = page.read_text()
    assert text.startswith("# Results") and text.endswith("narrative\n") and "\nold\n" not in text
    assert "| pre-training | backbones | 1 | `" in text and "<!-- run-record {" in text
    assert "**3 of 4 verdicts agree.**" in text and "| 7a | holds | does not hold | **no** |" in text

    assert compare_run.main([str(ours), "--page", str(page), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "Config: the same" in out and "**Identical artefacts at every stage.**" in out
    assert compare_run.main([str(other), "--page", str(page), "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert "**The runs first part at pre-training**" in out and "Verdicts: **3 of 4 agree**." in out

    page.write_text("no block here\n")
    assert compare_run.main([str(ours), "--page", str(page)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no run record" in err[0]
    assert compare_run.main([str(tmp_path / "nowhere"), "--page", str(page)]) == 2
    assert "is not a results folder" in capsys.readouterr().err


@pytest.mark.parametrize("damage", [b"\x00" * 16, b"\xff" * 8 + b"{}"])
def test_an_unreadable_artefact_is_one_line(tmp_path, capsys, damage):
    a = fabricate(tmp_path / "a")
    (a / layout.path(layout.BACKBONE, backbone="tiny")).write_bytes(damage)
    assert compare_run.main([str(a), "--with", str(a)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "backbones/tiny.safetensors is not a readable safetensors file" in err[0]
