"""``python -m lipschitz_rnn ...`` runs the command line (so ``torchrun -m lipschitz_rnn`` works)."""

import sys

from .cli import main

sys.exit(main())
