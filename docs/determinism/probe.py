import torch
print("aten capability:", torch.backends.cpu.get_cpu_capability())
a = torch.randn(64, 96); b = torch.randn(96, 288)
c = a @ b
x = torch.randn(2, 1, 56, 56); w = torch.randn(96, 1, 8, 8)
y = torch.nn.functional.conv2d(x, w, stride=8)
print("mkldnn enabled:", torch.backends.mkldnn.is_available(), torch.backends.mkldnn.enabled)
