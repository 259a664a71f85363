"""`safetune demo mpo` over many seeds and thread counts: bench/demo_sweep.py with `--demo mpo`.

Run as: .venv/bin/python bench/demo_mpo_sweep.py --seeds 0-9 --threads 1,2 --jobs 2 --out runs/demo-mpo-sweep
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo_sweep import main

if __name__ == "__main__":
    main(["--demo", "mpo", "--out", "runs/demo-mpo-sweep", *sys.argv[1:]])
