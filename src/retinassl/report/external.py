"""The report sections of an external validation (``retinassl evaluate external``): the reliability
diagram of each dataset's probability outputs and the galleries of each model's worst misses (the
ROC curves come from :func:`retinassl.report.html.roc_section`, like every evaluation's)."""

from __future__ import annotations

from retinassl.io.rundir import RunDir
from retinassl.report.sections import Section, gallery_section


def reliability_section(run: RunDir) -> Section | None:
    return gallery_section(run, "reliability-", "Calibration (reliability diagrams)",
                           "Observed positive rate against the mean predicted probability in ten equal-width "
                           "bins (marker area: images in the bin); the dashed diagonal is perfect "
                           "calibration. Classifiers' probabilities only (a patch classifier's image score "
                           "is a sum of patch probabilities, not a probability).")


def misses_section(run: RunDir) -> Section | None:
    return gallery_section(run, "misses-", "Worst misses (dataset-model)",
                           "The most confident false positives (top row, highest score first) and false "
                           "negatives (bottom row, lowest score first) at the model's saved threshold (a model "
                           "without one: the highest-scored negatives and lowest-scored positives), with "
                           "the Grad-CAM of whole-image classifiers or the patch heatmap of patch "
                           "classifiers; captions: image id, label, score. The picks are listed in the "
                           "CSV of the same name in report/figures.")
