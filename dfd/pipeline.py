"""tf.data settings shared by the training input pipeline and batch scoring.

Both decode images in Python (``tf.numpy_function``) while a model runs beside them on the same cores. With
tf.data's autotuner on, that combination left the decode workers idle about half the time in many runs: the
same CPU work in twice the wall time (15 of 24 scoring runs at half speed, and lfw training at 137-177 against
245-248 images/s; bench/score_throughput.py and the closing notes). A fixed pipeline (one worker per core, a
prefetch of two batches, autotuner off) runs at full speed every time.
"""

from __future__ import annotations

import os
from typing import Any

PREFETCH_BATCHES = 2


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def fixed(ds: Any) -> Any:
    """``ds`` with tf.data's autotuner turned off (see the module docstring)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)
