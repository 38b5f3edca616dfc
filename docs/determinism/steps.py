"""A few float32 training steps of the tiny ViT with ToMe (r=2): hashes of the first logits, first
gradients and final weights. Usage: python steps.py TAG [STEPS [BATCH]] (defaults 20, 64). Writes out/steps_TAG.safetensors."""
import gzip, hashlib, sys, time
import numpy as np
import torch, timm
import tocom
from safetensors.torch import save_file

tag = sys.argv[1]; steps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
B = int(sys.argv[3]) if len(sys.argv) > 3 else 64   # batch size
torch.manual_seed(0)
with gzip.open("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz") as f:
    raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[:B * steps]
with gzip.open("/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz") as f:
    labels = torch.from_numpy(np.frombuffer(f.read(), np.uint8, offset=8)[:B * steps].astype(np.int64))
x = torch.from_numpy(raw.copy()).float().div(255).sub(0.5).div(0.5)
x = torch.nn.functional.interpolate(x, size=56, mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)

model = timm.create_model("tocom_vit_tiny_patch8_56", num_classes=10, drop_path_rate=0.0)
tocom.patch(model, "tome"); tocom.set_r(model, 2)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
h = lambda ts: hashlib.sha256(b"".join(t.detach().contiguous().numpy().tobytes() for t in ts)).hexdigest()[:12]
out = {}
t0 = time.perf_counter()
for i in range(steps):
    xb, yb = x[B * i:B * (i + 1)], labels[B * i:B * (i + 1)]
    logits = model(xb)
    loss = torch.nn.functional.cross_entropy(logits, yb, label_smoothing=0.1)
    opt.zero_grad(set_to_none=True); loss.backward()
    if i == 0:
        out["logits0"] = h([logits]); out["grads0"] = h([p.grad for p in model.parameters()])
    opt.step()
dt = time.perf_counter() - t0
sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
out["weights"] = h(sd.values()); out["loss_last"] = f"{loss.item():.9g}"
save_file(sd, f"/tmp/determinism/out/steps_{tag}.safetensors")
print(tag, torch.backends.cpu.get_cpu_capability(), torch.get_num_threads(),
      " ".join(f"{k}={v}" for k, v in out.items()), f"time={dt:.2f}s", flush=True)
