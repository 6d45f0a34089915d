"""`python -m jshear.train --config=configs/NAME.py --workdir=DIR [--config.KEY=VALUE ...]`

The same program on one CPU and on a multi-host cluster: stages listed in the config run in
order and resume where they stopped.
"""

from __future__ import annotations

from jshear import hostmem

if __name__ == "__main__":
  hostmem.reexec_with_huge_pages()

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, outputs).")


def _run(config, workdir):
  from jshear.train.pipeline import run  # after the --workdir check: a refusal is quick
  return run(config, workdir)


def main(argv):
  del argv
  from jshear.cli import run_in_workdir  # imports after flag parsing keep --help fast
  summary = run_in_workdir(_run, _CONFIG.value, _WORKDIR.value)
  from jshear.train.summary import print_summary
  print_summary(summary)
  return 0


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  from jshear.cli import parse_flags
  app.run(main, flags_parser=parse_flags)
