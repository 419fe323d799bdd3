"""An example manifest for first runs and tests: product-clip prompts, seeds, a SKU passthrough column."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PROMPTS = [
    "A red ceramic coffee mug rotating slowly on a white studio table, soft light",
    "Wireless earbuds in an open charging case, camera orbiting, product shot",
    "A leather backpack on a wooden bench in morning sun, gentle dolly-in",
    "A glass perfume bottle with water droplets, macro, slow pan",
]


def demo_image(width: int = 96, height: int = 64) -> np.ndarray:
    """A deterministic test picture (gradient with a disc) as uint8 [h, w, 3]."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 7.0)], axis=-1)
    disc = (x - width * 0.6) ** 2 + (y - height * 0.5) ** 2 < (min(width, height) * 0.25) ** 2
    img[disc] = [0.9, 0.2, 0.2]
    return (img * 255).clip(0, 255).astype(np.uint8)


def write_demo_manifest(path: str, rows: int = 4, i2v: bool = False) -> str:
    from PIL import Image

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    data = {"id": [], "prompt": [], "seed": [], "model": [], "image": [], "sku": []}
    for i in range(rows):
        data["id"].append(f"clip-{i:03d}")
        data["prompt"].append(PROMPTS[i % len(PROMPTS)])
        data["seed"].append(1000 + i)
        data["model"].append("tiny-t2v")
        data["image"].append(None)
        data["sku"].append(f"SKU-{4711 + i}")
    if i2v:
        img_path = os.path.join(folder, "demo_product.png")
        Image.fromarray(demo_image()).save(img_path)
        for i in range(max(1, rows // 2)):
            data["id"].append(f"i2v-{i:03d}")
            data["prompt"].append("The product turns slowly toward the camera")
            data["seed"].append(2000 + i)
            data["model"].append("tiny-i2v")
            data["image"].append("demo_product.png")
            data["sku"].append(f"SKU-{9000 + i}")
    table = pa.table({k: pa.array(v, type=pa.string() if k != "seed" else pa.int64()) for k, v in data.items()})
    pq.write_table(table, path)
    return path
