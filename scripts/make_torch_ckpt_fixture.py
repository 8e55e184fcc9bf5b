#!/usr/bin/env python3
"""Writes test/fixtures/ckpt/: small checkpoints made by the real torch.save, and the values they
hold, so sdlab's .ckpt reader is tested against torch's own output (not only against
make_ckpt_fixture.py's stand-ins). Needs Debian's python3-torch (`apt-get install python3-torch`,
1.13.1 when these were made); the tests only read the files it wrote, so CI needs no torch.

  /usr/bin/python3 scripts/make_torch_ckpt_fixture.py test/fixtures/ckpt

  torch_1.13.ckpt       {"state_dict": <nn.Module state dict + extra views>, "global_step": 42}
  torch_1.13_plain.bin  the same state dict, not nested (as HF pytorch_model.bin files are)
  torch_1.13.json       per tensor: dtype (safetensors' names), shape, C-order values from torch
"""
import json
import os
import sys

import torch

out = sys.argv[1] if len(sys.argv) > 1 else 'test/fixtures/ckpt'
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)

model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
model[1].running_mean.uniform_()
sd = model.state_dict()  # an OrderedDict with _metadata, int64 num_batches_tracked
big = torch.arange(30, dtype=torch.float32).reshape(5, 6)
sd['views.transposed'] = torch.randn(3, 4).t()  # strides (1, 4)
sd['views.slice'] = big[1:3, 2:5]  # storage offset 8, strides (6, 1), shares big's storage
sd['views.big'] = big
sd['views.expanded'] = torch.arange(4, dtype=torch.float32).expand(3, 4)  # stride 0
sd['views.position_ids'] = torch.arange(5).expand((1, -1))  # CLIP's int64 buffer
sd['dtypes.half'] = torch.randn(2, 3).half()
sd['dtypes.bfloat16'] = torch.randn(4).bfloat16()
sd['dtypes.double'] = torch.randn(2).double()
sd['dtypes.int32'] = torch.tensor([-7, 0, 2**31 - 1], dtype=torch.int32)
sd['dtypes.bool'] = torch.tensor([True, False, True])
sd['dtypes.uint8'] = torch.tensor([0, 255, 7], dtype=torch.uint8)
sd['shapes.scalar'] = torch.tensor(3.5)
sd['shapes.empty'] = torch.zeros(0, 3)
sd['shapes.conv'] = torch.randn(2, 3, 1, 1).half()
sd['param'] = torch.nn.Parameter(torch.randn(2, 2))

NAMES = {torch.float32: 'F32', torch.float16: 'F16', torch.bfloat16: 'BF16', torch.float64: 'F64', torch.int64: 'I64',
         torch.int32: 'I32', torch.bool: 'BOOL', torch.uint8: 'U8'}
expected = {k: {'dtype': NAMES[v.dtype], 'shape': list(v.shape), 'values': v.detach().double().flatten().tolist()} for k, v in sd.items()}
torch.save({'state_dict': sd, 'global_step': 42}, os.path.join(out, 'torch_1.13.ckpt'))
torch.save(sd, os.path.join(out, 'torch_1.13_plain.bin'))
with open(os.path.join(out, 'torch_1.13.json'), 'w') as f:
    json.dump({'torch': torch.__version__, 'tensors': expected}, f, indent=1)
