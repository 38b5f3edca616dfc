"""sha256 (first 12 hex) of every tensor in safetensors files, in name order: equal iff every weight is
bit-identical (metadata such as the recorded command line is left out). Usage: python hash_tensors.py FILE..."""
import hashlib, sys
from safetensors import safe_open

for path in sys.argv[1:]:
    h = hashlib.sha256()
    with safe_open(path, "pt") as f:
        for k in sorted(f.keys()):
            t = f.get_tensor(k).contiguous()
            h.update(k.encode()); h.update(str(t.dtype).encode()); h.update(t.numpy().tobytes())
    print(h.hexdigest()[:12], path)
