"""t-SNE maps of encoder embeddings, coloured by label.

van der Maaten & Hinton 2008 (t-SNE); Jang et al. 2024: "To visualize how embeddings differ
between general models and fundus-specific pre-trained models, t-distributed stochastic neighbor
embedding (t-SNE) was used." The embeddings are standardised and reduced to at most 50 principal
components before scikit-learn's ``TSNE`` (seeded, PCA initialisation), the usual practice for
high-dimensional features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits


def tsne(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """``(N, C)`` embeddings -> ``(N, 2)`` t-SNE coordinates (perplexity capped at ``(N - 1) / 3``)."""
    x = np.asarray(features, dtype=np.float64)
    if len(x) < 4:
        raise ValueError(f"t-SNE needs at least 4 points, got {len(x)}")
    x = StandardScaler().fit_transform(x)
    x = np.nan_to_num(x)
    components = min(50, x.shape[0] - 1, x.shape[1])
    if x.shape[1] > components:
        x = PCA(components, random_state=seed).fit_transform(x)
    perplexity = float(min(perplexity, max(1.0, (len(x) - 1) / 3)))
    with threadpool_limits(limits=1):  # small problem; spinning BLAS/OpenMP threads cost more
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def tsne_figure(features: np.ndarray, labels: np.ndarray, path: str | Path, title: str = "",
                seed: int = 0, label_names: dict[int, str] | None = None) -> Path:
    """Scatter plot of the t-SNE of ``features`` coloured by integer ``labels``; returns the PNG."""
    from retinassl.figures.plots import plt, save_figure

    xy = tsne(features, seed)
    labels = np.asarray(labels)
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    classes = np.unique(labels)
    cmap = plt.get_cmap("viridis" if len(classes) > 2 else "coolwarm")
    for n, c in enumerate(classes):
        hit = labels == c
        colour = cmap(n / max(1, len(classes) - 1))
        name = (label_names or {}).get(int(c), str(c))
        ax.scatter(xy[hit, 0], xy[hit, 1], s=9, color=colour, label=f"{name} ({int(hit.sum())})",
                   alpha=0.8, linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=1.5, loc="best")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)
