"""Report section of the OCT stages: thickness maps, cross-modal predictions and real B-scans
with both boundary methods of a run."""

from __future__ import annotations

from retinassl.report.sections import Section, gallery_section
from retinassl.io.rundir import RunDir


def oct_section(run: RunDir) -> Section | None:
    """Thickness maps (``oct-*.png``), fundus -> thickness predictions (``crossmodal-*.png``) and
    real B-scans with the graph search's and the layer models' boundaries (``bscans-*.png``)."""
    parts = [gallery_section(run, "oct-", "Retinal thickness from OCT",
                             "ILM to Bruch's membrane in micrometres over the infrared image, with "
                             "the fovea and the 1/3/6 mm ETDRS circles."),
             gallery_section(run, "crossmodal-", "Cross-modal prediction (test images)",
                             "Fundus photograph, the OCT thickness map registered to it (target) and "
                             "the map predicted from the photograph alone."),
             gallery_section(run, "bscans-", "Real B-scans: graph search and layer models",
                             "Random B-scans (seeded) of the patients held out of the adaptation, with "
                             "the annotation-free graph search's ILM and Bruch's membrane (red, wide) "
                             "and the layer model's first and last boundary after adaptation (cyan) "
                             "and before it (yellow, dashed). Titled with the row index, the graph "
                             "search's quality flags and each model's mean ILM/BM disagreement with it "
                             "in pixels.", columns=1)]
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    return Section("OCT and cross-modal pretraining",
                   "".join(f"<h3>{p.title}</h3>{p.html}" for p in parts))
