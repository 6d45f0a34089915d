"""Asset cache: atomic/idempotent builds, corpus text helpers, and the real cached assets.

Tests on real assets call the fetch functions: on a machine that ran
`python -m jshear.assets fetch` they only stat the cache; on a fresh one they build it.
"""

import gzip
import hashlib
import json
import os
import struct
from pathlib import Path

import pytest

from jshear import assets
from jshear.assets import corpus
from jshear.data import corpus as corpus_files
from jshear.errors import JShearError


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv("JSHEAR_CACHE", str(tmp_path / "cache"))
  return tmp_path / "cache"


def _leftovers(parent: Path) -> list[str]:
  return sorted(p.name for p in parent.iterdir() if p.name.endswith((".partial", ".old")))


# ---- cache layout -------------------------------------------------------------------------
def test_cache_root_follows_env(cache):
  assert assets.cache_root() == cache


def test_ensure_builds_once(cache):
  calls = []

  def build(tmp):
    calls.append(tmp)
    (tmp / "x.txt").write_text("done")

  final = cache / "a" / "thing"
  assert assets.ensure(final, build) == str(final)
  assert assets.ensure(final, build) == str(final)
  assert len(calls) == 1
  assert (final / "x.txt").read_text() == "done"
  assert _leftovers(final.parent) == []


def test_failed_build_leaves_nothing_and_retries(cache):
  final = cache / "thing"

  def broken(tmp):
    (tmp / "half.txt").write_text("half")
    raise RuntimeError("network down")

  with pytest.raises(RuntimeError):
    assets.ensure(final, broken)
  assert not final.exists()
  assert _leftovers(cache) == []
  assets.ensure(final, lambda tmp: (tmp / "ok").write_text("1"))
  assert (final / "ok").read_text() == "1"


def test_interrupted_build_is_not_complete_and_is_cleaned(cache):
  # A killed process leaves its temp dir behind; it must neither count nor linger.
  cache.mkdir()
  stale = cache / ".thing.abc123.partial"
  stale.mkdir()
  (stale / "half.txt").write_text("half")
  built = []
  assets.ensure(cache / "thing", lambda tmp: built.append(1))
  assert built == [1] and not stale.exists()


def test_fetch_all_rejects_unknown_asset(cache):
  with pytest.raises(JShearError, match="unknown asset"):
    assets.fetch_all(("weights",))
  assert assets.main(["fetch", "--only", "weights"]) == 1


def test_gguf_to_hf_refuses_bad_input(tmp_path):
  from jshear.convert.gguf import gguf_to_hf
  fake = tmp_path / "m.gguf"
  fake.write_bytes(b"PK\x03\x04 not a gguf")
  with pytest.raises(JShearError, match="not a GGUF file"):
    gguf_to_hf(fake, tmp_path / "out")
  with pytest.raises(JShearError, match="no such GGUF"):
    gguf_to_hf(tmp_path / "missing.gguf", tmp_path / "out")
  fake.write_bytes(b"GGUF")
  (tmp_path / "out").mkdir()
  with pytest.raises(JShearError, match="already exists"):
    gguf_to_hf(fake, tmp_path / "out")
  assert not list(tmp_path.glob(".out.*"))


# ---- corpus text helpers ------------------------------------------------------------------
def test_clean_normalizes_text():
  assert corpus.clean("\ufeffa\r\nb\rc\x00d  \n\n\n\n\ne\x0c") == "a\nb\ncd\n\ne\n"
  assert corpus.clean(" \n\n") == ""


def test_select_is_capped_deterministic_and_order_preserving():
  docs = [(f"f{i:03d}", "x" * (250 + i)) for i in range(200)]
  a = corpus.select(docs, cap=10_000)
  assert a == corpus.select(list(docs), cap=10_000)
  assert 0 < sum(len(t) for _, t in a) <= 10_000
  assert [o for o, _ in a] == sorted(o for o, _ in a)
  # Thinning is by path hash, so a smaller cap keeps a subset (picks do not reshuffle).
  assert {o for o, _ in corpus.select(docs, cap=5_000)} < {o for o, _ in a}
  assert corpus.select(docs, cap=10**9) == [(o, t + "\n") for o, t in docs]
  assert corpus.select([("s", "short")], cap=100) == []


def test_strip_wikitext():
  src = ("{{Infobox|a={{b}}}}'''Anarchism''' is a [[political philosophy]] that "
         "[[Stateless society|rejects states]].<ref>Cite {{x}}</ref> "
         "[[File:A.jpg|thumb|A [[b]] c]]\n== History ==\nSee [http://x.org the site].<!-- hi -->"
         "\n[[Category:Anarchism]]")
  assert corpus.strip_wikitext(src) == (
    "Anarchism is a political philosophy that rejects states. \nHistory\nSee the site.\n")


def test_html_to_text_skips_navigation():
  page = ("<html><head><title>T</title></head><body><div id='banner'>Download</div>"
          "<ul class='docnav top'><li>Prev</li></ul><div class='para'>Hello <b>world</b>"
          "</div><pre>a\n  b</pre><script>x()</script></body></html>")
  assert corpus.clean(corpus.html_to_text(page)) == "Hello world\n\na\n  b\n"


def _xdr_strings(strings, names=None) -> bytes:
  """R's XDR serialization of a character vector, optionally with a names attribute."""
  def charsxp(s):
    b = s.encode()
    return struct.pack(">ii", 9 | (1 << 15), len(b)) + b

  def strsxp(items, attr=b""):
    flags = 16 | ((1 << 9) if attr else 0)
    return struct.pack(">ii", flags, len(items)) + b"".join(map(charsxp, items)) + attr

  attr = b""
  if names:  # pairlist (names = STRSXP), tag is a symbol
    attr = (struct.pack(">i", 2 | (1 << 10)) + struct.pack(">i", 1) + charsxp("names")
            + strsxp(names) + struct.pack(">i", 254))
  return b"X\n" + struct.pack(">iii", 2, 0x040000, 0x020300) + strsxp(strings, attr)


def test_r_reader_reads_character_vectors():
  vec = corpus._RReader(_xdr_strings(["Call me", "Ishmaël"], names=["a", "b"])).read()
  assert list(vec) == ["Call me", "Ishmaël"] and list(vec.attrs["names"]) == ["a", "b"]
  with pytest.raises(JShearError, match="XDR"):
    corpus._RReader(b"A\n" + bytes(20)).read()


def test_debfaq_and_pyfaq_split_into_questions():
  faq = ("Title\n\n1. Defs\n    1.1. What?\nChapter 1. Defs\n\n1.1.\xa0What?\n\n    It is."
         "\n\n1.2. Why?\n\n    Because.\n\nChapter 2. More\n\n2.1. How?\n\n    So.\n")
  docs = corpus.debfaq_docs({"faq.txt.gz": gzip.compress(faq.encode())})
  assert [corpus.clean(t).split("\n")[0] for _, t in docs] == ["1.1.\xa0What?", "1.2. Why?", "2.1. How?"]
  assert "Chapter" not in docs[1][1]
  rst = "=====\nFAQ\n=====\n\nGeneral\n=======\n\nWhy?\n----\n\nBecause.\n\nHow?\n----\nSo.\n"
  docs = corpus.pyfaq_docs({"faq/x.rst.txt": rst.encode()})
  assert [t.split("\n")[0] for _, t in docs] == ["Why?", "How?"]


# ---- the real cached assets ---------------------------------------------------------------
def test_heldout_text_is_gpl3():
  path = assets.heldout_text_path()
  data = Path(path).read_bytes()
  assert hashlib.sha256(data).hexdigest() == assets.GPL3_SHA256
  assert data.lstrip().startswith(b"GNU GENERAL PUBLIC LICENSE")


def test_corpus_domains_are_nonempty_utf8_and_match_sources_json():
  root = Path(assets.corpus_dir())
  report = json.loads((root / "SOURCES.json").read_text())
  assert report["version"] == corpus.VERSION
  assert sorted(report["domains"]) == sorted(corpus.DOMAINS)
  assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(corpus.DOMAINS)
  listed = (root / "documents.tsv").read_text().splitlines()[1:]
  for domain, info in report["domains"].items():
    files = corpus_files.domain_files(root, domain)
    nbytes = 0
    for f in files:
      data = f.read_bytes()
      text = data.decode("utf-8")  # strict: the data pipeline refuses mojibake
      assert text.endswith("\n") and len(text) >= corpus.MIN_DOC_CHARS and "\r" not in text, f
      nbytes += len(data)
    assert (len(files), nbytes) == (info["documents"], info["bytes"]), domain
    assert 100_000 < nbytes <= 8 * corpus.MB, (domain, nbytes)
    for src in info["sources"]:
      assert src["version"] and len(src["sha256"]) == 64, src
  assert len(listed) == sum(d["documents"] for d in report["domains"].values())
  assert list(corpus_files.domain_dirs(root)) == sorted(corpus.DOMAINS)


def test_smollm2_hf_dir_has_expected_config_and_weights():
  from safetensors import safe_open
  d = Path(assets.smollm2_hf_dir())
  cfg = assets.check_smollm2_config(d)
  assert cfg["rope_parameters"]["rope_theta"] == 100000.0 and cfg["rms_norm_eps"] == 1e-5
  assert "quantization_config" not in cfg
  tok_cfg = json.loads((d / "tokenizer_config.json").read_text())
  assert (tok_cfg["bos_token"], tok_cfg["eos_token"]) == ("<|im_start|>", "<|im_end|>")
  assert "local_files_only" not in tok_cfg  # output must not depend on HF_HUB_OFFLINE
  assert (d / "tokenizer.json").is_file()
  with safe_open(str(d / "model.safetensors"), framework="numpy") as f:
    keys = set(f.keys())
    emb = f.get_slice("model.embed_tokens.weight")
    assert emb.get_shape() == [49152, 576] and emb.get_dtype() == "F32"
  assert "lm_head.weight" not in keys  # tied: stored once
  assert len(keys) == 1 + 30 * 9 + 1
  assert os.path.getsize(assets.smollm2_gguf_path()) == 98362432
