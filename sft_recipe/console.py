"""What reaches the terminal: our lines, not the libraries' chatter.

A first run is judged by its console. Our own messages go through the `sft_recipe` logger at INFO;
everything else (transformers, datasets, matplotlib, ...) reaches the console only at WARNING and
above, and the few warnings that are not news (see `NOT_NEWS`) are dropped. The raw metric dicts
go to the `sft_recipe.metrics` logger at DEBUG, shown with `--verbose`. Nothing here imports a
heavy library at module top: `cli.py` imports this module for every command, `--help` included.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import warnings

METRICS_LOGGER = "sft_recipe.metrics"  # raw log dicts, DEBUG: on the console only with --verbose
# Library messages a user can do nothing about, by logger and message pattern.
NOT_NEWS: dict[str, re.Pattern[str]] = {
    # Tied weights (lm_head = embeddings) are not saved twice; loading the best checkpoint then
    # "misses" the head, which is tied back to the loaded embeddings: nothing is lost.
    "transformers.trainer": re.compile(r"There were missing keys in the checkpoint model loaded: "
                                       r"\['lm_head\.weight'\]"),
    # Checkpoint rotation sorts by step number when file times are coarse: the right order anyway.
    "transformers.trainer_utils": re.compile(r"mtime may not be reliable on this filesystem"),
}


class DropNotNews(logging.Filter):
    """A logger filter that drops one library message that reads like an error but is not."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def interactive() -> bool:
    """A terminal watches stderr: live bars are welcome. Otherwise (CI, `| tee`, a log file):
    plain lines, no carriage returns."""
    return sys.stderr.isatty()


def configure_logging(verbose: bool = False) -> None:
    """Our INFO lines on stdout; libraries at WARNING, minus the messages that are not news.

    `force`: each call writes to the current sys.stdout (in-process callers and tests swap it).
    """
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout, force=True)
    logging.getLogger("sft_recipe").setLevel(logging.INFO)
    logging.getLogger(METRICS_LOGGER).setLevel(logging.DEBUG if verbose else logging.INFO)
    # Its "Failed to load JSON" line is replaced by data/load.py's diagnosis with a line number.
    logging.getLogger("datasets.packaged_modules.json.json").setLevel(logging.CRITICAL)
    for name, pattern in NOT_NEWS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropNotNews) for f in logger.filters):
            logger.addFilter(DropNotNews(pattern))
    # matplotlib logs "generated new fontManager" at INFO the first time it runs: not news.
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging  # transformers has its own root handler

    hf_logging.set_verbosity_warning()
    if not interactive():
        quiet_progress_bars()
    if os.environ.get("RANK", "0") != "0":  # several processes: their messages once, from the main one
        with contextlib.redirect_stdout(io.StringIO()):  # transformers prints "[INFO] Running in WANDB offline
            import transformers.integrations.integration_utils  # noqa: F401  mode" when it is imported
        logging.getLogger().setLevel(logging.ERROR)
        logging.getLogger("sft_recipe").setLevel(logging.ERROR)
        hf_logging.set_verbosity_error()
        warnings.filterwarnings("ignore")


def quiet_progress_bars() -> None:
    """No library progress bars: datasets' per-step bars, transformers' "Writing model shards"."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()

