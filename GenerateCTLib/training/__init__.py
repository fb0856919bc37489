"""Training of the three GenerateCT stages (CT-ViT tokenizer, MaskGIT transformer, SR diffusion Unet).

Modules: :mod:`.data` (CT-RATE-style folders), :mod:`.losses` (all losses, outside the networks),
:mod:`.common` (configs, checkpoints, accelerate), :mod:`.train_tokenizer`, :mod:`.train_transformer`,
:mod:`.train_superres` (the loops), :mod:`.tiny_t5` (small text encoders for demo bundles) and :mod:`.cli`
(``generatect train ...``). Nothing heavy is imported here.
"""
