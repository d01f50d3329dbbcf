"""`python -m sft_recipe` and `accelerate launch -m sft_recipe`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
