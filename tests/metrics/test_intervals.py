"""The comparison tables' interval (two-level bootstrap over seeds and test images): its weighted
metrics against the plain ones on expanded samples, coverage against a simulation with known truth,
range, width with identical seeds, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from retinassl.metrics.classification import accuracy, quadratic_kappa, roc_auc
from retinassl.metrics.intervals import (image_counts, kappa_from_confusion, seed_image_bootstrap, weighted_auc,
                                         weighted_confusion)
from retinassl.metrics.stats import delong_ci, mean_ci


# -- the weighted metrics equal the plain ones on the explicitly resampled cases -----------------
def test_weighted_metrics_equal_plain_metrics_on_drawn_cases() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    scores = np.round(labels + rng.normal(size=60), 1)  # ties
    grades = rng.integers(0, 4, 60)
    predicted = np.clip(grades + rng.integers(-1, 2, 60), 0, 3)
    counts = image_counts(labels, 40, rng)
    assert (counts[:, labels == 1].sum(axis=1) == (labels == 1).sum()).all()  # class counts kept
    aucs = weighted_auc(labels, scores, counts)
    confusion = weighted_confusion(grades, predicted, counts, 4)
    kappas, accs = kappa_from_confusion(confusion), np.trace(confusion, axis1=1, axis2=2) / 60
    for b, c in enumerate(counts.astype(int)):
        drawn = np.repeat(np.arange(60), c)
        assert aucs[b] == pytest.approx(roc_auc(labels[drawn], scores[drawn]), abs=1e-12)
        assert kappas[b] == pytest.approx(quadratic_kappa(grades[drawn], predicted[drawn], 4), abs=1e-12)
        assert accs[b] == pytest.approx(accuracy(grades[drawn], predicted[drawn]), abs=1e-12)


# -- simulation with known truth ------------------------------------------------------------------
# A population of trained classifiers: seed s has quality d_s ~ N(delta, tau^2) (the seed effect);
# a test image of class y has score d_s * y + z + e, with z ~ N(0, 1) the image's own difficulty,
# shared by every seed, and e ~ N(0, sigma^2) the seed x image noise. The estimand is the expected
# metric of a seed's classifier on the population of test images.
DELTA, SIGMA = 1.2, 0.7


def simulate(rng: np.random.Generator, n_seeds: int, class_sizes: list[int], tau: float,
             quality: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(labels (N,), scores (S, N), qualities (S,))`` of one study."""
    labels = np.repeat(np.arange(len(class_sizes)), class_sizes)
    d = rng.normal(DELTA, tau, n_seeds) if quality is None else quality
    z = rng.normal(size=len(labels))
    return labels, d[:, None] * labels[None] + z[None] + rng.normal(0, SIGMA, (n_seeds, len(labels))), d


def auc_of_quality(d: np.ndarray | float) -> np.ndarray | float:
    """Population AUC of a seed of quality d: P(d + x > x') with x, x' ~ N(0, 1 + sigma^2)."""
    return stats.norm.cdf(np.asarray(d) / np.sqrt(2 * (1 + SIGMA ** 2)))


def expected_auc(tau: float) -> float:
    """E_d[Phi(d / c)] = Phi(delta / sqrt(c^2 + tau^2)) for d ~ N(delta, tau^2)."""
    return float(stats.norm.cdf(DELTA / np.sqrt(2 * (1 + SIGMA ** 2) + tau ** 2)))


def nearest_class(scores: np.ndarray, d: np.ndarray, k: int) -> np.ndarray:
    """``(S, N, k)`` class scores whose arg-max is the class centre d * j nearest to the score."""
    return -(scores[..., None] - d[:, None, None] * np.arange(k)) ** 2


def kappa_of_quality(d: float, proportions: np.ndarray) -> float:
    """Population quadratic kappa of a seed of quality d (arg-max of :func:`nearest_class`)."""
    k, c = len(proportions), np.sqrt(1 + SIGMA ** 2)
    edges = np.r_[-np.inf, d * (np.arange(k - 1) + 0.5), np.inf]                  # decision thresholds
    centre = d * np.arange(k)[:, None]
    confusion = proportions[:, None] * np.diff(stats.norm.cdf((edges[None] - centre) / c), axis=1)
    i, j = np.indices((k, k))
    w = (i - j) ** 2 / (k - 1) ** 2
    expected = np.outer(confusion.sum(1), confusion.sum(0))
    return float(1 - (w * confusion).sum() / (w * expected).sum())


def expected_kappa(tau: float, proportions: np.ndarray) -> float:
    """E_d[kappa(d)] by Gauss-Hermite quadrature."""
    x, w = np.polynomial.hermite_e.hermegauss(60)
    return float(sum(wi * kappa_of_quality(DELTA + tau * xi, proportions) for xi, wi in zip(x, w)) / w.sum())


def test_the_known_truth_matches_a_large_sample() -> None:
    # the analytic / quadrature truths, checked on one huge test set with the plain metrics
    rng = np.random.default_rng(1)
    labels, scores, d = simulate(rng, 1, [20000, 30000], 0.0, quality=np.array([DELTA]))
    assert roc_auc(labels, scores[0]) == pytest.approx(float(auc_of_quality(DELTA)), abs=0.005)
    sizes = np.array([25000, 15000, 10000])
    labels, scores, d = simulate(rng, 1, list(sizes), 0.0, quality=np.array([DELTA]))
    kappa = quadratic_kappa(labels, nearest_class(scores, d, 3)[0].argmax(axis=1), 3)
    assert kappa == pytest.approx(kappa_of_quality(DELTA, sizes / sizes.sum()), abs=0.01)
    seeds = rng.normal(DELTA, 0.4, 200000)
    assert auc_of_quality(seeds).mean() == pytest.approx(expected_auc(0.4), abs=0.002)
    assert np.mean([kappa_of_quality(v, sizes / sizes.sum()) for v in seeds[:4000]]) == pytest.approx(
        expected_kappa(0.4, sizes / sizes.sum()), abs=0.01)


def coverage(metric: str, n_seeds: int, tau: float, studies: int, class_sizes: list[int],
             n_boot: int = 1000) -> float:
    """Share of simulated studies whose 95 % interval holds the true expected metric."""
    rng = np.random.default_rng(2024)
    proportions = np.array(class_sizes) / sum(class_sizes)
    truth = expected_auc(tau) if metric == "auc" else expected_kappa(tau, proportions)
    hits = 0
    for study in range(studies):
        labels, scores, d = simulate(rng, n_seeds, class_sizes, tau)
        if metric == "kappa":
            scores = nearest_class(scores, d, len(class_sizes))
        lo, hi = seed_image_bootstrap(labels, scores, metric, n_boot=n_boot, seed=study)
        hits += lo <= truth <= hi
    return hits / studies


@pytest.mark.parametrize("metric, n_seeds, tau, class_sizes", [
    ("auc", 5, 0.3, [60, 40]),        # seed spread (AUC sd ~0.05) and test-set spread both matter
    ("auc", 3, 0.0, [60, 40]),        # the 100 %-labels case: test-set spread alone
    ("auc", 3, 0.3, [60, 40]),        # fine-tuning's 3 seeds
    ("kappa", 5, 0.3, [50, 30, 20]),  # 3-grade quadratic kappa
])
def test_coverage_close_to_95_percent(metric: str, n_seeds: int, tau: float, class_sizes: list[int]) -> None:
    assert 0.90 <= coverage(metric, n_seeds, tau, 400, class_sizes) <= 0.99


def test_one_seed_covers_its_own_model() -> None:
    # one seed: the interval is over test images only, about that trained model's metric
    rng = np.random.default_rng(7)
    hits = 0
    for study in range(300):
        labels, scores, d = simulate(rng, 1, [60, 40], 0.3)
        lo, hi = seed_image_bootstrap(labels, scores, "auc", n_boot=500, seed=study)
        hits += lo <= float(auc_of_quality(d[0])) <= hi
    assert 0.90 <= hits / 300 <= 0.99


# -- range, width, determinism --------------------------------------------------------------------
def test_interval_stays_inside_the_metric_range() -> None:
    # seeds that disagree wildly (kappa near +1 and near -1): the t-interval over seeds leaves
    # [-1, 1]; every bootstrap replicate is an average of attained kappas, so the interval cannot
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1, 2], 10)
    good = np.eye(3)[labels]
    reversed_ = np.eye(3)[2 - labels]
    scores = np.stack([good, reversed_, good + 0.01 * rng.random((30, 3)), reversed_])
    per_seed = [quadratic_kappa(labels, s.argmax(1), 3) for s in scores]
    t_lo, t_hi = mean_ci(np.array(per_seed))
    assert t_lo < -1 and t_hi > 1
    lo, hi = seed_image_bootstrap(labels, scores, "kappa", n_boot=500, seed=0)
    assert min(per_seed) <= lo < hi <= max(per_seed)
    # AUC: seeds near 1; the interval never passes 1 (the old one was clipped there)
    labels = np.repeat([0, 1], 30)
    scores = np.stack([labels * 3.0 + rng.normal(size=60) for _ in range(5)])
    lo, hi = seed_image_bootstrap(labels, scores, "auc", n_boot=500, seed=0)
    assert 0.9 < lo < hi <= 1.0


def test_identical_seeds_give_the_image_bootstrap() -> None:
    # at 100 % of the labels every seed may train the same model: the interval keeps the test-set
    # uncertainty (the t-interval over seeds had zero width), and equals the one-seed interval
    labels, scores, _ = simulate(np.random.default_rng(4), 1, [120, 80], 0.0)
    same = np.repeat(scores, 5, axis=0)
    assert mean_ci(np.array([roc_auc(labels, s) for s in same]))[1] - mean_ci(
        np.array([roc_auc(labels, s) for s in same]))[0] == 0
    lo, hi = seed_image_bootstrap(labels, same, "auc", seed=5)
    assert (lo, hi) == pytest.approx(seed_image_bootstrap(labels, scores, "auc", seed=5), abs=1e-12)
    d_lo, d_hi = delong_ci(labels, scores[0])                 # independent: DeLong's asymptotic interval
    assert hi - lo > 0.05
    assert lo == pytest.approx(d_lo, abs=0.02) and hi == pytest.approx(d_hi, abs=0.02)


def test_same_seed_same_interval() -> None:
    labels, scores, _ = simulate(np.random.default_rng(5), 4, [60, 40], 0.3)
    first = seed_image_bootstrap(labels, scores, "auc", seed=11)
    assert seed_image_bootstrap(labels, scores, "auc", seed=11) == first
    assert seed_image_bootstrap(labels, scores, "auc", seed=12) != first


def test_folds_and_missing_predictions() -> None:
    # k-fold: a seed's metric is the mean over its folds; a fold scored perfectly pulls the interval
    # half-way to 1; NaN scores (images a seed did not predict) are left out of that seed
    rng = np.random.default_rng(6)
    labels, scores, _ = simulate(rng, 1, [100, 100], 0.0)
    alone = np.array(seed_image_bootstrap(labels, scores, "auc", seed=0))
    doubled_labels = np.r_[labels, labels]
    doubled = np.c_[scores, doubled_labels[None, 200:] * 10.0]     # the second fold: perfect
    folds = np.repeat([[0, 1]], 200, axis=1)
    both = np.array(seed_image_bootstrap(doubled_labels, doubled, "auc", folds=folds, seed=0))
    assert both == pytest.approx((alone + 1) / 2, abs=0.03)
    missing = np.c_[scores, np.full((1, 200), np.nan)]
    assert np.array(seed_image_bootstrap(doubled_labels, missing, "auc", seed=0)) == pytest.approx(alone, abs=0.03)


# -- the comparison table of a sweep ----------------------------------------------------------------
def write_fake_sweep(path, tasks, inits: list[str], fractions: list[float], seeds: list[int],
                     n_test: int = 60, seed: int = 0) -> None:
    """A run directory with what a transfer sweep leaves for its comparison: ``results.csv`` and one
    prediction file per (task, init, fraction, seed) on shared test images; at fraction 1.0 every
    seed has the same training set, so the same predictions."""
    from retinassl.io.results import append_results, result_row

    rng = np.random.default_rng(seed)
    ids = [f"img{k:03d}" for k in range(n_test)]
    rows = []
    for task in tasks:
        k = 5 if task.kind == "multiclass" else 1
        labels = rng.integers(0, k, n_test) if k > 1 else (np.arange(n_test) % 5 < 2).astype(int)
        z = rng.normal(size=n_test)
        for n_init, init in enumerate(inits):
            for fraction in fractions:
                for s in seeds:
                    draw = np.random.default_rng([seed, n_init, int(fraction * 1000), 0 if fraction == 1.0 else s])
                    d = 0.5 + fraction + 0.2 * n_init + draw.normal(0, 0.3)
                    score = d * labels + z + draw.normal(0, 0.7, n_test)
                    scores = score if k == 1 else np.exp(-(score[:, None] - d * np.arange(k)) ** 2)
                    if k > 1:
                        scores = scores / scores.sum(axis=1, keepdims=True)
                    folder = path / "predictions" / "transfer" / task.name / "probe" / init
                    folder.mkdir(parents=True, exist_ok=True)
                    task.prediction_frame(ids, labels, scores).to_csv(folder / f"f{fraction:g}-s{s}.csv", index=False)
                    rows += [result_row(experiment="fake", task=task.name, init=init, protocol="probe",
                                        fraction=fraction, seed=s, metric=m, value=v)
                             for m, v in task.metrics(labels, scores).items()]
    append_results(path / "results.csv", rows)


def test_comparison_uses_one_interval_for_every_cell(tmp_path) -> None:
    from retinassl.metrics.compare import comparison, markdown_tables
    from retinassl.metrics.intervals import METHOD, METHOD_SENTENCE
    from retinassl.metrics.tasks import TaskSpec

    tasks = [TaskSpec(name="referable", kind="binary"),
             TaskSpec(name="grade", kind="multiclass", label="dr_grade", positive_from=2, num_classes=5)]
    write_fake_sweep(tmp_path, tasks, ["scratch", "other"], [0.1, 1.0], [0, 1, 2])
    write_fake_sweep(tmp_path / "one", tasks, ["scratch", "other"], [0.1], [0])
    table = comparison(tmp_path, tasks, "scratch", n_boot=500)
    assert set(table["metric"]) == {"auc", "kappa", "auc_bin"} and len(table) == 3 * 2 * 2
    assert (table["interval"] == METHOD).all()
    assert (table["lo"] < table["hi"]).all()                      # also at 1.0, where all seeds agree
    auc = table["metric"].str.startswith("auc")
    assert table.loc[auc, "lo"].ge(0).all() and table.loc[auc, "hi"].le(1).all()
    assert table.loc[~auc, "lo"].ge(-1).all() and table.loc[~auc, "hi"].le(1).all()
    identical = table[table["fraction"] == 1.0]
    # identical seeds: the interval is the image bootstrap of the one model, so it holds its metric
    assert ((identical["lo"] <= identical["mean"]) & (identical["mean"] <= identical["hi"])).all()
    assert table.loc[(table["init"] == "other") & auc, "p"].between(0, 1).all()   # DeLong p kept
    assert comparison(tmp_path, tasks, "scratch", n_boot=500).equals(table)        # deterministic
    single = comparison(tmp_path / "one", tasks, "scratch", n_boot=500)            # one seed: same method
    assert (single["interval"] == METHOD).all() and (single["n_seeds"] == 1).all()
    text = markdown_tables(table, ["scratch", "other"])
    assert f"95 % interval: {METHOD}" in text and METHOD_SENTENCE in text
