"""OCT throughput on the CPU: thickness maps and layer-segmentation inference for 49 x 496 x 512
volumes.

- thickness-map computation: given the two boundaries, :func:`retinassl.jobs.oct_thickness.compute_thickness`
  (per-A-scan thickness, the 128 x 128 map on the infrared field, the fovea, the ETDRS table on a
  0.02 mm grid, DeepRT's quality score), in volumes/s; also the gridding alone;
- segmentation inference: :meth:`LayerModel.segment` (resize, U-Net, softmax, boundary extraction by
  dynamic programming, rescaling) in B-scans/s and volumes/s, float32 and bf16 autocast, side by side
  with the bare network forward on the same batches (the toolkit's overhead is the ratio).

Measured interleaved, median of ``--repeats``; the machine is shared, so read ratios first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, write_results  # noqa: E402

from retinassl.data.synthetic_oct import BOUNDARY_NAMES, DEFAULT_SHAPE  # noqa: E402
from retinassl.hardware import cpu_supports_bf16  # noqa: E402
from retinassl.models import build_encoder  # noqa: E402
from retinassl.models.segmentation import UNet  # noqa: E402
from retinassl.methods.oct_layers import LayerModel, bscan_input, load_layer_model  # noqa: E402
from retinassl.jobs.oct_thickness import compute_thickness  # noqa: E402
from retinassl.oct.synthetic import synthetic_volumes  # noqa: E402
from retinassl.oct.thickness import ascan_thickness, map_grid, thickness_map  # noqa: E402


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, default=None,
                        help="a layer model folder (default: the newest runs/bench-oct/layers-*)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    volume = synthetic_volumes(1, 303, DEFAULT_SHAPE)[0]
    # thickness maps from given boundaries ----------------------------------------------------------
    two = type(volume)(**{**volume.__dict__, "layers": {k: volume.layers[k] for k in ("ILM", "BM")}})
    compute_thickness(two)                                              # warm-up
    full = timed(lambda: compute_thickness(two), args.repeats)
    grid, _ = map_grid(two, 128)
    th = ascan_thickness(two.layers["ILM"], two.layers["BM"], two.spacing_mm[1])
    gridding = timed(lambda: thickness_map(th, two.bscan_start, two.bscan_end, grid), args.repeats)
    # segmentation inference ------------------------------------------------------------------------
    found = sorted((ROOT / "runs" / "bench-oct").glob("layers-*/layer-model"))
    model_dir = args.model or (found[-1] if found else None)
    if model_dir is not None:
        model = load_layer_model(model_dir)
        source = str(model_dir)
    else:
        encoder = build_encoder("unet", in_channels=1, channels=(16, 32, 64, 128))
        model = LayerModel(UNet(encoder, len(BOUNDARY_NAMES) + 1).eval(), BOUNDARY_NAMES, (128, 128),
                           "unet", {"in_channels": 1, "channels": [16, 32, 64, 128]})
        source = "untrained network of the benchmark's architecture (speed does not depend on weights)"
    x = torch.from_numpy(np.stack([bscan_input(b, model.input_size) for b in volume.bscans]))[:, None]
    bf16_ok = cpu_supports_bf16()
    seg: dict[str, float] = {}
    for precision in (["float32", "bf16"] if bf16_ok else ["float32"]):
        use = precision == "bf16"

        def bare() -> None:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=use):
                for s in range(0, len(x), 16):
                    model.net(x[s:s + 16])

        bare()
        model.segment(volume, bf16=use)
        seg[f"bare_{precision}_s"] = timed(bare, args.repeats)
        seg[f"segment_{precision}_s"] = timed(lambda u=use: model.segment(volume, bf16=u), args.repeats)
    n = volume.shape[0]
    data = {"shape": list(DEFAULT_SHAPE), "threads": args.threads, "repeats": args.repeats,
            "model": source, "input_size": list(model.input_size), "boundaries": list(model.boundaries),
            "thickness_volume_s": full, "thickness_volumes_per_s": 1 / full,
            "gridding_s": gridding, **seg}
    rows = ["| step | seconds per volume | volumes/s | B-scans/s |", "|---|---|---|---|",
            f"| thickness map + fovea + ETDRS + quality (boundaries given) | {full:.4f} | {1 / full:.1f} | |",
            f"| gridding alone (128 x 128 map) | {gridding:.4f} | {1 / gridding:.1f} | |"]
    for key, value in seg.items():
        label = key.removesuffix("_s").replace("_", " ")
        rows.append(f"| {label} ({model.input_size[0]}x{model.input_size[1]} input, "
                    f"{len(model.boundaries)} boundaries) | {value:.3f} | {1 / value:.2f} | {n / value:.1f} |")
    for precision in ("float32", "bf16"):
        if f"segment_{precision}_s" in seg:
            ratio = seg[f"segment_{precision}_s"] / seg[f"bare_{precision}_s"]
            data[f"segment_over_bare_{precision}"] = ratio
            rows.append(f"| segment / bare network, {precision} | {ratio:.2f}x | | |")
    note = (f"\n\nOne synthetic {DEFAULT_SHAPE[0]} x {DEFAULT_SHAPE[1]} x {DEFAULT_SHAPE[2]} volume, "
            f"{args.threads} threads, median of {args.repeats}. Segmentation model: {source}. "
            "'segment' = resize + U-Net + softmax + dynamic-programming boundary extraction + "
            "rescaling to the B-scan grid; 'bare' = the U-Net forward alone on the same resized batches.")
    write_results("oct_speed", data, "\n".join(rows) + note)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
