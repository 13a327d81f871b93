"""The report's summary and metric tables, on hand-made results and comparison tables: bookkeeping
metrics kept out, rounding, intervals, and one sentence per comparison saying what the numbers say."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from retinassl.io.results import result_row
from retinassl.report.sections import number
from retinassl.report.summary import paired_sentences, transfer_headline, transfer_sentences, what_ran
from retinassl.report.tables import metrics_that_matter, wide_metrics


def _comparison(**row) -> pd.DataFrame:
    base = {"task": "referable", "protocol": "probe", "fraction": 0.05, "init": "rotation", "reference": "scratch",
            "metric": "auc", "n_seeds": 5, "mean": 0.81, "lo": 0.75, "hi": 0.87, "interval": "x",
            "reference_mean": 0.74, "delta": 0.07, "auc_ensemble": 0.82, "p": 0.003, "p_seeds": 0.01,
            "sig_seeds": 4, "sig_better": 4, "sig_worse": 0}
    reference = {**base, "init": "scratch", "mean": 0.74, "delta": 0.0, "auc_ensemble": 0.75, "p": math.nan,
                 "fraction": row.get("fraction", base["fraction"])}
    return pd.DataFrame([{**base, **row}, reference])


def test_rounding() -> None:
    assert [number(v) for v in (0.10416666666666667, 12.345, 1234.5, math.nan, -0.0704)] == \
        ["0.104", "12.3", "1234", "", "-0.070"]


def test_bookkeeping_metrics_and_interval_bounds_are_not_metrics_that_matter() -> None:
    names = ["auc", "auc_lo", "auc_hi", "n_test", "seconds", "C", "steps", "best_epoch", "dice", "dice_ci_low",
             "dice_ci_high", "train_seconds", "n[grade=1]", "ap", "extracted_images", "kappa",
             "selected_epoch", "selected_val_patch_auc", "selected_val_loss", "image_auc"]
    # the validation pass a training kept is bookkeeping: its AUC must not sit beside the test AUCs
    assert metrics_that_matter(names) == ["auc", "dice", "ap", "kappa", "image_auc"]


def test_sentence_of_a_significant_gain() -> None:
    (sentence,) = transfer_sentences(_comparison())
    assert ("<b>rotation</b> beats <b>scratch</b> at 5 % labels (referable, linear probe): +0.070 AUC "
            "(0.810 [0.750, 0.870] vs 0.740), DeLong p = 0.003, significantly higher in 4 of 5 seeds.") == sentence


def test_sentences_of_a_loss_and_of_no_difference() -> None:
    (worse,) = transfer_sentences(_comparison(delta=-0.05, mean=0.69, auc_ensemble=0.70, p=0.0004, sig_better=0,
                                              sig_worse=3, fraction=1.0))
    assert "falls below <b>scratch</b> with all labels" in worse and "-0.050 AUC" in worse
    assert "p &lt; 0.001" in worse and "higher in 0 of 5 seeds, lower in 3" in worse
    (same,) = transfer_sentences(_comparison(p=0.41, sig_better=1))
    assert "does not differ significantly from" in same and "p = 0.41" in same


def test_paired_sentences_from_the_results_table() -> None:
    rows = []
    for seed, (p, d) in enumerate([(0.01, 0.05), (0.2, 0.02), (0.03, -0.04)]):
        for metric, value in (("delong_p", p), ("auc_difference", d), ("delong_z", 1.0)):
            rows.append(result_row(experiment="gan", task="patch:abnormal", method="ssl-gan vs supervised",
                                   init="scratch", protocol="comparison", n_labelled=10, seed=seed, metric=metric,
                                   value=value))
    (sentence,) = paired_sentences(pd.DataFrame(rows))
    assert "with 10 labelled images" in sentence and f"{np.mean([0.05, 0.02, -0.04]):+.3f}" in sentence
    assert "in 2 of 3 seeds (1 higher; median p = 0.030)" in sentence
    # with the cells' own rows, the sentence names each side's mean image AUC over the seeds
    for method, values in (("ssl-gan", (0.8, 0.7, 0.75)), ("supervised", (0.6, 0.65, 0.7))):
        rows += [result_row(experiment="gan", task="patch:abnormal", method=method, init="scratch",
                            protocol="semi-supervised", n_labelled=10, seed=seed, metric="image_auc", value=v)
                 for seed, v in enumerate(values)]
    (sentence,) = paired_sentences(pd.DataFrame(rows))
    assert "(0.750 vs 0.650 image AUC)" in sentence


def test_metric_table_folds_intervals_and_averages_seeds() -> None:
    rows = [result_row(experiment="v", task="vessels:drive", method="segmentation", init="scratch",
                       protocol="finetune", fraction=1.0, seed=0, metric=m, value=v)
            for m, v in (("dice", 0.8123), ("dice_ci_low", 0.79), ("dice_ci_high", 0.83), ("train_seconds", 5.0))]
    rows += [result_row(experiment="v", task="cls", method="supervised", init="scratch", protocol="finetune",
                        fraction=0.5, seed=s, metric="auc", value=v) for s, v in ((0, 0.7), (1, 0.8))]
    wide = wide_metrics(pd.DataFrame(rows))
    assert "train_seconds" not in wide.columns and "experiment" not in wide.columns
    dice = wide.set_index("task").loc["vessels:drive"]
    assert dice["dice"] == "0.812 [0.790, 0.830]" and dice["seeds"] == 1 and dice["labelled"] == "100 %"
    auc = wide.set_index("task").loc["cls"]
    assert auc["auc"] == f"0.750 ± {np.std([0.7, 0.8], ddof=1):.3f}" and auc["seeds"] == 2


def test_what_ran_names_tasks_datasets_fractions_and_test_images() -> None:
    rows = [result_row(experiment="sweep", task=t, method="logistic", init=i, protocol="probe", fraction=f,
                       seed=s, metric=m, value=v)
            for t in ("referable", "referable@messidor") for i in ("scratch", "rotation") for f in (0.05, 1.0)
            for s in (0, 1) for m, v in (("auc", 0.7), ("n_test", 40 if "@" not in t else 120))]
    (line,) = what_ran(pd.DataFrame(rows))
    assert "tasks referable, referable@messidor" in line and "scored on messidor" in line
    assert "initialisations scratch, rotation" in line and "labelled fractions 5 %, 100 %" in line
    assert "2 seeds" in line and "120 test images" in line


def test_headline_gives_a_protocol_run_at_one_fraction_its_own_column() -> None:
    """The demo fine-tunes at 10 % only while the probe runs at 5, 10 and 100 %: every row has a number."""
    rows = []
    for protocol, fractions in (("probe", (0.05, 0.1, 1.0)), ("finetune", (0.1,))):
        for f in fractions:
            rows.append(_comparison(protocol=protocol, fraction=f, mean=0.8 + f / 10).assign(protocol=protocol))
    headline = transfer_headline(pd.concat(rows, ignore_index=True))
    assert [c for c in headline.columns if c.endswith("of labels")] == \
        ["5 % of labels", "10 % of labels", "100 % of labels"]
    finetune = headline[headline["protocol"] == "fine-tuning"]
    assert (finetune["10 % of labels"] != "").all() and (finetune["5 % of labels"] == "").all()
    assert (headline[headline["protocol"] == "linear probe"]["5 % of labels"] != "").all()
