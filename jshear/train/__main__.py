"""`python -m jshear.train --config=configs/NAME.py --workdir=DIR [--config.KEY=VALUE ...]`

The same program on one CPU and on a multi-host cluster: stages listed in the config run in
order and resume where they stopped.
"""

from __future__ import annotations

import json
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from jshear.errors import JShearError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, outputs).")


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  if _WORKDIR.value is None:
    print("error: --workdir is required", file=sys.stderr)
    return 2
  from jshear.train.pipeline import run  # after flag parsing: keeps --help fast
  from jshear.train.summary import print_summary
  try:
    summary = run(_CONFIG.value, _WORKDIR.value)
  except JShearError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
  print_summary(summary)
  return 0


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
