"""A non-editable install works: the wheel carries the templates and runs from anywhere."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, numpy as np, convgen
from convgen.core.paths import templates_dir
y = convgen.conv_transpose2d(np.ones((1, 2, 3, 3)), np.ones((2, 1, 2, 2)), stride=2)
print(json.dumps({"module": convgen.__file__, "templates": str(templates_dir()),
                  "sum": float(y.sum())}))
"""


def test_wheel_installs_and_finds_its_templates(tmp_path):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(wheels), str(ROOT)], check=True,
                   capture_output=True)
    (wheel,) = wheels.glob("convgen-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(wheel)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site), "CONVGEN_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", CHILD], cwd=tmp_path, env=env,
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    assert result["module"].startswith(str(site))
    assert result["templates"] == str(site / "convgen" / "_templates")
    assert result["sum"] == 2 * 3 * 3 * 4   # every input value spread over the 2x2 taps
