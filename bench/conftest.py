"""pytest-benchmark runs from bench/: make anchors.py importable and keep the user's cache."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
