"""Semi-supervised patch classification: the patch SSL-GAN of Lecouat et al. 2018 and the
image-level aggregation of patch predictions (importing the package registers ``ssl-gan``)."""

from . import patch_gan  # noqa: F401
