"""What the config-file entry points (train, compare) share: logging, the --workdir check,
and turning a JShearError into one clear line and exit code 2."""

from __future__ import annotations

import logging
import sys

from jshear.errors import JShearError


def run_in_workdir(fn, config, workdir):
  """fn(config, workdir) -> result; exits 2 with the error's message on bad input."""
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  if workdir is None:
    print("error: --workdir is required", file=sys.stderr)
    sys.exit(2)
  try:
    return fn(config, workdir)
  except JShearError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
