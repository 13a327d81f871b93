"""Every trainable method, one module and one registry entry each.

Importing this package (or any module in it) imports every method module, which registers it, so
:func:`~retinassl.methods.base.method_names` always lists all of them: the pretext tasks, SimCLR, masked-autoencoder pretraining,
supervised classification, cross-modal thickness regression, the patch SSL-GAN, vessel segmentation
and OCT layer segmentation.
"""

from retinassl.methods import supervised  # noqa: F401
from retinassl.methods import autoencoder, inpainting, offset_heatmap, relative_position, rotation, simclr  # noqa: F401
from retinassl.methods import cross_modal, mae, oct_layers, ssl_gan, vessel_segmentation  # noqa: F401
