"""Near-duplicate detector on IDRiD: recall on the documented pairs, extra pairs, throughput.

Reference pairs (independent of the detector): the byte-identical part-B pairs of the dataset
notes (``PART_B_IDENTICAL``) and the part-A/part-B matches of ``seg_to_grading_matches.csv``,
closed under transitivity (A IDRiD_62 = B 073 = B 375 gives three pairs). Pairs found beyond them
are checked against ``SAME_EYE_FOUND`` (same-eye pairs confirmed by looking at the images); any
other pair counts as a false positive.

Usage: ``python benchmarks/duplicates_idrid.py [--root ../shared/data/idrid]``; writes
``benchmarks/results/duplicates_idrid.{json,md}``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from retinassl.data import duplicates
from retinassl.data.sources.idrid import load_idrid, read_matches
from retinassl.data.sources.idrid_links import PART_B_IDENTICAL, SAME_EYE_FOUND, link_groups

HERE = Path(__file__).resolve().parent


def closure(links: list[tuple[str, str]]) -> set[tuple[str, str]]:
    groups: dict[str, list[str]] = {}
    for item, group in link_groups(links).items():
        groups.setdefault(group, []).append(item)
    return {tuple(sorted(p)) for members in groups.values()
            for p in itertools.combinations(members, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(HERE.parents[1] / "shared" / "data" / "idrid"))
    args = parser.parse_args()
    root = Path(args.root)
    manifest = load_idrid(root, parts=("A", "B"))
    matches = read_matches(root / "seg_to_grading_matches.csv")
    reference = closure([(a, b) for a, b, _ in matches] + list(PART_B_IDENTICAL))
    confirmed = closure([(a, b) for a, b, _ in matches] + list(PART_B_IDENTICAL)
                        + list(SAME_EYE_FOUND))

    with tempfile.TemporaryDirectory() as cache:
        start, start_cpu = time.perf_counter(), time.process_time()
        prints = duplicates.compute_fingerprints(manifest, cache=False)
        cold, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        duplicates.compute_fingerprints(manifest, cache=cache)
        start = time.perf_counter()
        duplicates.compute_fingerprints(manifest, cache=cache)
        warm = time.perf_counter() - start
    start = time.process_time()
    pairs = duplicates.find_duplicates(manifest, fingerprints=prints)
    search = time.process_time() - start

    found = {tuple(sorted(p)) for p in zip(pairs["id_a"], pairs["id_b"])}
    missed = sorted(reference - found)
    extra = found - reference
    false_positives = sorted(extra - confirmed)
    ids = {item: n for n, item in enumerate(manifest.ids)}
    hamming = duplicates.hamming_matrix(prints.bits)
    same_image = {p for p, k in zip(zip(pairs["id_a"], pairs["id_b"]), pairs["kind"])
                  if k == "same_image"}
    ref_distances = sorted(int(hamming[ids[a], ids[b]]) for a, b in reference)
    others = np.ones_like(hamming, dtype=bool)
    for a, b in confirmed:
        others[ids[a], ids[b]] = others[ids[b], ids[a]] = False
    upper = np.triu_indices(len(ids), 1)
    nearest_other = int(hamming[upper][others[upper]].min())
    # Highest vessel correlation among candidate pairs that are not the same eye.
    loose = duplicates.find_duplicates(manifest, fingerprints=prints, min_correlation=-1.0)
    loose_keys = [tuple(sorted(p)) for p in zip(loose["id_a"], loose["id_b"])]
    other_corr = loose["correlation"][[k not in confirmed for k in loose_keys]]
    same_corr = loose["correlation"][[k in confirmed and k not in same_image for k in loose_keys]]
    leaks = duplicates.leakage_report(pairs)

    result = {
        "images": len(manifest), "reference_pairs": len(reference),
        "found_pairs": len(found), "same_image_pairs": len(same_image),
        "same_eye_pairs": len(found) - len(same_image),
        "recall": (len(reference) - len(missed)) / len(reference), "missed": missed,
        "extra_pairs": len(extra), "extra_confirmed_same_eye": len(extra & confirmed),
        "false_positives": len(false_positives), "false_positive_pairs": false_positives,
        "reference_hamming_largest_three": ref_distances[-3:],
        "nearest_other_hamming": nearest_other,
        "lowest_same_eye_correlation": round(float(same_corr.min()), 3),
        "highest_other_correlation": round(float(other_corr.max()), 3),
        "pairs_crossing_official_split": len(leaks),
        "fingerprint_images_per_s": round(len(manifest) / cold, 1),
        "fingerprint_cpu_ms_per_image": round(1000 * cpu / len(manifest), 1),
        "cached_images_per_s": round(len(manifest) / warm, 1),
        "pair_search_cpu_s": round(search, 3),
        "settings": {"hash_size": duplicates.HASH_SIZE, "max_distance": duplicates.MAX_DISTANCE,
                     "min_correlation": duplicates.MIN_CORRELATION,
                     "neighbours": duplicates.NEIGHBOURS, "detail_size": duplicates.DETAIL_SIZE,
                     "max_shift": duplicates.MAX_SHIFT, "decode_min": duplicates.DECODE_MIN},
    }
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "duplicates_idrid.json").write_text(json.dumps(result, indent=2) + "\n")
    table = "\n".join(f"| {k} | {v} |" for k, v in result.items()
                      if not isinstance(v, (list, dict)))
    (out / "duplicates_idrid.md").write_text(
        "# Near-duplicate detector on IDRiD (parts A + B)\n\n| measure | value |\n|---|---|\n"
        + table + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
