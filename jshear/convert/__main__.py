"""`python -m jshear.convert {import-hf,export-hf,from-gguf} ...`"""

from __future__ import annotations

import argparse
import sys

from jshear.config_check import EXPORT_DTYPES
from jshear.errors import JShearError


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m jshear.convert", description=__doc__)
  sub = p.add_subparsers(dest="cmd", required=True)
  a = sub.add_parser("import-hf", help="HF safetensors dir -> jshear model dir (Orbax)")
  a.add_argument("hf_dir")
  a.add_argument("out_ckpt")
  a.add_argument("--overwrite", action="store_true")
  a.add_argument("--allow-pickle", action="store_true",
                 help="also read pytorch_model*.bin pickle checkpoints (only if you trust them)")
  e = sub.add_parser("export-hf", help="jshear model dir -> HF dir (safetensors + config)")
  e.add_argument("ckpt")
  e.add_argument("out_dir")
  e.add_argument("--dtype", choices=[d for d in EXPORT_DTYPES if d], default=None,
                 help="cast on export (default: keep the checkpoint's dtype)")
  e.add_argument("--overwrite", action="store_true")
  g = sub.add_parser("from-gguf", help="GGUF file -> HF dir, through transformers' loader")
  g.add_argument("gguf")
  g.add_argument("out_hf_dir")
  g.add_argument("--overwrite", action="store_true")
  args = p.parse_args(argv)
  try:
    if args.cmd == "import-hf":
      from jshear.convert.hf_import import import_hf
      out = import_hf(args.hf_dir, args.out_ckpt, args.overwrite, args.allow_pickle)
    elif args.cmd == "export-hf":
      from jshear.convert.hf_export import export_model_dir
      out = export_model_dir(args.ckpt, args.out_dir, args.dtype, args.overwrite)
    else:
      from jshear.convert.gguf import gguf_to_hf
      out = gguf_to_hf(args.gguf, args.out_hf_dir, overwrite=args.overwrite)
  except JShearError as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  print(out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
