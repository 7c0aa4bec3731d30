"""Where convgen's own files live: the templates, found from a checkout or an installed wheel."""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent   # convgen/


def templates_dir() -> Path:
    # An installed wheel carries the top-level templates/ as convgen/_templates;
    # a source checkout (editable install, or PYTHONPATH) has them beside the package.
    for candidate in (_PACKAGE / "_templates", _PACKAGE.parent / "templates"):
        if (candidate / "cpu").is_dir():
            return candidate
    raise FileNotFoundError(
        f"convgen's templates were not found next to {_PACKAGE}; the installation is incomplete"
    )


def package_dir() -> Path:
    return _PACKAGE
