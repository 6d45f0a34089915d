"""The data tools on a prepared dir, one subcommand each (`python -m jshear.data CMD -h`):

  stats DIR                       per-domain token entropies and the mixtures they imply
  mixlaw fit|optimize ...         BiMix's per-domain mixing law, fitted on short runs
  score --model=M --data=D ...    a reference model's mean NLL for every row / document
  select --scores=S --band=...    a perplexity-selected view of a prepared dir

Preparing the dir itself is `python -m jshear.data.prepare`. Bad input: one line, exit 2.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> the module whose main(argv) -> int runs it
COMMANDS = {"stats": "jshear.data.stats", "mixlaw": "jshear.data.mixlaw",
            "score": "jshear.data.score", "select": "jshear.data.select"}


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] in ("-h", "--help"):
    print(__doc__.strip())
    return 0 if argv else 2
  cmd, rest = argv[0], argv[1:]
  if cmd not in COMMANDS:
    print(f"error: python -m jshear.data: unknown command {cmd!r} (known: {', '.join(COMMANDS)})",
          file=sys.stderr)
    return 2
  return importlib.import_module(COMMANDS[cmd]).main(rest)


if __name__ == "__main__":
  sys.exit(main())
