"""The OpenMP runtime settings convgen applies for itself, so users need not know them.

libgomp's workers spin for a while after a parallel region (GOMP_SPINCOUNT iterations,
300000 by default: tens of milliseconds here), then sleep in the kernel. Waking a
sleeping worker on a VM can take milliseconds -- measured here: a 0.33 ms layer took
7.7 ms when called after 100 ms of idleness. convgen therefore asks for a longer spin
(GOMP_SPINCOUNT=3000000: a few hundred milliseconds) so calls that follow one another
within that window never pay the wake-up, while an idle process still goes quiet soon.

libgomp reads its environment once, when it is loaded, so this only takes effect when
convgen is imported before anything loads an OpenMP runtime (torch does, at import) and
when the user has set neither OMP_WAIT_POLICY nor GOMP_SPINCOUNT (theirs always win).
"""
from __future__ import annotations

import os

SPIN_COUNT = "3000000"


def openmp_loaded() -> bool:
    """Whether an OpenMP runtime is already mapped into this process."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return any("libgomp" in line or "libiomp" in line for line in maps)
    except OSError:
        return False


def configure() -> str:
    """Apply convgen's spin setting if it can still take effect; say what happened."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return "user settings kept"
    if openmp_loaded():
        return "an OpenMP runtime was already loaded; its settings stay"
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    return f"GOMP_SPINCOUNT={SPIN_COUNT}"


STATUS = configure()
