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
