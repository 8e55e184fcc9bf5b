#!/usr/bin/env python3
"""Writes PyTorch-format checkpoints (.ckpt) for sdlab's tests with Python's standard library only
(pickle + zipfile + struct), so tests and CI need no torch.

The files are laid out as torch.save (>= 1.6) lays them out: a zip of stored entries
<name>/data.pkl (pickle protocol 2), <name>/data/<key> (raw little-endian storages, 64-byte
aligned as torch aligns them) and <name>/version. The pickle is made by the real pickle module
from stand-in classes whose __module__/__qualname__ are torch's (torch.FloatStorage,
torch._utils._rebuild_tensor_v2, ...), so its opcodes are the ones torch writes (checked against a
real torch.save file: test/fixtures/ckpt/torch_1.13.ckpt).

  make_ckpt_fixture.py ldm IN.safetensors OUT.ckpt [--views] [--zip64] [--plain] [--protocol4]
      the tensors of a safetensors file as a checkpoint {"state_dict": {...}, "global_step": 7};
      --views stores every 2-D weight transposed in its storage (read back through strides) and
      puts a few tensors into one shared storage at offsets; --zip64 writes zip64 records.
  make_ckpt_fixture.py hostile KIND OUT.ckpt MARKER
      a checkpoint whose pickle would create the file MARKER if a normal unpickler loaded it
      (KIND: os_system, builtins_eval, builtins_eval_p4, subprocess_popen, getattr), hidden
      in an otherwise valid state dict.
  make_ckpt_fixture.py broken KIND OUT.ckpt
      structurally bad files (KIND: storage_short, entry_short, absurd_size, deflate, bad_dtype_mix).
  make_ckpt_fixture.py raw PICKLE OUT.ckpt
      a checkpoint whose data.pkl is exactly the bytes of the file PICKLE (hand-written pickles).
  make_ckpt_fixture.py unsafe-load FILE.ckpt
      loads FILE's pickle with Python's own (unrestricted) unpickler, as torch.load(weights_only=
      False) would: the tests use it to prove that their payloads are live.
"""
import collections
import json
import os
import pickle
import struct
import subprocess
import sys
import types
import zipfile

# --- stand-ins with torch's names ------------------------------------------------------------
torch = types.ModuleType('torch')
torch_utils = types.ModuleType('torch._utils')
torch._utils = torch_utils
sys.modules['torch'] = torch
sys.modules['torch._utils'] = torch_utils


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, metadata=None):
    return ('tensor', size)  # only unsafe-load calls it


def _rebuild_parameter(data, requires_grad, hooks):
    return data


for fn in (_rebuild_tensor_v2, _rebuild_parameter):
    fn.__module__ = 'torch._utils'
    setattr(torch_utils, fn.__name__, fn)

STORAGE = {}
for name, fmt, size in [('FloatStorage', 'f', 4), ('HalfStorage', 'e', 2), ('BFloat16Storage', None, 2), ('DoubleStorage', 'd', 8),
                        ('LongStorage', 'q', 8), ('IntStorage', 'i', 4), ('ByteStorage', 'B', 1), ('BoolStorage', '?', 1)]:
    cls = type(name, (), {'__module__': 'torch'})
    setattr(torch, name, cls)
    STORAGE[name] = (cls, size)

SAFETENSORS_STORAGE = {'F32': 'FloatStorage', 'F16': 'HalfStorage', 'BF16': 'BFloat16Storage', 'F64': 'DoubleStorage', 'I64': 'LongStorage',
                       'I32': 'IntStorage', 'U8': 'ByteStorage', 'BOOL': 'BoolStorage'}


class Storage:
    def __init__(self, kind, key, data):
        self.kind, self.key, self.data = kind, key, data
        self.numel = len(data) // STORAGE[kind][1]


class Tensor:
    def __init__(self, storage, offset, size, stride, parameter=False):
        self.storage, self.offset, self.size, self.stride, self.parameter = storage, offset, tuple(size), tuple(stride), parameter

    def __reduce_ex__(self, proto):
        args = (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict())
        if self.parameter:
            return (_rebuild_parameter, (Tensor(self.storage, self.offset, self.size, self.stride), False, collections.OrderedDict()))
        return (_rebuild_tensor_v2, args)


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ('storage', STORAGE[obj.kind][0], obj.key, 'cpu', obj.numel)
        return None


def contiguous_stride(size):
    stride, acc = [], 1
    for d in reversed(size):
        stride.insert(0, acc)
        acc *= d
    return stride


# --- writing ---------------------------------------------------------------------------------
def write_ckpt(path, obj, storages, protocol=2, zip64=False, compression=zipfile.ZIP_STORED, raw_pickle=None, name='archive'):
    import io
    buf = io.BytesIO()
    if raw_pickle is None:
        Pickler(buf, protocol=protocol).dump(obj)
        raw_pickle = buf.getvalue()
    if zip64:
        zipfile.ZIP64_LIMIT = 0  # every size "needs" zip64: the records torch >= 1.6 always writes
    with zipfile.ZipFile(path, 'w', compression) as z:
        def put(entry, data):
            info = zipfile.ZipInfo(entry, date_time=(2023, 1, 1, 0, 0, 0))
            info.compress_type = compression
            # torch pads the local header's extra field so that data starts 64-byte aligned.
            offset = z.fp.tell() + 30 + len(entry.encode())
            pad = (-(offset + 4)) % 64
            info.extra = struct.pack('<HH', 0x4246, pad) + b'Z' * pad
            z.writestr(info, data)
        put(f'{name}/data.pkl', raw_pickle)
        for s in storages:
            put(f'{name}/data/{s.key}', s.data)
        put(f'{name}/version', b'3\n')


def read_safetensors(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        body = f.read()
    header.pop('__metadata__', None)
    return [(k, v['dtype'], v['shape'], body[v['data_offsets'][0]:v['data_offsets'][1]]) for k, v in header.items()]


def transpose_bytes(data, rows, cols, size):
    """Row-major [rows, cols] → row-major [cols, rows] (the same values stored transposed)."""
    out = bytearray(len(data))
    for r in range(rows):
        for c in range(cols):
            src = (r * cols + c) * size
            dst = (c * rows + r) * size
            out[dst:dst + size] = data[src:src + size]
    return bytes(out)


def ldm(src, out, views=False, zip64=False, plain=False, protocol=2):
    state = collections.OrderedDict()
    storages = []
    shared = []  # (name, kind, shape, data) of small 1-D tensors packed into one storage
    for i, (name, dtype, shape, data) in enumerate(read_safetensors(src)):
        kind = SAFETENSORS_STORAGE[dtype]
        size = STORAGE[kind][1]
        if views and len(shape) == 2 and shape[0] > 1 and shape[1] > 1:
            # Stored transposed; the tensor is the transpose's transpose: strides (1, rows).
            s = Storage(kind, str(len(storages)), transpose_bytes(data, shape[0], shape[1], size))
            storages.append(s)
            state[name] = Tensor(s, 0, shape, [1, shape[0]], parameter=(i % 2 == 0))
        elif views and len(shape) == 1 and kind == 'HalfStorage' and len(shared) < 8:
            shared.append((name, shape, data))
        else:
            s = Storage(kind, str(len(storages)), data)
            storages.append(s)
            state[name] = Tensor(s, 0, shape, contiguous_stride(shape))
    if shared:
        s = Storage('HalfStorage', str(len(storages)), b''.join(d for _, _, d in shared))
        storages.append(s)
        offset = 0
        for name, shape, data in shared:
            state[name] = Tensor(s, offset, shape, [1])
            offset += len(data) // 2
    obj = state if plain else {'state_dict': state, 'global_step': 7, 'epoch': 1}
    write_ckpt(out, obj, storages, protocol=protocol, zip64=zip64)


def small_state():
    """A valid two-tensor state dict for the hostile files to hide their payload in."""
    s = Storage('FloatStorage', '0', struct.pack('<6f', 1, 2, 3, 4, 5, 6))
    return collections.OrderedDict([('a.weight', Tensor(s, 0, [2, 3], [3, 1]))]), [s]


class Payload:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)

    def __call__(self):  # pickle wants REDUCE's function to look callable
        pass


def hostile(kind, out, marker):
    state, storages = small_state()
    protocol = 2
    if kind == 'os_system':
        state['evil'] = Payload(os.system, (f'touch {marker}',))
    elif kind in ('builtins_eval', 'builtins_eval_p4'):
        state['evil'] = Payload(eval, (f'open({marker!r}, "w").close()',))
        protocol = 4 if kind.endswith('p4') else 2
    elif kind == 'subprocess_popen':
        state['evil'] = Payload(subprocess.Popen, (['touch', marker],))
        protocol = 3  # protocol 2 writes Python 2's name for it (commands.Popen)
    elif kind == 'getattr':
        # getattr(__import__('os'), 'system')('touch MARKER')
        state['evil'] = Payload(Payload(getattr, (Payload(__import__, ('os',)), 'system')), (f'touch {marker}',))
    else:
        sys.exit(f'unknown hostile kind {kind}')
    write_ckpt(out, {'state_dict': state}, storages, protocol=protocol)


def broken(kind, out):
    if kind == 'storage_short':  # a [4, 4] tensor on a 6-element storage
        s = Storage('FloatStorage', '0', struct.pack('<6f', *range(6)))
        write_ckpt(out, {'state_dict': {'w': Tensor(s, 0, [4, 4], [4, 1])}}, [s])
    elif kind == 'entry_short':  # the storage claims 100 floats, its entry holds 6
        s = Storage('FloatStorage', '0', struct.pack('<6f', *range(6)))
        s.numel = 100
        write_ckpt(out, {'state_dict': {'w': Tensor(s, 0, [6], [1])}}, [s])
    elif kind == 'absurd_size':
        s = Storage('FloatStorage', '0', struct.pack('<6f', *range(6)))
        write_ckpt(out, {'state_dict': {'w': Tensor(s, 0, [2 ** 40, 2 ** 40], [2 ** 40, 1])}}, [s])
    elif kind == 'deflate':
        state, storages = small_state()
        write_ckpt(out, {'state_dict': state}, storages, compression=zipfile.ZIP_DEFLATED)
    elif kind == 'bad_dtype_mix':  # one storage key referenced as two types
        s = Storage('FloatStorage', '0', struct.pack('<6f', *range(6)))
        h = Storage('HalfStorage', '0', s.data)
        write_ckpt(out, {'a': Tensor(s, 0, [6], [1]), 'b': Tensor(h, 0, [12], [1])}, [s])
    else:
        sys.exit(f'unknown broken kind {kind}')


def unsafe_load(path):
    """What torch.load(weights_only=False) does with the pickle: runs whatever it names."""
    with zipfile.ZipFile(path) as z:
        pkl = [n for n in z.namelist() if n.endswith('/data.pkl')][0]
        up = pickle.Unpickler(z.open(pkl))
        up.persistent_load = lambda pid: pid
        up.load()


if __name__ == '__main__':
    a = sys.argv[1:]
    if a[:1] == ['ldm']:
        flags = set(x for x in a[3:] if x.startswith('--'))
        proto = 4 if '--protocol4' in flags else 2
        ldm(a[1], a[2], views='--views' in flags, zip64='--zip64' in flags, plain='--plain' in flags, protocol=proto)
    elif a[:1] == ['hostile']:
        hostile(a[1], a[2], a[3])
    elif a[:1] == ['broken']:
        broken(a[1], a[2])
    elif a[:1] == ['raw']:
        state, storages = small_state()
        with open(a[1], 'rb') as f:
            write_ckpt(a[2], None, storages, raw_pickle=f.read())
    elif a[:1] == ['unsafe-load']:
        unsafe_load(a[1])
    else:
        sys.exit(__doc__)
