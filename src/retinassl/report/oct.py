"""Report section of the OCT stages: thickness maps and cross-modal predictions of a run."""

from __future__ import annotations

from retinassl.report.sections import Section, gallery_section
from retinassl.io.rundir import RunDir


def oct_section(run: RunDir) -> Section | None:
    """Thickness maps (``oct-*.png``) and fundus -> thickness predictions (``crossmodal-*.png``)."""
    parts = [gallery_section(run, "oct-", "Retinal thickness from OCT",
                             "ILM to Bruch's membrane in micrometres over the infrared image, with "
                             "the fovea and the 1/3/6 mm ETDRS circles."),
             gallery_section(run, "crossmodal-", "Cross-modal prediction (test images)",
                             "Fundus photograph, the OCT thickness map registered to it (target) and "
                             "the map predicted from the photograph alone.")]
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    return Section("OCT and cross-modal pretraining",
                   "".join(f"<h3>{p.title}</h3>{p.html}" for p in parts))
