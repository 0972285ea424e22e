"""``python -m vast.train`` (and ``torchrun -m vast.train``)."""

from vast.train.cli import exit_if_torchrun_worker, main

raise SystemExit(exit_if_torchrun_worker(main()))
