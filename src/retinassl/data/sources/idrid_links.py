"""Links between IDRiD images that are the same photograph or the same eye, and the patient groups
they make (:mod:`retinassl.data.sources.idrid` adds them to its manifest): the byte-identical
part-B pairs of the official release (:data:`PART_B_IDENTICAL`), further same-eye pairs found by
:mod:`retinassl.data.duplicates` and confirmed by eye (:data:`SAME_EYE_FOUND`), and the part-A /
part-B matches of ``seg_to_grading_matches.csv``. Every linked image joins one ``patient`` group
named after its alphabetically first id (:func:`link_groups`), so a patient-level split keeps them
together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd


# Byte-identical image pairs inside part B of the official release (listed in the dataset notes;
# labels differ for 021/391, 028/327, 045/333 and train 118 (grade 0) / test 064 (grade 3)).
PART_B_IDENTICAL: tuple[tuple[str, str], ...] = (
    ("idrid-B-train-IDRiD_021", "idrid-B-train-IDRiD_391"),
    ("idrid-B-train-IDRiD_079", "idrid-B-train-IDRiD_279"),
    ("idrid-B-train-IDRiD_028", "idrid-B-train-IDRiD_327"),
    ("idrid-B-train-IDRiD_073", "idrid-B-train-IDRiD_375"),
    ("idrid-B-train-IDRiD_045", "idrid-B-train-IDRiD_333"),
    ("idrid-B-train-IDRiD_118", "idrid-B-test-IDRiD_064"),
)


# Different photographs of the same eye, not in seg_to_grading_matches.csv: found with
# retinassl.data.duplicates (shift-tolerant correlation of vessel images) on the whole of parts A
# and B, each pair confirmed by looking at both images (same vessel tree and lesions, shifted,
# re-exposed, or later in the disease).
SAME_EYE_FOUND: tuple[tuple[str, str], ...] = (
    ("idrid-A-train-IDRiD_11", "idrid-B-train-IDRiD_083"),
    ("idrid-A-train-IDRiD_25", "idrid-B-train-IDRiD_347"),
    ("idrid-A-train-IDRiD_26", "idrid-B-train-IDRiD_299"),
    ("idrid-A-test-IDRiD_55", "idrid-B-train-IDRiD_354"),
    ("idrid-A-test-IDRiD_56", "idrid-B-train-IDRiD_320"),
    ("idrid-A-test-IDRiD_60", "idrid-B-train-IDRiD_044"),
    ("idrid-A-test-IDRiD_61", "idrid-B-train-IDRiD_324"),
    ("idrid-A-test-IDRiD_64", "idrid-B-train-IDRiD_380"),
    ("idrid-A-test-IDRiD_66", "idrid-B-train-IDRiD_326"),
    ("idrid-A-test-IDRiD_68", "idrid-A-test-IDRiD_69"),
    ("idrid-A-test-IDRiD_70", "idrid-B-test-IDRiD_006"),
    ("idrid-A-test-IDRiD_75", "idrid-B-train-IDRiD_330"),
    ("idrid-B-train-IDRiD_013", "idrid-B-train-IDRiD_397"),
    ("idrid-B-train-IDRiD_017", "idrid-B-test-IDRiD_072"),
    ("idrid-B-train-IDRiD_038", "idrid-B-train-IDRiD_126"),
    ("idrid-B-train-IDRiD_043", "idrid-B-train-IDRiD_401"),
    ("idrid-B-train-IDRiD_046", "idrid-B-train-IDRiD_404"),
    ("idrid-B-train-IDRiD_319", "idrid-B-train-IDRiD_338"),
    ("idrid-B-train-IDRiD_339", "idrid-B-train-IDRiD_354"),
)


def link_groups(links: Iterable[tuple[str, str]]) -> dict[str, str]:
    """id -> group name (the alphabetically first id of its connected group)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in links:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in parent}


def add_links(frame: pd.DataFrame, matches: Sequence[tuple[str, str, str]]) -> None:
    def joined(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
        out: dict[str, list[str]] = {}
        for a, b in pairs:
            out.setdefault(a, []).append(b)
            out.setdefault(b, []).append(a)
        return {k: ";".join(sorted(v)) for k, v in out.items()}

    twin = joined((a, b) for a, b, _ in matches)
    kind = {x: k for a, b, k in matches for x in (a, b)}
    ids = frame["id"]
    frame["twin"] = ids.map(lambda i: twin.get(i, ""))
    frame["twin_match"] = ids.map(lambda i: kind.get(i, ""))
    frame["duplicate_of"] = ids.map(lambda i: joined(PART_B_IDENTICAL).get(i, ""))
    frame["same_eye_as"] = ids.map(lambda i: joined(SAME_EYE_FOUND).get(i, ""))
    groups = link_groups([(a, b) for a, b, _ in matches] + list(PART_B_IDENTICAL) + list(SAME_EYE_FOUND))
    frame["patient"] = ids.map(lambda i: groups.get(i, i))
