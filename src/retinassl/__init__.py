"""retinassl: label-efficient deep learning on retinal images.

Self-supervised, cross-modal and disease-specific pretraining of encoders, a patch-based
semi-supervised GAN classifier, and the transfer-evaluation protocol of the field.
"""

__version__ = "0.1.0"
