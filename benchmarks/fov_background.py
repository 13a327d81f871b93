"""How the corner-background rule of the FOV estimate (``preprocess.fov_background``) changes the
field of view of every real fundus photograph available, and how close either estimate comes to
DRIVE's drawn FOV masks (issue 22: STARE's outside is not black, so the plain threshold takes
background into the FOV).

For each image: the FOV of :func:`~retinassl.data.field_of_view.fov_mask` with and without the
rule, decoded as the cache decodes it (at least 512 px); the share of images whose FOV changes,
the mean FOV area (share of the image) either way; on DRIVE, the intersection over union with the
drawn masks. No training, no labels.

Usage: ``python benchmarks/fov_background.py [--limit N]``; writes
``benchmarks/results/fov_background.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import SHARED_DATA, write_results  # noqa: E402

SOURCES = {
    "DRIVE": ("drive", {"root": "drive"}),
    "STARE": ("stare", {"root": "stare"}),
    "IDRiD (parts A, B)": ("idrid", {"root": "idrid", "parts": ["A", "B"]}),
    "MX fundus": ("mx_fundus_oct", {"root": "mx_fundus_oct", "modality": "fundus"}),
    "normal/glaucoma set": ("folder", {"root": "eye_disease_4class", "positive": "glaucoma"}),
    "RFMiD subset": ("rfmid", {"root": "rfmid_subset"}),
}


def main() -> None:
    from retinassl.data.field_of_view import fov_mask
    from retinassl.data.imageio import read_image, read_mask
    from retinassl.data.sources import load_source

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="only the first N images per dataset")
    args = parser.parse_args()
    rows, data = [], {"datasets": {}}
    for name, (source, options) in SOURCES.items():
        root = SHARED_DATA / options["root"]
        if not root.is_dir():
            print(f"{name}: {root} absent, skipped")
            continue
        manifest = load_source(source, **{**options, "root": str(root)})
        frame = manifest.frame
        picked = range(len(frame)) if not args.limit else range(min(args.limit, len(frame)))
        start = time.perf_counter()
        changed, area_plain, area_rule, iou_plain, iou_rule = 0, [], [], [], []
        for r in picked:
            decoded = read_image(manifest.path(r, "image"), min_size=512)
            image = decoded.array
            plain, rule = fov_mask(image), fov_mask(image, background=True)
            changed += int((plain != rule).any())
            area_plain.append(plain.mean())
            area_rule.append(rule.mean())
            if "mask_fov" in frame.columns and isinstance(frame.at[r, "mask_fov"], str) and frame.at[r, "mask_fov"]:
                truth = read_mask(manifest.path(r, "mask_fov"), expected_size=decoded.original_size)
                truth = cv2.resize(truth.astype(np.uint8), (image.shape[1], image.shape[0]),
                                   interpolation=cv2.INTER_NEAREST).astype(bool)
                iou_plain.append((plain & truth).sum() / (plain | truth).sum())
                iou_rule.append((rule & truth).sum() / (rule | truth).sum())
        n = len(picked)
        entry = {"images": n, "changed": changed, "fov_area_plain": float(np.mean(area_plain)),
                 "fov_area_rule": float(np.mean(area_rule)),
                 "fov_area_rule_sd": float(np.std(area_rule)), "fov_area_plain_sd": float(np.std(area_plain)),
                 "seconds": time.perf_counter() - start}
        if iou_plain:
            entry |= {"iou_plain": float(np.mean(iou_plain)), "iou_rule": float(np.mean(iou_rule)),
                      "iou_plain_min": float(np.min(iou_plain)), "iou_rule_min": float(np.min(iou_rule))}
        data["datasets"][name] = entry
        iou = (f"{entry['iou_plain']:.4f} (min {entry['iou_plain_min']:.3f}) / {entry['iou_rule']:.4f} "
               f"(min {entry['iou_rule_min']:.3f})") if iou_plain else "-"
        rows.append(f"| {name} | {n} | {changed} | {entry['fov_area_plain']:.3f} ± {entry['fov_area_plain_sd']:.3f} "
                    f"| {entry['fov_area_rule']:.3f} ± {entry['fov_area_rule_sd']:.3f} | {iou} |")
        print(rows[-1], flush=True)
    table = ("FOV estimate without / with `preprocess.fov_background` (threshold 0.08 of the 99th-percentile "
             "brightness either way), every image decoded at >= 512 px as the cache decodes it.\n\n"
             "| dataset | images | FOV changed by the rule | FOV area, plain (mean ± sd) | FOV area, with the rule "
             "| IoU with the drawn FOV masks, plain / with the rule |\n|---|---|---|---|---|---|\n"
             + "\n".join(rows) + "\n")
    write_results("fov_background", data, table)


if __name__ == "__main__":
    main()
