"""How much of each lesion type the colour standardisation clips (issue 23): a choice of
``preprocess.color_target_std`` made on training images only, before any model is trained.

`preprocess.color_standardize` maps each channel's mean and standard deviation inside the FOV to
``color_target_mean`` (128) and ``color_target_std`` (40) and clips to uint8, so a pixel more than
127 / std standard deviations above its channel's mean becomes 255 (3.2 sd at the default 40). The
SSL-GAN table with it lost patch AUC (``ssl_gan_errors_robust.md``: bright lesions and the disc
clipped was the reading, not a measurement). This measures it: for the IDRiD part-A images of the
``idrid-ssl-gan`` training split (seed 1: the split every idrid-ssl-gan table uses; its validation and
test images are not read), each pixel's z-score per channel inside the FOV at the cpu budget's
512 px, and per lesion mask (exudates, haemorrhages, microaneurysms, soft exudates, optic disc) the
share of its pixels that a target std would clip in any channel (above 255 or below 0), with the same
for all FOV pixels. No network is involved.

    .venv/bin/python benchmarks/colour_clipping.py [--size 512] [--stds 40,30,25,20,15]
"""

from __future__ import annotations

import argparse

import numpy as np

from _common import SHARED_DATA, write_results

from retinassl.data.cache import Cache
from retinassl.data.preprocess import PreprocessConfig
from retinassl.data.sources.idrid import idrid_ssl_gan_set
from retinassl.jobs.patch_config import SplitConfig
from retinassl.jobs.patch_data import split_rows

MASKS = {"mask_EX": "hard exudates", "mask_HE": "haemorrhages", "mask_MA": "microaneurysms",
         "mask_SE": "soft exudates", "mask_OD": "optic disc"}
TARGET_MEAN = 128.0


def training_images(root, split_seed: int = 1):
    """The part-A rows of the idrid-ssl-gan training split (149/50/50, ``split.seed``)."""
    manifest = idrid_ssl_gan_set(root)
    train, _, _ = split_rows(manifest, SplitConfig(train=149, val=50, seed=split_seed))
    return manifest.subset(train[(manifest.frame["part"].to_numpy()[train] == "A")])


def clipped_share(z: np.ndarray, std: float) -> float:
    """Share of pixels (rows of ``z``: per-channel z-scores) clipped in any channel at ``std``."""
    if not len(z):
        return float("nan")
    value = z * std + TARGET_MEAN
    return float(((value > 255.5) | (value < -0.5)).any(axis=1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--stds", default="40,30,25,20,15")
    args = parser.parse_args()
    stds = [float(s) for s in args.stds.split(",")]
    manifest = training_images(SHARED_DATA / "idrid")
    prepared = Cache().prepare(manifest, PreprocessConfig(size=args.size), workers=2,
                               mask_columns=list(MASKS))
    z_by_region: dict[str, list[np.ndarray]] = {name: [] for name in ["FOV", *MASKS.values()]}
    peaks: dict[str, list[float]] = {str(int(s)): [] for s in stds}  # per image, what "max" divides by
    for entry in prepared.entries:
        image = np.asarray(entry.image(), dtype=np.float64)
        fov = np.asarray(entry.fov(), dtype=bool)
        inside = image[fov]
        z = (image - inside.mean(axis=0)) / np.maximum(inside.std(axis=0), 1e-6)
        z_by_region["FOV"].append(z[fov])
        for s in stds:
            peaks[str(int(s))].append(float(np.clip(np.round(z[fov] * s + TARGET_MEAN), 0, 255).max()))
        for column, name in MASKS.items():
            mask = entry.mask(column)
            if mask is not None:
                z_by_region[name].append(z[np.asarray(mask, dtype=bool) & fov])
    rows = []
    for region, parts in z_by_region.items():
        z = np.concatenate(parts) if parts else np.zeros((0, 3))
        rows.append({"region": region, "images": sum(len(p) > 0 for p in parts), "pixels": int(len(z)),
                     "z_max_p99": [float(v) for v in np.percentile(z, 99, axis=0)] if len(z) else None,
                     "clipped": {str(int(s)): clipped_share(z, s) for s in stds}})
    header = "| region | images | pixels | " + " | ".join(f"clipped at std {int(s)}" for s in stds) + " |"
    lines = [f"IDRiD part-A images of the idrid-ssl-gan training split ({len(prepared)} images), {args.size} px, "
             f"target mean {TARGET_MEAN:.0f}: share of each region's pixels that colour standardisation clips "
             f"(any channel above 255 or below 0), per `color_target_std`.\n", header,
             "|" + "---|" * (3 + len(stds))]
    for row in rows:
        lines.append(f"| {row['region']} | {row['images']} | {row['pixels']:,} | "
                     + " | ".join(f"{100 * row['clipped'][str(int(s))]:.1f} %" for s in stds) + " |")
    lines.append("\n99th percentile of the z-score per channel (R, G, B):\n")
    lines += [f"- {row['region']}: " + ", ".join(f"{v:.2f}" for v in row["z_max_p99"]) for row in rows
              if row["z_max_p99"]]
    lines.append("\nThe image's brightest standardised value (what `normalize: max` divides by; 255 for every image "
                 "means one common scale), across the images: median [min, max]\n")
    lines += [f"- std {s}: {np.median(v):.0f} [{min(v):.0f}, {max(v):.0f}], 255 in {sum(x >= 255 for x in v)} of "
              f"{len(v)}" for s, v in peaks.items()]
    write_results("colour_clipping", {"size": args.size, "target_mean": TARGET_MEAN, "stds": stds,
                                      "images": len(prepared), "rows": rows, "image_peaks": peaks}, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
