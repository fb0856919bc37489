"""Stage 3: text-conditional diffusion super-resolution (128² → 512² per axial slice).

* :mod:`.layers` — the building blocks of the SR Unet (resnet blocks with cross-attention and
  global-context gating, Perceiver text pooling, time embeddings, pixel-(un)shuffle resampling).
* :mod:`.unet` — :class:`SuperResolutionUnet` and its config, weights-compatible with the released
  ``superres_pretrained.pt`` (the imagen-pytorch 1.21.6 SR Unet vendored by GenerateCT).
* :mod:`.diffusion_scheduler` — the continuous-time Gaussian diffusion (cosine log-SNR, v-prediction,
  dynamic thresholding, ancestral posterior) and the low-resolution noise augmentation.
* :mod:`.sampling` — batched slice denoising with a replayable random-draw order.
"""
