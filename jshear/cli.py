"""What the config-file entry points (train, compare) share: logging, the --workdir check,
and turning a JShearError into one clear line and exit code 2."""

from __future__ import annotations

import ast
import logging
import re
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


def parse_flags(argv):
  """absl's flag parsing, with a misspelt `--config.KEY` reported as one line and exit 2
  (ml_collections raises it as an AttributeError / KeyError from deep inside absl)."""
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as err:
    msg = err.args[0] if err.args else err
    while not isinstance(msg, str) or msg[:1] in "'\"":  # a KeyError's repr, maybe nested
      try:
        msg = ast.literal_eval(msg) if isinstance(msg, str) else str(msg)
      except (ValueError, SyntaxError):
        break
      if isinstance(msg, KeyError):
        msg = msg.args[0]
    key = msg.split("\n")[0].strip("'\"")
    flag = next((a.split("=")[0] for a in argv[1:]
                 if a.startswith("--config.") and re.search(rf"\b{re.escape(key)}\b", a)), None)
    hint = " ".join(line.strip() for line in msg.split("\n")[1:] if line.strip())
    print(f"error: unknown config key {flag or key!r}" + (f": {hint}" if hint else ""),
          file=sys.stderr)
    sys.exit(2)
  except flags.Error as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
