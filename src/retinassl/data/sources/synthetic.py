"""The synthetic dataset as a source: generated once per set of options, then reused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ...atomic import file_lock, write_text
from ..manifest import Manifest


def load_synthetic(out_dir: str | Path | None = None, n_images: int = 200, size: int = 512,
                   prevalence: float = 0.5, seed: int = 0, with_oct: bool = False,
                   **options: Any) -> Manifest:
    """Synthetic fundus images with exact lesion/vessel masks (and paired OCT); generated on first use.

    Args:
        out_dir: where to write the dataset (default: ``<cache>/synthetic/<hash of the options>``).
        n_images, size, prevalence, seed, with_oct, **options: see
            :func:`retinassl.data.synthetic.generate_dataset`.
    """
    from ..cache import default_cache_dir
    from ..synthetic import GENERATOR_VERSION, generate_dataset

    settings = {"n_images": n_images, "size": size, "prevalence": prevalence, "seed": seed,
                "with_oct": with_oct, **options}
    if out_dir is None:
        # the generator version is part of the key: a changed generator never serves stale data
        key = hashlib.sha256(json.dumps([GENERATOR_VERSION, settings], sort_keys=True,
                                        default=str).encode()).hexdigest()[:12]
        out_dir = default_cache_dir() / "synthetic" / key
    out = Path(out_dir)
    done = out / "complete.json"
    record = json.loads(json.dumps({"generator": GENERATOR_VERSION, **settings}, default=str))
    with file_lock(out.with_name(out.name + ".generate")):
        if done.is_file() and json.loads(done.read_text()) == record:
            return Manifest.load(out / "manifest.csv")
        manifest = generate_dataset(out, **settings)
        write_text(done, json.dumps(record))
    return manifest
