"""Host input-pipeline throughput per CPU core: 224-px JPEG decode + crop (+ flip) through grain.

    python benchmarks/input_pipeline.py --images 64 --repeats 3

Writes --images JPEGs of ImageNet-like size (500x375, quality 90, smooth content plus noise, about
the size of an average ImageNet file) into a temp dir, then reads them through a grain MapDataset
(single thread, so the rate is per core) with these per-example maps:
  jkd          jkd.data.tfds._preprocess on the encoded bytes: decode + shorter side to 224 + centre
               crop + normalise. This is what jkd's TFDS pipeline does on the host; the random-resized
               crop and flip run later on the device inside the train step (jkd.data.augment).
  decode       PIL decode to uint8 only (the floor of any JPEG pipeline).
  rrc_flip     decode + Inception random-resized crop (area 0.08-1, ratio 3/4-4/3) to 224 + flip +
               normalise on the host (the torchvision/timm way), PIL bilinear.
  rrc_flip_draft  the same, but PIL's JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale when the crop
               is that much larger than 224 (libjpeg DCT scaling; slightly softer pixels).
Reports images/s per core from CPU time (time.process_time: robust on a shared machine) and from
wall time, and how many such cores feed --target-img-per-s images/s (a GPU's training rate).
"""
import argparse
import io
import json
import math
import os
import tempfile
import time

import grain
import numpy as np
from PIL import Image

from jkd.data.tfds import _preprocess

MEAN, STD = np.float32(0.5), np.float32(0.5)


def make_jpegs(folder: str, n: int, width: int = 500, height: int = 375, seed: int = 0) -> list[str]:
    """n JPEG files [height, width, 3] of smooth random colour fields plus noise (ImageNet-like size)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = []
    for i in range(n):
        img = np.zeros((height, width, 3), np.float32)
        for c in range(3):
            for _ in range(4):  # a few random low-frequency waves per channel
                fy, fx, ph = rng.uniform(0, 0.05, 2).tolist() + [rng.uniform(0, 6.3)]
                img[..., c] += np.sin(fy * yy + fx * xx + ph)
        img = 127 + 30 * img + rng.normal(0, 12, img.shape)
        path = os.path.join(folder, f"{i:05d}.jpg")
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def _rrc_box(rng, w, h, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop box (x0, y0, cw, ch): 10 tries, then the centre crop fallback."""
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1), cw, ch
    side = min(w, h)
    return (w - side) // 2, (h - side) // 2, side, side


def rrc_flip(data: bytes, rng, size: int = 224, draft: bool = False) -> np.ndarray:
    """Decode + random-resized crop to [size, size, 3] + random flip + normalise (host side)."""
    img = Image.open(io.BytesIO(data))
    w, h = img.size
    x0, y0, cw, ch = _rrc_box(rng, w, h)
    if draft:  # decode at the largest 1/2^k scale that keeps the crop >= size pixels
        k = 1
        while k < 8 and min(cw, ch) // (2 * k) >= size:
            k *= 2
        if k > 1:
            img.draft("RGB", (w // k, h // k))
            s = img.size[0] / w
            x0, y0, cw, ch = x0 * s, y0 * s, cw * s, ch * s
    img = img.convert("RGB").resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return (np.asarray(img, np.float32) / 255.0 - MEAN) / STD


def pipelines(size: int) -> dict:
    """name -> function(bytes, rng) -> array: the per-example maps compared."""
    return {
        "jkd": lambda b, rng: _preprocess(b, size, 3, np.full(3, MEAN), np.full(3, STD)),
        "decode": lambda b, rng: np.asarray(Image.open(io.BytesIO(b)).convert("RGB")),
        "rrc_flip": lambda b, rng: rrc_flip(b, rng, size),
        "rrc_flip_draft": lambda b, rng: rrc_flip(b, rng, size, draft=True),
    }


def time_pipeline(fn, blobs: list[bytes], batch: int, repeats: int, seed: int = 0) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, images) for `repeats` passes of a grain MapDataset over blobs."""
    rng = np.random.default_rng(seed)
    ds = grain.MapDataset.source(blobs).map(lambda b: fn(b, rng)).batch(batch, drop_remainder=False)
    for _ in ds[:1]:  # warm-up (imports, first allocations)
        pass
    cpu0, wall0 = time.process_time(), time.perf_counter()
    n = 0
    for _ in range(repeats):
        for b in ds:
            n += len(b)
    return time.process_time() - cpu0, time.perf_counter() - wall0, n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--pipelines", default="jkd,decode,rrc_flip,rrc_flip_draft")
    ap.add_argument("--target-img-per-s", type=float, default=4736.0,
                    help="a GPU's training rate to feed (default: the peer's torch.compile ViT-B->S rate on an "
                         "H200 measured with the earlier peer script, docs/PERF.md)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(tmp, args.images)
        blobs = [open(p, "rb").read() for p in paths]
    kb = sum(map(len, blobs)) / len(blobs) / 1024
    fns = pipelines(args.size)
    for name in args.pipelines.split(","):
        cpu_s, wall_s, n = time_pipeline(fns[name], blobs, args.batch, args.repeats)
        per_core = n / cpu_s
        print(json.dumps({"pipeline": name, "images": n, "jpeg_kib_mean": round(kb, 1), "size": args.size,
                          "img_per_s_per_core_cpu_time": round(per_core, 1),
                          "img_per_s_wall": round(n / wall_s, 1),
                          "cores_for_target": round(args.target_img_per_s / per_core, 1),
                          "target_img_per_s": args.target_img_per_s}), flush=True)


if __name__ == "__main__":
    main()
