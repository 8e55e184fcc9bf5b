#!/usr/bin/env python3
"""Writes test/fixtures/torch_random.json: torch's own CPU random draws, the reference that
test/torch-random.test.ts checks src/util/torch_random.ts (TorchGenerator) against.

Needs torch (Debian: `apt-get install python3-torch`, 1.13.1; run it with /usr/bin/python3) on
an x86 CPU with AVX2, the kernel torch.randn uses there (the file records torch's CPU capability
line; on other CPUs torch itself gives different last bits for n >= 16). The tests never need
torch: they read the JSON.

    /usr/bin/python3 scripts/torch_rng_reference.py            # writes test/fixtures/torch_random.json

Each case is one torch.Generator('cpu').manual_seed(seed) followed by calls in order
(torch.randn(n) or torch.rand(n), float32, on that generator). Values are stored as the uint32 bit
patterns of the float32 results (exact); calls with more than 64 values store the first and last
16 and the SHA-256 of all the little-endian float32 bytes.
"""
import hashlib
import json
import os
import sys

import numpy as np
import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'test', 'fixtures', 'torch_random.json')
FULL_LIMIT = 64

# (name, seed, [(op, n), ...]); seeds are written as decimal strings (they may exceed 2^53).
CASES = [
    # Every size of the scalar path (n < 16), the smallest vectorised ones and tails of every kind.
    *[(f'size{n}', 0, [('randn', n)]) for n in list(range(1, 18)) + [23, 31, 32, 33, 47, 48, 100]],
    # The scalar path's cached second normal carries over between calls and across vectorised
    # calls (which neither use nor clear it); torch.rand in between consumes the same stream.
    ('stream_mixed', 42, [('randn', 3), ('randn', 1), ('randn', 20), ('randn', 1), ('randn', 16),
                          ('randn', 5), ('rand', 4), ('randn', 2), ('randn', 0), ('randn', 17), ('randn', 1)]),
    # Consecutive SD-latent-sized calls cross many MT19937 twists (624 words each).
    ('stream_latents', 3000, [('randn', 4 * 16 * 16), ('randn', 4 * 16 * 16), ('randn', 1000), ('randn', 9)]),
    # Real SD shapes: 512x512 latents, a batch of two, 768x512, and one whose numel % 16 == 12.
    ('sd_512', 1234, [('randn', 1 * 4 * 64 * 64)]),
    ('sd_512_batch2', 1234, [('randn', 2 * 4 * 64 * 64)]),
    ('sd_768x512', 7, [('randn', 4 * 96 * 64)]),
    ('odd_tail', 99, [('randn', 4 * 63 * 65)]),
    # Seeds: only the low 32 bits seed MT19937 (5 and 2^32 + 5 give the same draws).
    ('seed_2p32m1', 2**32 - 1, [('randn', 20), ('randn', 3)]),
    ('seed_5', 5, [('randn', 20), ('randn', 3)]),
    ('seed_2p32p5', 2**32 + 5, [('randn', 20), ('randn', 3)]),
    ('seed_2p53p1', 2**53 + 1, [('randn', 17)]),
    ('seed_2p64m1', 2**64 - 1, [('randn', 17), ('randn', 2)]),
    # torch.rand: 24 random bits per value.
    ('rand', 123, [('rand', 5), ('rand', 17), ('randn', 16), ('rand', 3)]),
    # Long streams: 4 seeds x 262144 values (hash only), the bulk evidence for the float32 kernel.
    *[(f'bulk{s}', s, [('randn', 1 << 18)]) for s in range(4)],
]


def bits(t):
    return np.ascontiguousarray(t.numpy().astype('<f4')).view('<u4')


def record(op, n, t):
    b = bits(t)
    call = {'op': op, 'n': n}
    if n <= FULL_LIMIT:
        call['bits'] = [int(x) for x in b]
    else:
        call['head'] = [int(x) for x in b[:16]]
        call['tail'] = [int(x) for x in b[-16:]]
        call['sha256'] = hashlib.sha256(b.tobytes()).hexdigest()
    return call


def main():
    capability = torch.__config__.show().split('CPU capability usage:')[1].split('\n')[0].strip()
    if capability not in ('AVX2', 'AVX512'):
        sys.exit(f'torch_rng_reference.py: torch uses the {capability} kernel here; the reference needs AVX2 or AVX512')
    cases = []
    for name, seed, calls in CASES:
        g = torch.Generator('cpu').manual_seed(seed)
        out = []
        for op, n in calls:
            t = (torch.randn if op == 'randn' else torch.rand)(n, generator=g, dtype=torch.float32)
            out.append(record(op, n, t))
        cases.append({'name': name, 'seed': str(seed), 'calls': out})
    doc = {
        'about': 'torch CPU generator draws: torch.Generator("cpu").manual_seed(seed), then torch.randn/torch.rand(n) '
                 'calls in order (float32); bits = uint32 patterns of the float32 values; sha256 over little-endian float32 bytes',
        'generated_by': 'scripts/torch_rng_reference.py',
        'torch': torch.__version__,
        'cpu_capability': capability,
        'cases': cases,
    }
    tmp = OUT + '.tmp'
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(tmp, 'w') as f:
        json.dump(doc, f, separators=(',', ':'))
        f.write('\n')
    os.replace(tmp, OUT)
    print(f'wrote {OUT}: {len(cases)} cases')


if __name__ == '__main__':
    main()
