"""How much of each lesion type the colour standardisation clips (issue 23): a choice of
``preprocess.color_target_std`` and ``preprocess.color_gain`` made on training images only, before
any model is trained.

`preprocess.color_standardize` maps each channel's mean inside the FOV to ``color_target_mean``
(128) and scales its spread to ``color_target_std`` (40), with a gain per channel (the default) or
one gain for all channels (``color_gain: common``), and clips to uint8. The SSL-GAN table with it
lost patch AUC (``ssl_gan_errors_robust.md``: bright lesions and the disc clipped was the reading,
not a measurement). This measures it on the images of the ``idrid-ssl-gan`` training split (seed
1: the split every idrid-ssl-gan table uses; its validation and test images are not read) at the
cpu budget's 512 px: per lesion mask of the part-A images (exudates, haemorrhages,
microaneurysms, soft exudates, optic disc) and for all their FOV pixels, the share of pixels that
:func:`~retinassl.data.harmonize.standardize_color` sends to 0 or 255 in some channel where the
stored image was not already at 0 or 255 there, per target std and gain; each image's brightest
standardised value (what ``normalize: max`` divides by); each channel's spread and the gain it
gets; and the lesion-free background's contrast in the DR and the healthy images after each
standardisation. No network is involved.

    .venv/bin/python benchmarks/colour_clipping.py [--size 512] [--stds 40,30,25,20,15]
"""

from __future__ import annotations

import argparse

import numpy as np

from _common import SHARED_DATA, write_results

from retinassl.data.cache import Cache
from retinassl.data.harmonize import standardize_color
from retinassl.data.preprocess import PreprocessConfig
from retinassl.data.sources.idrid import idrid_ssl_gan_set
from retinassl.jobs.patch_config import SplitConfig
from retinassl.jobs.patch_data import split_rows

MASKS = {"mask_EX": "hard exudates", "mask_HE": "haemorrhages", "mask_MA": "microaneurysms",
         "mask_SE": "soft exudates", "mask_OD": "optic disc"}
TARGET_MEAN = 128.0
GAINS = ("channel", "common")


def training_images(root, split_seed: int = 1):
    """The idrid-ssl-gan training split (149/50/50, ``split.seed``): part-A DR images with lesion
    masks and part-B grade-0 images."""
    manifest = idrid_ssl_gan_set(root)
    train, _, _ = split_rows(manifest, SplitConfig(train=149, val=50, seed=split_seed))
    return manifest.subset(train)


def background_contrast(prepared, settings: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Per setting, the green channel's standard deviation of the lesion-free FOV after
    standardisation (part-A images: the FOV minus every lesion mask; part-B grade-0 images: the
    FOV), median over the DR and over the healthy images, and their ratio. Below 1: the
    standardisation flattens the background of the images with lesions (their lesions enlarged the
    spread it divides by), so that a healthy image's background looks the busier (a guess this
    measures)."""
    values: dict[str, dict[int, list[float]]] = {name: {0: [], 1: []} for name in settings}
    for row, entry in enumerate(prepared.entries):
        image = np.asarray(entry.image())
        fov = np.asarray(entry.fov(), dtype=bool)
        background = fov.copy()
        for column in MASKS:
            if column != "mask_OD" and (mask := entry.mask(column)) is not None:
                background &= ~np.asarray(mask, dtype=bool)
        label = int(prepared.manifest.frame["abnormal"].iloc[row])
        for name, kwargs in settings.items():
            out = image if kwargs is None else standardize_color(image, fov, TARGET_MEAN, **kwargs)
            values[name][label].append(float(out[..., 1][background].astype(np.float64).std()))
    return {name: {"dr": float(np.median(v[1])), "healthy": float(np.median(v[0])),
                   "ratio": float(np.median(v[1]) / np.median(v[0]))} for name, v in values.items()}


def saturated(image: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: pixels that the standardisation (``image`` -> ``out``) sends to 0 or 255 in a
    channel where the stored image was not at 0 or 255 already (clipped, or in rare cases rounded
    onto the bound)."""
    return (((out == 0) | (out == 255)) & (image > 0) & (image < 255)).any(axis=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--stds", default="40,30,25,20,15")
    args = parser.parse_args()
    stds = [float(s) for s in args.stds.split(",")]
    everything = Cache().prepare(training_images(SHARED_DATA / "idrid"), PreprocessConfig(size=args.size),
                                 workers=2, mask_columns=list(MASKS))
    prepared = everything.subset((everything.manifest.frame["part"] == "A").to_numpy())
    regions = ["FOV", *MASKS.values()]
    # (gain, std) -> region -> [clipped pixels, pixels, images]; (gain, std) -> per-image brightest value
    counts = {(g, s): {r: [0, 0, 0] for r in regions} for g in GAINS for s in stds}
    peaks: dict[tuple[str, float], list[float]] = {(g, s): [] for g in GAINS for s in stds}
    channel_sd: list[list[float]] = []  # per image, each channel's sd inside the FOV (uint8 units)
    for entry in prepared.entries:
        image = np.asarray(entry.image())
        fov = np.asarray(entry.fov(), dtype=bool)
        channel_sd.append([float(v) for v in image[fov].std(axis=0)])
        masks = {"FOV": fov, **{name: np.asarray(m, dtype=bool) & fov for column, name in MASKS.items()
                                if (m := entry.mask(column)) is not None}}
        for gain in GAINS:
            for s in stds:
                out = standardize_color(image, fov, TARGET_MEAN, s, gain)
                clipped = saturated(image, out)
                peaks[(gain, s)].append(float(out[fov].max()))
                for region, mask in masks.items():
                    tally = counts[(gain, s)][region]
                    tally[0] += int((clipped & mask).sum())
                    tally[1] += int(mask.sum())
                    tally[2] += int(mask.any())
    lines = [f"IDRiD part-A images of the idrid-ssl-gan training split ({len(prepared)} images), {args.size} px, "
             f"target mean {TARGET_MEAN:.0f}: share of each region's pixels that colour standardisation "
             "(`retinassl.data.harmonize.standardize_color`) sends to 0 or 255 in a channel where the stored image "
             "was not at 0 or 255 already, per "
             "`color_target_std` and `color_gain`.\n"]
    rows = []
    for gain in GAINS:
        lines += [f"`color_gain: {gain}`\n", "| region | images | pixels | "
                  + " | ".join(f"clipped at std {s:g}" for s in stds) + " |", "|" + "---|" * (3 + len(stds))]
        for region in regions:
            tallies = [counts[(gain, s)][region] for s in stds]
            rows.append({"gain": gain, "region": region, "images": tallies[0][2], "pixels": tallies[0][1],
                         "clipped": {f"{s:g}": t[0] / max(t[1], 1) for s, t in zip(stds, tallies)}})
            lines.append(f"| {region} | {tallies[0][2]} | {tallies[0][1]:,} | "
                         + " | ".join(f"{100 * t[0] / max(t[1], 1):.1f} %" for t in tallies) + " |")
        lines.append("")
    lines.append("The image's brightest standardised value inside the FOV (what `normalize: max` divides by; 255 "
                 "for every image means one common scale), across the images: median [min, max]\n")
    lines += [f"- {gain}, std {s:g}: {np.median(v):.0f} [{min(v):.0f}, {max(v):.0f}], 255 in "
              f"{sum(x >= 255 for x in v)} of {len(v)}" for (gain, s), v in peaks.items()]
    sd = np.array(channel_sd)
    pooled = np.sqrt((sd ** 2).mean(axis=1))
    lines.append("\nEach channel's standard deviation inside the FOV before standardisation (uint8 units), median "
                 "[min, max] across the images, and the gain each setting applies to it at std 40 (it multiplies "
                 "the channel's noise and compression artefacts alike):\n")
    lines += [f"- {name}: sd {np.median(sd[:, c]):.1f} [{sd[:, c].min():.1f}, {sd[:, c].max():.1f}]; gain "
              f"channel {np.median(40 / sd[:, c]):.1f} [{(40 / sd[:, c]).min():.1f}, {(40 / sd[:, c]).max():.1f}], "
              f"common {np.median(40 / pooled):.1f} [{(40 / pooled).min():.1f}, {(40 / pooled).max():.1f}]"
              for c, name in enumerate("RGB")]
    settings = {"none (as stored)": None,
                **{f"{gain} gain, std {s:g}": {"std": s, "gain": gain} for gain in GAINS for s in (40.0, 20.0)}}
    contrast = background_contrast(everything, settings)
    counts_by_label = everything.manifest.frame["abnormal"].astype(int).value_counts()
    lines += ["", f"Background contrast: the green channel's standard deviation of the lesion-free FOV (part-A DR "
              f"images: the FOV minus the lesion masks; grade-0 images: the FOV), median over the training split's "
              f"{counts_by_label.get(1, 0)} DR and {counts_by_label.get(0, 0)} healthy images, after each "
              "standardisation (`color_gain`, `color_target_std`); ratio below 1: the DR images' background comes "
              "out flatter than the healthy images'.\n",
              "| standardisation | DR images | healthy images | ratio DR / healthy |", "|---|---|---|---|"]
    lines += [f"| {name} | {v['dr']:.1f} | {v['healthy']:.1f} | {v['ratio']:.2f} |" for name, v in contrast.items()]
    write_results("colour_clipping", {"size": args.size, "target_mean": TARGET_MEAN, "stds": stds,
                                      "images": len(prepared), "rows": rows, "background_contrast": contrast,
                                      "image_peaks": {f"{g} {s:g}": v for (g, s), v in peaks.items()},
                                      "channel_sd": channel_sd}, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
