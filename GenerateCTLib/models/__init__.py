"""Model bundles shipped with the package.

``demo/`` is the demonstration bundle trained on synthetic chest phantoms by ``scripts/train_demo.py`` (see
the model card in the README): a demonstration model, not a medical model.
"""

from __future__ import annotations

from pathlib import Path

DEMO_NAME = "demo"


def demo_bundle_dir() -> Path:
    """The bundled demo model's folder (it may be absent in a source checkout before training)."""
    return Path(__file__).parent / DEMO_NAME
