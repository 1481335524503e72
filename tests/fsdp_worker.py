"""Run several `layra train` cases in one multi-process launch (tests/test_fsdp.py).

    ACCELERATE_USE_CPU=1 ACCELERATE_USE_FSDP=true torchrun --standalone --nproc_per_node 2 \
        tests/fsdp_worker.py CASES.json

CASES.json is a list of {"overrides": [...], "stop_after_step": int | null, "resume": bool}.
One launch for all cases: starting processes and importing torch dominate a tiny run.
"""

import json
import sys

from layra.config import load_config
from layra.train import train


def main(path: str) -> None:
    import torch.distributed as dist

    from layra.distributed import sync_ranks

    sync_ranks()  # sets up the process group
    for case in json.loads(open(path).read()):
        # Start each case together: rank 0 creates the output directory, and a rank still
        # finishing the previous case would find it and refuse (prepare_run_dir).
        dist.barrier()
        cfg = load_config(None, case["overrides"])
        stop = case.get("stop_after_step")
        train(
            cfg,
            resume=case.get("resume", False),
            progress=False,
            should_stop=None if stop is None else (lambda done, stop=stop: done == stop),
        )


if __name__ == "__main__":
    main(sys.argv[1])
