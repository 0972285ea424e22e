"""``python -m vast.train`` (and ``torchrun -m vast.train``)."""

from vast.train.cli import main

raise SystemExit(main())
