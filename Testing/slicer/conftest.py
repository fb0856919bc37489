"""Tests of the 3D Slicer module that run without Slicer (static API checks, the .ui in plain Qt, CMake lists)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # api_check, ui_render
