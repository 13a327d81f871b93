"""The synthetic dataset as a source: generated once per set of options, then reused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from retinassl.atomic import file_lock, write_text
from retinassl.data.limits import MIN_IMAGE_SIDE, check_budget, synthetic_cost
from retinassl.data.manifest import Manifest
from retinassl.errors import ConfigError


def _check_request(n_images: int, size: int, prevalence: float, with_oct: bool, out: Path,
                   options: dict[str, Any]) -> None:
    """Refuse impossible or oversized synthetic datasets before generating anything."""
    if n_images < 1:
        raise ConfigError(f"data.options.n_images must be at least 1, got {n_images}")
    if size < MIN_IMAGE_SIDE:
        raise ConfigError(f"data.options.size must be at least {MIN_IMAGE_SIDE} px, got {size}")
    if not 0.0 <= prevalence <= 1.0:
        raise ConfigError(f"data.options.prevalence must be in [0, 1], got {prevalence}")
    voxels = 0
    if with_oct:
        from retinassl.data.synthetic_oct import DEFAULT_SHAPE

        shape = options.get("oct_shape", DEFAULT_SHAPE)
        voxels = int(shape[0]) * int(shape[1]) * int(shape[2])
    memory, disk = synthetic_cost(n_images, size, workers=int(options.get("workers", 1)),
                                  oct_voxels=voxels)
    check_budget(f"a synthetic dataset of {n_images} images of {size} px",
                 "data.options.n_images or data.options.size", memory=memory, disk=disk,
                 disk_path=out)


def load_synthetic(out_dir: str | Path | None = None, n_images: int = 200, size: int = 512,
                   prevalence: float = 0.5, seed: int = 0, with_oct: bool = False,
                   **options: Any) -> Manifest:
    """Synthetic fundus images with exact lesion/vessel masks (and paired OCT); generated on first use.

    Args:
        out_dir: where to write the dataset (default: ``<cache>/synthetic/<hash of the options>``).
        n_images, size, prevalence, seed, with_oct, **options: see
            :func:`retinassl.data.synthetic.generate_dataset`.

    Raises:
        ConfigError: ``n_images`` below 1, ``size`` below 16 px, ``prevalence`` outside [0, 1], or
            a dataset whose estimated memory or disk need exceeds the machine's
            (:func:`~retinassl.data.limits.check_budget`; ``RETINASSL_ALLOW_LARGE=1`` overrides).
    """
    from retinassl.data.cache import default_cache_dir
    from retinassl.data.synthetic import GENERATOR_VERSION, generate_dataset

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
        _check_request(n_images, size, prevalence, with_oct, out, options)
        manifest = generate_dataset(out, **settings)
        write_text(done, json.dumps(record))
    return manifest
