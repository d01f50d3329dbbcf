"""What the prepared-rows cache saves: the same recipe prepared twice, cold then warm.

    python benchmarks/prepared_cache.py --rows 100000 [--tokenizer ../shared/data/gpt2-tokenizer]

GSM8K Alpaca rows repeated to `--rows`, written to a JSON-lines file; `prepare_data` (load,
validate, split, tokenize, as `train` and `preprocess` run it) twice in one process with a fresh
`SFT_RECIPE_CACHE`, and the datasets cache off so that the first run really tokenizes. Prints both
times and the ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--tokenizer", type=Path, default=SHARED / "gpt2-tokenizer")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        os.environ.update(SFT_RECIPE_CACHE=str(Path(tmp) / "cache"), HF_HUB_OFFLINE="1",
                          HF_DATASETS_CACHE=str(Path(tmp) / "hf"))
        import datasets

        from sft_recipe.data.prepare import prepare_data
        from sft_recipe.model.load import load_tokenizer
        from sft_recipe.recipe.config import SFTConfig

        datasets.disable_caching()
        datasets.disable_progress_bars()
        logging.basicConfig(level=logging.WARNING)
        source = json.loads((SHARED / "gsm8k_alpaca.json").read_text())
        rows = (source * (args.rows // len(source) + 1))[: args.rows]
        data = Path(tmp) / "rows.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        config = SFTConfig(dataset=str(data), model_name="unused", max_length=512, callbacks=[])
        times = []
        for _ in range(2):
            start = time.perf_counter()
            prepared = prepare_data(config, load_tokenizer(str(args.tokenizer)))
            times.append(time.perf_counter() - start)
        print(f"{args.rows} rows: first run {times[0]:.1f} s (tokenized {len(prepared.train)} train rows), "
              f"second run {times[1]:.1f} s (reused): {times[0] / times[1]:.0f}x faster")


if __name__ == "__main__":
    main()
