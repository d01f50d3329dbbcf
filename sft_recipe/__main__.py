"""`python -m sft_recipe` and `accelerate launch -m sft_recipe`."""

import sys

from .cli import main

sys.exit(main())
