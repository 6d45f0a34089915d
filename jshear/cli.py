"""What the config-file entry points (train, compare) share: logging, the --workdir and
--config checks, and turning a JShearError into one clear line and exit code 2."""

from __future__ import annotations

import ast
import logging
import os
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
  problem = workdir_problem(workdir)
  if problem:
    print(f"error: --workdir={workdir}: {problem}", file=sys.stderr)
    sys.exit(2)
  try:
    return fn(config, workdir)
  except JShearError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


def workdir_problem(workdir: str) -> str | None:
  """Why `workdir` cannot be a run directory (None: it is one, or can be made)."""
  path = os.path.abspath(workdir)
  if os.path.exists(path):
    return None if os.path.isdir(path) else "exists and is not a directory"
  parent = os.path.dirname(path)
  while parent != os.path.dirname(parent) and not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    return f"cannot be made: {parent} is not a directory"
  return None


def _config_file_failed(err, name: str = "config"):
  """A config file flag that did not load (ml_collections keeps the IOError for later, as a
  placeholder config, or raises it from a --config.KEY override): one line, exit 2."""
  text = str(err)
  reason = re.findall(r"\[Errno \d+\] ([^\n]*)", text)
  print(f"error: --{name}: cannot load the config file: "
        f"{reason[-1] if reason else text.splitlines()[-1].strip()}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv):
  """absl's flag parsing, with a misspelt `--config.KEY` and a --config file that does not
  load reported as one line and exit 2 (ml_collections raises the first as an
  AttributeError / KeyError from deep inside absl, and the second only when the config is
  first used)."""
  from absl import flags
  try:
    rest = flags.FLAGS(argv)
  except OSError as err:  # raised by a --config.KEY override of a file that did not load
    _config_file_failed(err)
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
  for name in list(flags.FLAGS):
    value = flags.FLAGS[name].value
    if type(value).__name__ == "_ErrorConfig":  # ml_collections' placeholder for a failed load
      _config_file_failed(vars(value).get("_error", ""), name)
  return rest
