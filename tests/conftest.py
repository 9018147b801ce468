"""Suite-wide settings.

One intra-op thread: the tests use tiny models, for which OpenMP synchronisation costs more
than it gains (up to 8x slower with two threads on a busy 2-core machine), and one thread
makes timings of the whole suite predictable.
"""

import os

import torch

os.environ.setdefault("PROJPRUNE_NO_TQDM", "1")
torch.set_num_threads(1)
