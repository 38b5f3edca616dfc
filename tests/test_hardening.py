"""Hardening against hostile or stale files and concurrent runs.

- dataset pickles cannot run code (CIFAR-100 reader), third-party .pth cannot either (weights_only);
- plugin and model headers are checked against their tensors before anything is loaded;
- resume state from other settings is discarded, resume state is one unit, one writer per output;
- outputs honour the umask; `import tocom` registers the tiny backbones with timm without importing it.
Every user error is one TocomError line naming the file.
"""
from __future__ import annotations

import copy
import errno
import hashlib
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import TensorDataset

from tocom.errors import TocomError
from tocom.io import write_safetensors

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def one_line(excinfo, *needles: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.strip() == msg, msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


# ---- 1. dataset pickles cannot run code --------------------------------------------------------------
class _System:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Open:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")       # pickled as io.open


def _builtins_open_pickle(marker) -> bytes:
    """A hand-written pickle calling builtins.open (the builtins module is partly allowed: dict, list, ...)."""
    return b"(dp0\nS'x'\np1\ncbuiltins\nopen\np2\n(S'" + str(marker).encode() + b"'\nS'w'\ntRp3\ns."


def _cifar_dict(n=6, off=0):
    data = np.zeros((n, 3072), np.uint8)
    data[:, 0] = off + np.arange(n)
    return {b"data": data, b"fine_labels": [(k * 7) % 100 for k in range(n)], b"coarse_labels": [0] * n}


def _write_cifar(base: Path, protocol: int = pickle.DEFAULT_PROTOCOL, py2_names: bool = False):
    base.mkdir(parents=True, exist_ok=True)
    for name, payload in (("train", _cifar_dict()), ("test", _cifar_dict(3, 100)),
                          ("meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)]})):
        raw = pickle.dumps(payload, protocol=protocol)
        if py2_names:   # the official release was pickled by Python 2 with numpy 1: numpy.core.multiarray
            raw = raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
        (base / name).write_bytes(raw)


def _build_cifar(root, split="train"):
    from tocom.data import build_dataset

    return build_dataset("cifar100", root=str(root), split=split, img_size=32)


@pytest.mark.parametrize("protocol, py2_names", [(2, True), (2, False), (4, False), (5, False)])
def test_legitimate_cifar_pickles_still_load(tmp_path, protocol, py2_names):
    _write_cifar(tmp_path / "cifar-100-python", protocol, py2_names)
    if py2_names:
        assert b"numpy.core.multiarray" in (tmp_path / "cifar-100-python/train").read_bytes()
    ds = _build_cifar(tmp_path, "trainval")
    assert len(ds) == 6 and ds.targets == [(k * 7) % 100 for k in range(6)]
    assert ds.classes[:2] == ["c0", "c1"]
    assert len(_build_cifar(tmp_path, "test")) == 3


@pytest.mark.parametrize("gadget, named", [(_System, "system"), (_Open, "io.open"), (None, "builtins.open")])
@pytest.mark.parametrize("victim", ["train", "meta"])
def test_cifar_pickle_that_would_run_code_is_refused_unrun(tmp_path, gadget, named, victim):
    base = tmp_path / "cifar-100-python"
    _write_cifar(base)
    marker = tmp_path / "pwned"
    if gadget is None:
        raw = _builtins_open_pickle(marker)
        pickle.loads(raw).pop("x").close()       # the gadget works: plain pickle creates the marker
        assert marker.exists()
        marker.unlink()
    else:
        payload = {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 1], b"x": gadget(marker)}
        if victim == "meta":
            payload = {b"fine_label_names": [b"a"], b"x": gadget(marker)}
        raw = pickle.dumps(payload)
    (base / victim).write_bytes(raw)
    with pytest.raises(TocomError) as e:
        _build_cifar(tmp_path, "trainval")
    one_line(e, str(base / victim), "refused", named)
    assert not marker.exists()


# ---- checkpoints: torch.load keeps weights_only, and its refusal is one line ---------------------------
def test_pth_that_would_run_code_is_refused_in_one_line(tmp_path):
    from tocom.models import read_state_dict

    marker, pth = tmp_path / "pwned", tmp_path / "evil.pth"
    pth.write_bytes(pickle.dumps({"model": {"w": _System(marker)}}, protocol=2))
    with pytest.raises(TocomError) as e:
        read_state_dict(pth)
    one_line(e, str(pth), "weights_only=True")
    assert not marker.exists()
    good = tmp_path / "good.pth"
    torch.save({"model": {"module.w": torch.ones(2)}}, good)
    assert torch.equal(read_state_dict(good)["w"], torch.ones(2))


# ---- 2. plugin headers must agree with their tensors -------------------------------------------------
def _plugin(tmp_path, variant="tocom", r_max=4):
    from tocom.plugin.tocom import ToCom

    torch.manual_seed(0)
    plugin = ToCom(depth=2, dim=8, r_max=r_max, rank=2, variant=variant, backbone="b", method="tome")
    for p in plugin.parameters():
        nn.init.normal_(p)
    path = tmp_path / f"{variant}.safetensors"
    plugin.save(path, extra={"loss": "kl"})
    return plugin, path


def _rewrite(path: Path, meta_change=None, tensor_change=None) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(path))
    if meta_change:
        meta_change(meta)
    if tensor_change:
        tensor_change(tensors)
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("variant", ["tocom", "shared", "no_inversion"])
def test_plugin_roundtrip_of_every_variant(tmp_path, variant):
    from tocom.plugin.tocom import ToCom

    plugin, path = _plugin(tmp_path, variant)
    back = ToCom.load(path)
    assert back.num_groups == {"tocom": 4, "shared": 1, "no_inversion": 8}[variant]
    for a, b in zip(plugin.parameters(), back.parameters()):
        assert torch.equal(a, b)


def _one_group(t):      # tensors of a 1-group plugin (would broadcast into r_max groups on copy_)
    for k in list(t):
        t[k] = t[k][:1].contiguous()


LIES = {
    "r_max says 4, tensors hold 1 group": (None, _one_group, "A.q should be (4, 2, 2, 8)"),
    "variant says no_inversion": (lambda m: m.update(variant="no_inversion"), None, "8 groups"),
    "rank says 3": (lambda m: m.update(rank="3"), None, "rank 3"),
    "r_step says 2": (lambda m: m.update(r_step="2"), None, "A.q should be (2, 2, 2, 8)"),
    "r_step does not divide r_max": (lambda m: m.update(r_step="3"), None, "r_step=3, which does not divide"),
    "r_step not a number": (lambda m: m.update(r_step="two"), None, "r_step='two'"),
    "tensor missing": (None, lambda t: t.pop("B.v"), "B.v"),
    "stray tensor": (None, lambda t: t.update(C=torch.zeros(1)), "unexpected"),
    "depth not a number": (lambda m: m.update(depth="twelve"), None, "depth='twelve'"),
    "depth missing": (lambda m: m.pop("depth"), None, "lacks depth"),
    "variant unknown": (lambda m: m.update(variant="magic"), None, "'magic'"),
    "extra not JSON": (lambda m: m.update(extra="{loss: kl"), None, "'extra' is not valid JSON"),
    "extra not an object": (lambda m: m.update(extra="[1, 2]"), None, "not an object"),
    "integer tensors": (None, lambda t: t.update({k: v.to(torch.int32) for k, v in t.items()}), "not floats"),
}


@pytest.mark.parametrize("lie", list(LIES))
def test_plugin_whose_header_lies_is_refused_in_one_line(tmp_path, lie):
    from tocom.plugin.tocom import ToCom

    meta_change, tensor_change, needle = LIES[lie]
    _, path = _plugin(tmp_path)
    _rewrite(path, meta_change, tensor_change)
    with pytest.raises(TocomError) as e:
        ToCom.load(path)
    one_line(e, str(path), needle)


# ---- model checkpoints' tocom headers ------------------------------------------------------------------
BACKBONE = "tocom_vit_tiny_patch8_56"


@pytest.fixture
def saved_model(tmp_path):
    from tocom.models import create_backbone, save_model

    torch.manual_seed(0)
    model = create_backbone(BACKBONE, num_classes=3, depth=2)
    path = tmp_path / "model.safetensors"
    save_model(model, path, {"backbone": BACKBONE, "num_classes": 3, "model_kwargs": {"depth": 2}})
    return model, path


def _set_header(path, change):
    def meta_change(m):
        if callable(change):
            head = json.loads(m["tocom"])
            change(head)
            m["tocom"] = json.dumps(head)
        else:
            m["tocom"] = change
    _rewrite(path, meta_change)


def test_model_checkpoint_roundtrip(saved_model):
    from tocom.models import load_model

    model, path = saved_model
    back, meta = load_model(path)
    assert meta["num_classes"] == 3 and len(back.blocks) == 2
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))


HEADERS = {
    "bad JSON": ("{backbone: x", "not valid JSON"),
    "JSON list": ("[1]", "not an object"),
    "no backbone": (lambda h: h.pop("backbone"), "names no backbone"),
    "unknown backbone": (lambda h: h.update(backbone="no_such_vit"), "unknown backbone 'no_such_vit'"),
    "wrong backbone": (lambda h: h.update(backbone="tocom_vit_micro_patch4_56"), "do not fit the header's backbone"),
    "wrong class count": (lambda h: h.update(num_classes=5), "header says 5 classes but head.weight has 3 rows"),
    "class count not a number": (lambda h: h.update(num_classes="3"), "num_classes='3'"),
    "bad model kwargs": (lambda h: h.update(model_kwargs={"depht": 2}), "cannot build"),
}


@pytest.mark.parametrize("case", list(HEADERS))
def test_model_checkpoint_whose_header_lies_is_refused_in_one_line(saved_model, case):
    from tocom.models import load_model

    _, path = saved_model
    change, needle = HEADERS[case]
    _set_header(path, change)
    with pytest.raises(TocomError) as e:
        load_model(path)
    one_line(e, str(path), needle)


# ---- 3. training: fingerprinted resume state, one unit, one writer ----------------------------------
class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 3))

    def forward(self, x, y):
        return nn.functional.cross_entropy(self.net(x), y)


def _data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g))


def _train(out, fingerprint, data_seed=1, epochs=4, finish=True):
    from tocom.engine import common

    rt = common.Runtime(device=torch.device("cpu"))
    module = Tiny()
    job = common.Fit(module, epochs=epochs, lr=0.05, min_lr=1e-6, weight_decay=0.01, warmup_epochs=1)
    common.fit(job, common.loader(_data(data_seed), 16, rt, train=True, seed=3), out, rt, 3, False,
               fingerprint=fingerprint)
    weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
    if finish:
        common.finish(Path(out), rt, lambda: write_safetensors(weights, out))
    return weights


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def clean(tmp_path):
    """Weights of an uninterrupted run (fingerprint {'data': 'one'})."""
    return _train(tmp_path / "clean.safetensors", {"data": "one"})


def test_positional_signature_still_works(tmp_path):
    from tocom.engine import common

    rt = common.Runtime(device=torch.device("cpu"))
    job = common.Fit(Tiny(), epochs=1, lr=0.01, min_lr=1e-6)
    out = tmp_path / "o.safetensors"
    common.fit(job, common.loader(_data(), 16, rt, True, 3), out, rt, 3, False)
    assert (tmp_path / "o.safetensors.resume/state.pt").is_file()
    assert (tmp_path / "o.safetensors.lock").is_file()            # held from fit until finish
    common.finish(out, rt, lambda: write_safetensors(dict(job.module.state_dict()), out))
    assert not (tmp_path / "o.safetensors.lock").exists() and not (tmp_path / "o.safetensors.resume").exists()


@pytest.mark.parametrize("stale", ["other fingerprint", "old layout"])
def test_resume_state_from_other_settings_is_discarded(tmp_path, clean, capfd, stale):
    out = tmp_path / "out.safetensors"
    if stale == "other fingerprint":
        # a complete run on other data, never finished: its resume state says "epoch 4 of 4 done"
        _train(out, {"data": "two"}, data_seed=2, finish=False)
    else:
        # what the previous version left: weights and optimizer state in two files, no fingerprint
        resume = out.with_name(out.name + ".resume")
        resume.mkdir()
        stale_weights = {f"net.{k}": v for k, v in Tiny().net.state_dict().items()}
        save_file({k: v + 1 for k, v in stale_weights.items()}, str(resume / "trainable.safetensors"))
        torch.save({"optimizer": {"state": {}, "param_groups": []}, "epoch": 4}, resume / "state.pt")
    capfd.readouterr()
    got = _train(out, {"data": "one"})
    err = capfd.readouterr().err
    assert "discarding the resume state" in err and "resuming" not in err
    if stale == "other fingerprint":
        assert "data: \"two\" -> \"one\"" in err
    assert _same(got, clean)
    assert not out.with_name(out.name + ".resume").exists()


def test_same_fingerprint_resumes(tmp_path, clean, capfd):
    out = tmp_path / "out.safetensors"
    _train(out, {"data": "one"}, epochs=4, finish=False)
    capfd.readouterr()
    got = _train(out, {"data": "one"})        # nothing left to train: resumes after epoch 4
    assert "resuming out.safetensors after epoch 4/4" in capfd.readouterr().err
    assert _same(got, clean)


class Killed(BaseException):
    """Stands in for SIGKILL at an exact point."""


@pytest.mark.parametrize("when", ["after a write", "inside a write"])
@pytest.mark.parametrize("nth", [2, 3])
def test_kill_between_or_inside_resume_writes_leaves_a_consistent_state(tmp_path, clean, monkeypatch, capfd,
                                                                       when, nth):
    from tocom.engine import common

    real, writes = common.atomic_path, []

    @contextmanager
    def killing(path):
        with real(path) as tmp:
            yield tmp
            writes.append(path)
            if when == "inside a write" and len(writes) == nth:
                raise Killed          # the temporary file is written, the rename never happens
        if when == "after a write" and len(writes) == nth:
            raise Killed              # this file is in place; whatever was to follow is not

    monkeypatch.setattr(common, "atomic_path", killing)
    out = tmp_path / "out.safetensors"
    with pytest.raises(Killed):
        _train(out, {"data": "one"})
    monkeypatch.setattr(common, "atomic_path", real)
    assert not list(tmp_path.rglob("*.tmp"))
    capfd.readouterr()
    got = _train(out, {"data": "one"})
    assert "resuming" in capfd.readouterr().err
    assert _same(got, clean)


LOCK_HOLDER = textwrap.dedent("""
    import sys, time
    from tocom.engine.common import acquire_output_lock
    acquire_output_lock(sys.argv[1])
    print("locked", flush=True)
    time.sleep(120)
""")


def test_second_writer_stops_with_one_line_naming_the_holder(tmp_path, clean):
    out = tmp_path / "out.safetensors"
    env = {**os.environ, "SLURM_JOB_ID": "4242"}
    holder = subprocess.Popen([PY, "-c", LOCK_HOLDER, str(out)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(TocomError) as e:
            _train(out, {"data": "one"})
        one_line(e, str(out), f"pid {holder.pid}", "Slurm job 4242", "scancel 4242", os.uname().nodename)
        assert not out.with_name(out.name + ".resume").exists()      # the loser wrote nothing
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the dead holder's lock: the rerun goes through, and releases the lock at the end
    assert _same(_train(out, {"data": "one"}), clean)
    assert not out.with_name(out.name + ".lock").exists()
    probe = subprocess.run([PY, "-c", LOCK_HOLDER.replace("time.sleep(120)", ""), str(out)],
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr


def test_failed_run_releases_its_lock(tmp_path, monkeypatch):
    from tocom.engine import common

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(common, "_fit", boom)
    out = tmp_path / "out.safetensors"
    with pytest.raises(RuntimeError):
        _train(out, None)
    assert out.absolute() not in common._HELD
    probe = subprocess.run([PY, "-c", LOCK_HOLDER.replace("time.sleep(120)", ""), str(out)],
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr


# ---- 4. outputs honour the umask ------------------------------------------------------------------------
@contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_outputs_honour_the_umask(tmp_path, mask, mode):
    import pandas as pd

    from tocom.io import write_csv, write_json, write_text
    from tocom.plugin.tocom import ToCom

    with umask(mask):
        write_text("x", tmp_path / "a.txt")
        write_json({"a": 1}, tmp_path / "a.json")
        write_csv(pd.DataFrame({"a": [1]}), tmp_path / "a.csv")
        ToCom(depth=1, dim=4, r_max=1, rank=1).save(tmp_path / "p.safetensors")
    for name in ("a.txt", "a.json", "a.csv", "p.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_report_outputs_are_atomic_and_honour_the_umask(tmp_path):
    sys.path.insert(0, str(REPO / "workflow/scripts/report"))
    try:
        from common.table import stub, write_plain
        from items import FIGURE, TABLE, Item
    finally:
        sys.path.pop(0)
    import pandas as pd

    class Ctx:
        name, scale = "t", "smoke"

        def out(self, stem, ext):
            return tmp_path / "report" / f"{stem}{ext}"

        def fig_path(self, stem, ext):
            (tmp_path / "fig").mkdir(exist_ok=True)
            return tmp_path / "fig" / f"{stem}{ext}"

    with umask(0o022):
        stub(Ctx(), Item("figX", "Figure X", FIGURE, (), "X", "x"), "not configured")
        write_plain(Ctx(), Item("tabY", "Table Y", TABLE, (), "Y", "y"), "caption", pd.DataFrame({"a": [1.0]}))
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert {p.name for p in files} == {"figX.md", "figX.csv", "figX.png", "figX.pdf", "tabY.md", "tabY.tex", "tabY.csv"}
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in files)
    assert (tmp_path / "fig/figX.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "fig/figX.pdf").read_bytes()[:4] == b"%PDF"


# ---- 5. importing tocom registers the tiny backbones with timm, without importing torch itself ---------
@pytest.mark.parametrize("code", [
    "import sys, tocom, tocom.io; assert 'torch' not in sys.modules and 'timm' not in sys.modules, 'imported torch'",
    "import timm, tocom; timm.create_model('tocom_vit_tiny_patch8_56', depth=1)",
    "import tocom, timm; assert timm.is_model('tocom_vit_micro_patch4_56'); timm.create_model('tocom_vit_tiny_patch8_56', depth=1)",
    "import tocom.models, timm; assert timm.is_model('tocom_vit_tiny_patch4_56')",
], ids=["torch-free", "timm-first", "tocom-first", "models-first"])
def test_import_tocom_registers_backbones_with_timm(code):
    res = subprocess.run([PY, "-W", "error::UserWarning", "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]


# ---- 6. bad input: one line, exit 2, nothing written, inputs untouched -----------------------------------
# Every row runs the real command line in a fresh folder that holds only the row's inputs: it must exit 2 with
# one line naming the problem (training steps' "[tocom] ..." progress lines aside), no traceback, and leave the
# folder exactly as it found it (every input byte-identical, nothing added: no output, temporary or lock).
CLI = [PY, "-m", "tocom.cli"]
TINY_BACKBONE = "tocom_vit_tiny_patch8_56"


def tree(root: Path) -> dict[str, str]:
    """Every path below `root` with its content: a file's sha256, a symlink's target, 'folder'."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_dir():
            out[rel] = "folder"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_cli(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(CLI + argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def told(stderr: str) -> list[str]:
    """What the user is told: stderr without the progress lines training steps print ("[tocom] ... epoch")."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("[tocom] ")]


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height pixels, and no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IEND", b""))


def vtab_task(root: Path, bad_image: bytes) -> None:
    """root/patch_camelyon in the VTAB-1k layout: 8 tiny PNGs in every split list, image 3 replaced by `bad_image`."""
    from PIL import Image

    task = root / "patch_camelyon"
    (task / "images").mkdir(parents=True)
    lines = []
    for i in range(8):
        Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)).save(task / f"images/{i}.png")
        lines.append(f"images/{i}.png {i % 2}\n")
    (task / "images/3.png").write_bytes(bad_image)
    for name in ("train800.txt", "val200.txt", "train800val200.txt", "test.txt"):
        (task / name).write_text("".join(lines))


@contextmanager
def tmpfs(path: Path, *options: str):
    """A tmpfs mounted at `path` (root only; the test is skipped where it cannot be mounted)."""
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)],
                                           capture_output=True).returncode:
        pytest.skip("needs root to mount a tmpfs")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@contextmanager
def read_only_folder(path: Path):
    """A folder no one may write into: a read-only tmpfs as root (root writes through permissions), else 0555."""
    if os.geteuid() == 0:
        with tmpfs(path, "ro", "size=64k"):
            yield path
        return
    path.mkdir()
    path.chmod(0o555)
    try:
        yield path
    finally:
        path.chmod(0o755)


def _model(d: Path, name: str = "m.safetensors") -> str:
    (d / name).write_bytes(b"weights: refused before they are read")
    return name


def _score(d: Path, name: str, **fields) -> str:
    (d / name).write_text(json.dumps({"top1": 50.0, "split": "val", "settings": {"lr": 0.1}, **fields}))
    return name


def _user_task_folder(d, stack):
    (d / "tasks/small").mkdir(parents=True)
    (d / "tasks/small/mine.txt").write_text("a user's file")
    return ["make-tasks", "--out", "tasks", "--tasks", "small", "--n-train", "2", "--n-val", "2", "--n-test", "2"]


def _user_task_file(d, stack):
    (d / "tasks").mkdir()
    (d / "tasks/small").write_text("a user's file")
    return ["make-tasks", "--out", "tasks", "--tasks", "small", "--n-train", "2", "--n-val", "2", "--n-test", "2"]


def _out_is_checkpoint(command):
    def case(d, stack):
        extra = {"evaluate": ["--targets", "0"], "finetune": ["--dataset", "digits"]}[command]
        return [command, "--checkpoint", _model(d), *extra, "--out", "m.safetensors"]
    return case


def _out_links_to_checkpoint(d, stack):
    (d / "link.safetensors").symlink_to(_model(d))
    return ["finetune", "--checkpoint", "m.safetensors", "--dataset", "digits", "--out", "link.safetensors"]


def _record_is_chosen(d, stack):
    (d / "x.safetensors.json").write_text(json.dumps({"chosen": {"lr": 0.01}}))
    return ["finetune", "--backbone", TINY_BACKBONE, "--dataset", "digits", "--chosen", "x.safetensors.json",
            "--out", "x.safetensors"]


def _score_is_chosen(d, stack):
    (d / "x.safetensors.score.json").write_text(json.dumps({"chosen": {"lr": 0.01}}))
    return ["finetune", "--backbone", TINY_BACKBONE, "--dataset", "digits", "--chosen", "x.safetensors.score.json",
            "--score-split", "val", "--out", "x.safetensors"]


def _transfer_out_is_high(d, stack):
    return ["transfer", "--model-b", _model(d, "b.safetensors"), "--high-a", _model(d, "h.safetensors"),
            "--low-a", _model(d, "l.safetensors"), "--target-r", "2", "--out", "h.safetensors"]


def _select_out_is_candidate(d, stack):
    return ["select", "--candidates", _score(d, "a.json"), _score(d, "b.json"), "--out", "b.json"]


def _evaluate_out_is_plugin(d, stack):
    return ["evaluate", "--checkpoint", _model(d), "--targets", "0", "--plugin", f"mine={_model(d, 'p.safetensors')}",
            "--out", "p.safetensors"]


def _out_inside_data_root(d, stack):
    (d / "data").mkdir()
    (d / "data/train800.txt").write_text("images/0.png 0\n")
    return ["evaluate", "--checkpoint", _model(d), "--targets", "0", "--data-root", "data", "--out", "data/train800.txt"]


def _out_is_folder(d, stack):
    (d / "results").mkdir()
    return ["evaluate", "--checkpoint", _model(d), "--targets", "0", "--out", "results"]


def _out_below_a_file(d, stack):
    (d / "notes.txt").write_text("notes")
    return ["evaluate", "--checkpoint", _model(d), "--targets", "0", "--out", "notes.txt/eval.csv"]


def _out_read_only(d, stack):
    stack.enter_context(read_only_folder(d / "ro"))
    return ["evaluate", "--checkpoint", _model(d), "--targets", "0", "--out", "ro/eval/e.csv"]


def _disk_full(d, stack):
    stack.enter_context(tmpfs(d / "full", "size=64k"))
    return ["finetune", "--backbone", TINY_BACKBONE, "--dataset", "digits", "--limit", "8", "--epochs", "1",
            "--batch-size", "8", "--quiet", "--out", "full/ft.safetensors"]


def _vtab_finetune(bad_image: bytes, *extra: str):
    def case(d, stack):
        vtab_task(d / "vtab", bad_image)
        return ["finetune", "--backbone", TINY_BACKBONE, "--dataset", "vtab/patch_camelyon", "--data-root", "vtab",
                "--epochs", "1", "--batch-size", "4", "--quiet", *extra, "--out", "ft.safetensors"]
    return case


def _finetune(*flags: str):
    def case(d, stack):
        return ["finetune", "--backbone", TINY_BACKBONE, "--dataset", "digits", *flags, "--out", "ft.safetensors"]
    return case


def _select(**score):
    def case(d, stack):
        (d / "bad.json").write_text(json.dumps({"settings": {"lr": 0.2}, **score}))
        return ["select", "--candidates", _score(d, "good.json"), "bad.json", "--out", "chosen.json"]
    return case


def _chosen_list(d, stack):
    (d / "c.json").write_text(json.dumps({"chosen": [0.1, 0.01]}))
    return ["finetune", "--backbone", TINY_BACKBONE, "--dataset", "digits", "--chosen", "c.json", "--out", "ft.safetensors"]


def _no_gpu(d, stack):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    return ["finetune", "--backbone", TINY_BACKBONE, "--dataset", "digits", "--device", "cuda", "--out", "ft.safetensors"]


def _evaluate(*flags: str):
    def case(d, stack):
        return ["evaluate", "--checkpoint", _model(d), *flags, "--out", "e.csv"]
    return case


OVERWRITE = "the output would overwrite what it is made from"
slow = pytest.mark.slow      # imports torch (a few seconds), or trains a step until it fails
BAD_INPUT = [
    # a step replaces only what it wrote
    pytest.param(_user_task_folder, ["tasks/small exists and was not written by tocom make-tasks"], marks=slow,
                 id="make-tasks over a user's folder"),
    pytest.param(_user_task_file, ["tasks/small exists and was not written by tocom make-tasks"], marks=slow,
                 id="make-tasks over a user's file"),
    # no output is an input
    pytest.param(_out_is_checkpoint("evaluate"), ["--out m.safetensors is the input --checkpoint", OVERWRITE],
                 id="evaluate --out = --checkpoint"),
    pytest.param(_out_is_checkpoint("finetune"), ["--out m.safetensors is the input --checkpoint", OVERWRITE],
                 id="finetune --out = --checkpoint"),
    pytest.param(_out_links_to_checkpoint, ["--out link.safetensors is the input --checkpoint m.safetensors"],
                 id="finetune --out a symlink to --checkpoint"),
    pytest.param(_record_is_chosen, ["writes x.safetensors.json, which is the input --chosen"],
                 id="finetune's record = --chosen"),
    pytest.param(_score_is_chosen, ["writes x.safetensors.score.json, which is the input --chosen"],
                 id="finetune's score = --chosen"),
    pytest.param(_transfer_out_is_high, ["--out h.safetensors is the input --high-a"], id="transfer --out = --high-a"),
    pytest.param(_select_out_is_candidate, ["--out b.json is the input --candidates b.json"],
                 id="select --out = a candidate"),
    pytest.param(_evaluate_out_is_plugin, ["--out p.safetensors is the input --plugin p.safetensors"],
                 id="evaluate --out = a plugin"),
    pytest.param(_out_inside_data_root, ["lies inside the input --data-root data"], id="--out inside --data-root"),
    # every output can be written, checked before the work
    pytest.param(_out_is_folder, ["--out results is a folder; name the file"], id="--out is a folder"),
    pytest.param(_out_below_a_file, ["notes.txt is a file, so no folder can be made there"], id="--out below a file"),
    pytest.param(_out_read_only, ["is not writable"], id="--out in a read-only folder"),
    pytest.param(_disk_full, ["full/ft.safetensors", "No space left on device", "free some space"], marks=slow,
                 id="disk full"),
    # one line, not a traceback
    pytest.param(_finetune("--backbone", "resnet18"), ["resnet18 is a ResNet, not a Vision Transformer",
                                                        TINY_BACKBONE], marks=slow, id="--backbone resnet18"),
    pytest.param(_vtab_finetune(png_claiming(30000, 30000)), ["vtab/patch_camelyon/images/3.png",
                                                              "DecompressionBombError"], marks=slow,
                 id="PNG claiming 30000x30000 pixels"),
    pytest.param(_vtab_finetune(b"not an image", "--workers", "1"),
                 ["vtab/patch_camelyon/images/3.png", "cannot identify image file", "(in a data-loading worker)"],
                 marks=slow, id="corrupt image read by a worker"),
    pytest.param(_finetune("--seed", str(2**60)), ["run.seed must be <= 4294967295"], id="--seed 2**60"),
    pytest.param(_finetune("--seed", "1e23"), ["argument --seed: '1e23' is not a valid int"], id="--seed 1e23"),
    pytest.param(_select(top1="abc", split="val"), ["bad.json: its top1 'abc' is not what a search score holds"],
                 id="select: a score that is text"),
    pytest.param(_select(top1=50.0), ["bad.json is not a search score (needs 'top1', 'split'"],
                 id="select: a score without its split"),
    pytest.param(_chosen_list, ["c.json: its 'chosen' is a JSON list"], marks=slow, id="--chosen holding a list"),
    pytest.param(lambda d, stack: ["bench", "--threads", "-1"], ["measure.threads must be > 0"], id="bench --threads -1"),
    pytest.param(_no_gpu, ["--device cuda: no CUDA GPU is visible"], marks=slow, id="--device cuda without a GPU"),
    # settings that would double rows or make the schedule climb
    pytest.param(_evaluate("--targets", "2", "0", "2"), ["argument --targets: 2 given more than once"],
                 id="--targets 2 0 2"),
    pytest.param(_evaluate("--targets", "0", "--scales", "0.1", "0.1"), ["evaluate.scales lists 0.1 more than once"],
                 id="--scales 0.1 0.1"),
    pytest.param(_finetune("--lr", "0.01", "--min-lr", "0.1"), ["min_lr 0.1 is above the learning rate 0.01"],
                 id="--min-lr above --lr"),
]


@pytest.mark.parametrize("case, needles", BAD_INPUT)
def test_bad_input_is_one_line_and_leaves_everything_as_it_was(tmp_path, case, needles):
    from contextlib import ExitStack

    d = tmp_path / "work"
    d.mkdir()
    with ExitStack() as stack:
        argv = case(d, stack)
        before = tree(d)
        res = run_cli(argv, d)
        after = tree(d)
    lines = told(res.stderr)
    assert res.returncode == 2, res.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert lines[0].startswith(f"tocom {argv[0]}: error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert after == before, "the refused command changed its folder"


# ---- 7. no output is an input: every command, every input, every output it writes --------------------------
QUICK = ["--limit", "16", "--epochs", "1", "--batch-size", "8", "--quiet"]
FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> Path:
    """Real inputs, made by the commands themselves: a backbone, a fine-tuned model with its search score, a
    plugin, a search result, a VTAB-1k task folder and a Fashion-MNIST folder."""
    from tocom.cli import main

    d = tmp_path_factory.mktemp("artefacts")
    backbone, model = str(d / "backbone.safetensors"), str(d / "model.safetensors")
    assert main(["pretrain-backbone", "--backbone", TINY_BACKBONE, "--dataset", "digits", *QUICK, "--out", backbone]) == 0
    assert main(["finetune", "--checkpoint", backbone, "--dataset", "digits", "--score-split", "val", *QUICK,
                 "--out", model]) == 0
    assert main(["distill", "--checkpoint", backbone, "--dataset", "digits", "--r-max", "2", *QUICK,
                 "--out", str(d / "plugin.safetensors")]) == 0
    assert main(["select", "--candidates", model + ".score.json", "--out", str(d / "chosen.json")]) == 0
    vtab_task(d / "vtab", png_claiming(8, 8))
    (d / "fashion").mkdir()
    for f in FASHION_ROOT.glob("*ubyte*"):
        (d / "fashion" / f.name).symlink_to(f)
    return d


#: Each command that reads files: arguments that would run it, and which artefact each of its inputs is.
RUNS = {
    "pretrain-backbone": (["--backbone", TINY_BACKBONE, "--dataset", "vtab/patch_camelyon", *QUICK],
                          {"data_root": "vtab"}),
    "distill": (["--dataset", "vtab/patch_camelyon", "--r-max", "2", *QUICK],
                {"checkpoint": "backbone.safetensors", "data_root": "vtab", "teacher_outputs": "plugin.safetensors"}),
    "teacher-outputs": (["--dataset", "vtab/patch_camelyon", "--r-max", "2", *QUICK],
                        {"checkpoint": "backbone.safetensors", "data_root": "vtab"}),
    "finetune": (["--dataset", "vtab/patch_camelyon", "--score-split", "val", *QUICK],
                 {"checkpoint": "backbone.safetensors", "chosen": "chosen.json", "data_root": "vtab"}),
    "select": ([], {"candidates": "model.safetensors.score.json"}),
    "evaluate": (["--dataset", "digits", "--targets", "0", "2", "--limit", "8", "--quiet"],
                 {"checkpoint": "model.safetensors", "select_checkpoint": "model.safetensors",
                  "plugin": "plugin.safetensors", "data_root": "vtab"}),
    "transfer": (["--dataset", "digits", "--target-r", "2", "--limit", "8", "--quiet"],
                 {"model_b": "model.safetensors", "high_a": "model.safetensors", "low_a": "model.safetensors",
                  "data_root": "vtab"}),
    "segment-finetune": (["--dataset", "fashion_mnist_seg", "--crop-size", "56", "--epochs", "1", "--limit", "8",
                          "--batch-size", "4", "--quiet"], {"checkpoint": "backbone.safetensors", "data_root": "fashion"}),
    "segment-evaluate": (["--dataset", "fashion_mnist_seg", "--targets", "0", "--limit", "8", "--quiet"],
                         {"checkpoint": "model.safetensors", "plugin": "plugin.safetensors", "data_root": "fashion"}),
    "make-tasks": (["--tasks", "small", "--n-train", "2", "--n-val", "2", "--n-test", "2"], {"fashion_root": "fashion"}),
}


def _place(artefact: Path, where: Path) -> None:
    """A copy of `artefact` at `where` (a folder's files as symlinks, as the Fashion-MNIST folder has them)."""
    where.parent.mkdir(parents=True, exist_ok=True)
    if artefact.is_dir():
        shutil.copytree(artefact, where, symlinks=True)
    else:
        shutil.copyfile(artefact, where)


def _argv(command: str, inputs: dict[str, str], out: str) -> list[str]:
    flags, _ = RUNS[command]
    argv = [command, *flags, "--out", out]
    for dest, path in inputs.items():
        argv += ["--" + dest.replace("_", "-"), path]
    return argv


def test_every_command_that_reads_files_is_covered():
    from tocom.cli import COMMANDS

    reading = {name: fn.reads for name, (fn, _) in COMMANDS.items() if fn.reads}
    assert {name: set(reads) for name, reads in reading.items()} == \
        {name: set(inputs) for name, (_, inputs) in RUNS.items()}


@pytest.mark.slow
@pytest.mark.parametrize("command", list(RUNS))
def test_no_output_may_be_an_input(artefacts, tmp_path, capsys, command):
    """Each input placed where each output the command writes would go (--out itself, the record, resume state,
    lock or score beside it, a task folder), and --out as a symlink to each input: refused in one line before
    any work, every input byte-identical, nothing written."""
    from tocom.cli import build_parser, main

    _, inputs = RUNS[command]
    out = "out" if command == "make-tasks" else "out.safetensors"     # an input there keeps its file type
    args = build_parser().parse_args(_argv(command, {dest: "in" for dest in inputs}, out))
    fn, outputs = args.func, args.func.writes(args)
    cases = [(dest, output, False) for dest in inputs for output in outputs]
    cases += [(dest, out, True) for dest in inputs if not fn.writes_folder]
    assert len(cases) >= len(inputs)
    for k, (dest, output, link) in enumerate(cases):
        work = tmp_path / str(k)
        work.mkdir()
        placed = {name: str(work / f"in_{name}{Path(inputs[name]).suffix}") for name in inputs}
        if not link:
            placed[dest] = str(work / output)
        for name, path in placed.items():
            _place(artefacts / inputs[name], Path(path))
        if link:
            (work / out).symlink_to(placed[dest])
        before = tree(work)
        capsys.readouterr()
        code = main(_argv(command, placed, str(work / out)))
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and OVERWRITE in err[0], (dest, output, link, err)
        assert "--" + dest.replace("_", "-") in err[0], err
        assert tree(work) == before, (dest, output, link)


# ---- 8. temporaries, folders and full disks ---------------------------------------------------------------
KILLED_WRITE = textwrap.dedent("""
    import os, signal, sys
    from tocom.io import atomic_path
    with atomic_path(sys.argv[1]) as tmp:
        tmp.write_text("half a file")
        os.kill(os.getpid(), signal.SIGKILL)
""")


def test_the_next_write_removes_what_killed_writes_left_and_nothing_else(tmp_path):
    import fcntl

    import pandas as pd

    from tocom.io import write_csv

    out = tmp_path / "eval.csv"
    res = subprocess.run([PY, "-c", KILLED_WRITE, str(out)], env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == -9
    killed = [p for p in tmp_path.iterdir() if p.name.startswith(".eval.csv.")]
    assert len(killed) == 1 and killed[0].read_text() == "half a file"
    killed_folder = tmp_path / ".eval.csv.zzzz9999.tmp"          # what a killed folder write (make-tasks) leaves
    (killed_folder / "images").mkdir(parents=True)
    live = tmp_path / ".eval.csv.live0000.tmp"                    # another run writing it right now
    live.write_text("being written")
    held = os.open(live, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)
    elsewhere = tmp_path / "keep" / "target.txt"
    elsewhere.parent.mkdir()
    elsewhere.write_text("a user's file")
    (tmp_path / ".eval.csv.link1234.tmp").symlink_to(elsewhere)
    others = [".eval.csv.tmp", ".eval.csv.ABCD1234.tmp", ".other.csv.abcd1234.tmp", "eval.csv.abcd1234.tmp",
              ".eval.csv.abcd1234.tmp.bak", "notes.txt"]                 # not temporaries of eval.csv
    for name in others:
        (tmp_path / name).write_text("not ours")
    try:
        write_csv(pd.DataFrame({"a": [1]}), out)
    finally:
        os.close(held)
    assert not killed[0].exists() and not killed_folder.exists()
    assert live.read_text() == "being written"
    assert (tmp_path / ".eval.csv.link1234.tmp").is_symlink() and elsewhere.read_text() == "a user's file"
    assert all((tmp_path / name).read_text() == "not ours" for name in others)
    assert pd.read_csv(out)["a"].tolist() == [1]


def test_a_failed_write_removes_the_folders_it_made(tmp_path):
    from tocom.io import atomic_path

    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "kept/new/deeper/out.csv") as tmp:
            tmp.write_text("x")
            raise RuntimeError("the writer failed")
    assert [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")] == ["kept"]


def test_a_failed_first_resume_save_leaves_no_resume_folder(tmp_path, monkeypatch):
    from tocom.engine import common

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(common.torch, "save", full)
    out = tmp_path / "out.safetensors"
    with pytest.raises(OSError) as e:
        _train(out, {"data": "one"}, epochs=1)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(out.with_name(out.name + ".resume") / "state.pt")
    assert list(tmp_path.iterdir()) == []            # no .resume/, no lock, no temporary


def test_a_write_that_fails_on_a_full_disk_says_so_whatever_the_writer_raised(tmp_path, monkeypatch):
    import types

    from tocom import io

    def failing_write(path):
        with io.atomic_path(path) as tmp:
            tmp.write_bytes(b"part")
            raise RuntimeError("[enforce fail at inline_container.cc:671] . unexpected pos 576 vs 534")

    with pytest.raises(RuntimeError, match="unexpected pos"):        # room left: the writer's own error
        failing_write(tmp_path / "a.pt")
    real = os.statvfs
    monkeypatch.setattr(io.os, "statvfs", lambda p: types.SimpleNamespace(**{**{k: getattr(real(p), k) for k in (
        "f_frsize", "f_blocks")}, "f_bavail": 0}))
    with pytest.raises(OSError) as e:
        failing_write(tmp_path / "a.pt")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "a.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_file_system_error_is_one_line_from_the_command_line(tmp_path, monkeypatch, capsys):
    from tocom import cli, search

    def full(obj, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(search, "write_json", full)
    _score(tmp_path, "a.json")
    assert cli.main(["select", "--candidates", str(tmp_path / "a.json"), "--out", str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["tocom select: error: [Errno 28] No space left on device; free some space or write elsewhere, "
                   "then rerun"]


# ---- 9. configs: every list the grid expands holds each value once, names are one folder, grids are bounded ----
SCHEMA = REPO / "workflow/schemas/config.schema.yaml"


def smoke(**changes) -> dict:
    import yaml

    return {**yaml.safe_load((REPO / "config/smoke.yaml").read_text()), **changes}


def first_set(config: dict) -> dict:
    return config["studies"][0]["sets"][0]


def start(config: dict) -> None:
    """What workflow/rules/common.smk does with a config before any job."""
    from tocom.experiments import Grid, validate_config

    validate_config(config, SCHEMA)
    Grid(config)


CONFIGS = {
    "seeds [0, 0]": (lambda c: c.update(seeds=[0, 0]), "seeds: 0 listed more than once"),
    "targets twice": (lambda c: first_set(c).update(targets=[0, 2, 2]), "targets: 2 listed more than once"),
    "sources twice": (lambda c: first_set(c).update(sources=[0, 0]), "sources: 0 listed more than once"),
    "datasets twice": (lambda c: first_set(c).update(datasets=["synth/count", "synth/count"]),
                       "datasets: 'synth/count' listed more than once"),
    "variants twice": (lambda c: first_set(c).update(variants=["tocom", "tocom"]), "'tocom' listed more than once"),
    "transfer B twice": (lambda c: c["transfer"][0].update(b=["synth/texture"] * 2), "transfer/0/b: 'synth/texture'"),
    "a transfer asked for twice": (lambda c: c.update(transfer=c["transfer"] * 2), "is asked for twice"),
    "a bench asked for twice": (lambda c: c.update(bench=c["bench"] * 2), "is asked for twice"),
    "bench degrees twice": (lambda c: c["bench"][0].update(r=[0, 2, 2]), "bench/0/r: 2 listed more than once"),
    "scales twice": (lambda c: c["evaluate"].update(scales=[0.1, 0.1]), "evaluate/scales: 0.1 listed more than once"),
    "searched lr twice": (lambda c: c["recipes"]["vtab_refit"]["search"].update(lr=[1e-3, 1e-3]),
                          "search/lr: 0.001 listed more than once"),
    "a report group twice": (lambda c: c["report"]["vtab_groups"].update(natural=["synth/count"] * 2),
                             "natural: 'synth/count' listed more than once"),
    "name ..": (lambda c: c.update(name=".."), "name: '..' does not match"),
    "name .": (lambda c: c.update(name="."), "one folder name"),
    "name with a slash": (lambda c: c.update(name="a/b"), "one folder name"),
    "seed beyond 32 bits": (lambda c: c.update(seeds=[2**40]), "greater than the maximum of 4294967295"),
    "min_lr above a recipe's lr": (lambda c: c["recipes"]["vtab"].update(min_lr=0.5),
                                   "finetune.min_lr 0.5 is above the learning rate"),
    "min_lr above distill's scaled lr": (lambda c: c["distill"].update(lr=1e-3, batch_size=64, min_lr=5e-4),
                                         "min_lr 0.0005 is above the learning rate 0.001 (lr x batch_size / 512 = "
                                         "0.000125)"),
    "10^6 seeds": (lambda c: c.update(seeds=list(range(10**6))), "jobs, more than the ceiling of 20,000"),
    "10^6 targets": (lambda c: first_set(c).update(targets=list(range(10**6))),
                     "evaluation rows, more than the ceiling of 1,000,000"),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_bad_config_is_one_line_before_any_job(case):
    change, needle = CONFIGS[case]
    config = smoke()
    start(copy.deepcopy(config))
    change(config)
    with pytest.raises(TocomError) as e:
        start(config)
    one_line(e, needle)


def test_a_huge_grid_is_refused_from_its_lengths_with_the_number_it_would_have_been(monkeypatch):
    from tocom import experiments

    config = smoke(seeds=list(range(10**6)))
    size = experiments.grid_size(config)
    monkeypatch.setattr(experiments, "config_schema", lambda path: pytest.fail("the schema visited the items"))
    with pytest.raises(TocomError) as e:
        experiments.validate_config(config, SCHEMA)
    one_line(e, f"up to {size['jobs']:,} jobs")
    assert size["jobs"] > 10**6


@pytest.mark.parametrize("name", ["cpu", "smoke", "paper"])
def test_grid_size_bounds_the_grid_and_leaves_the_paper_far_inside(name):
    import yaml

    from tocom.experiments import MAX_JOBS, MAX_ROWS, Grid, grid_size

    config = yaml.safe_load((REPO / f"config/{name}.yaml").read_text())
    grid, size = Grid(config, check_files=False), grid_size(config)
    jobs = (len(grid.pretrained_backbones()) + len(grid.generated_datasets()) + len(grid.plugins) + len(grid.finetunes)
            + len(grid.searches) + len({s.chosen_path for s in grid.searches.values()}) + len(grid.evals)
            + len(grid.transfers) + len(grid.benches) + 2 * len(grid.segments))
    splits, scales = len(grid.eval_settings.splits), len(grid.eval_settings.scales)
    plain = sum(len(ev.targets) * splits for ev in grid.evals.values())
    tuned = sum(len(ev.variants) * len(ev.targets - {ev.finetune.source}) * (scales + splits - 1)
                for ev in grid.evals.values())
    assert jobs <= size["jobs"] and plain + tuned <= size["rows"]
    assert 5 * size["jobs"] <= MAX_JOBS and 5 * size["rows"] <= MAX_ROWS
