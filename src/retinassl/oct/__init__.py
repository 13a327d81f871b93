"""OCT: readers, layer segmentation, retinal-thickness maps, and the data of cross-modal
pretraining (DeepRT, Holmberg et al. 2020).

- :mod:`.volume` the :class:`~.volume.OCTVolume` every reader returns; :mod:`.identity` salted
  patient keys (identifiers are read only to be hashed).
- readers: :mod:`.dicom` (Spectralis DICOM exports, pydicom), :mod:`.heyex` (HEYEX .vol/.xml, eyepy),
  :mod:`.stack` (.npy/.tif + JSON sidecar), :mod:`.bscan_images` (single B-scan image files, pixel
  spacing as stated), dispatched by :func:`.read.read_volume`;
  :mod:`.dicom_write` writes test exports; :mod:`.synthetic` turns synthetic OCTs into volumes.
- layers: :mod:`.layers` (boundaries <-> masks <-> polylines), :mod:`.boundaries` (continuous
  boundary extraction from probabilities), :mod:`.layerseg` (the U-Net method ``oct-layers`` and its
  saved model), :mod:`.train_layers` (``retinassl oct train-seg``); :mod:`.graph_search`
  (annotation-free ILM/BM by graph search on directional gradients; its parameters in
  :mod:`.graph_search_config`, quality flags per B-scan in :mod:`.boundary_quality`).
- thickness: :mod:`.thickness` (per A-scan, maps on the fundus field, ETDRS, fovea, DeepRT's
  total-variation quality), :mod:`.pipeline` (``retinassl oct thickness``), :mod:`.figures`;
  :mod:`.bscan_thickness` (profile, central and maximum thickness along B-scans, per eye).
- cross-modal: :mod:`.paired` (fundus + registered map pairs), :mod:`.cross_modal_run`
  (``retinassl oct pretrain``); the method itself is :mod:`retinassl.methods.cross_modal`.
"""
