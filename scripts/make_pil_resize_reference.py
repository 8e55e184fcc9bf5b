"""Reference for src/sample/image_processor.ts pilResizeLanczos: what PIL's Image.resize(LANCZOS)
makes of a few 8-bit images (diffusers' VaeImageProcessor resizes init images and masks this way).

    python3 scripts/make_pil_resize_reference.py   # writes test/data/pil_lanczos.json (needs Pillow)

The inputs are generated here from a fixed formula (no randomness), so the JSON holds them too.
"""
import json
import PIL
from PIL import Image


def pattern(w, h, c, k):
    # Sharp edges and ramps: every tap of the kernel matters, and values clip at 0 and 255.
    vals = []
    for y in range(h):
        for x in range(w):
            for ch in range(c):
                v = ((x * 37 + y * 91 + ch * 53 + k * 17) % 256) if (x // 3 + y // 2 + ch) % 3 else (255 if (x + y) % 2 else 0)
                vals.append(v)
    return vals


cases = []
for (w, h, c, k, sizes) in [
    (13, 9, 3, 0, [(8, 8), (24, 16), (5, 7), (13, 4), (40, 9)]),
    (32, 32, 3, 1, [(16, 16), (24, 40), (8, 8)]),
    (17, 11, 1, 2, [(16, 8), (8, 16), (33, 22)]),
]:
    data = pattern(w, h, c, k)
    mode = 'RGB' if c == 3 else 'L'
    img = Image.frombytes(mode, (w, h), bytes(data))
    for (W, H) in sizes:
        out = img.resize((W, H), resample=Image.LANCZOS)
        cases.append({'width': w, 'height': h, 'channels': c, 'input': data, 'out_width': W, 'out_height': H, 'output': list(out.tobytes())})

with open('test/data/pil_lanczos.json', 'w') as f:
    json.dump({'pillow': PIL.__version__, 'cases': cases}, f)
print(len(cases), 'cases, Pillow', PIL.__version__)
