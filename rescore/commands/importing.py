"""``rescore import``: bring other tools' runs into the store so ``rescore score`` scores them.

    rescore import lm-eval DIR                       lm-evaluation-harness --log_samples output
    rescore import jsonl FILE --map mapping.yaml     one JSON object per sample (n candidates each)
    rescore import tensors FILE --map mapping.yaml   token ids + masks per method (.pt / .safetensors)

Imports are idempotent (content-hashed run ids) and never modify the source files. Heavy libraries
(torch, transformers) are imported inside the commands that need them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from rescore.commands.common import DEFAULT_STORE, INT64_MAX, JsonOpt, StoreOpt, comma_list, handle_errors

MapOpt = Annotated[Path, typer.Option("--map", help="Mapping YAML that names the fields (example above).")]


def _report(results: list[Any], notes: list[str], store: Path, json_out: bool, extra: dict[str, Any] | None = None) -> None:
    if json_out:
        print(json.dumps({"units": [{"run_id": r.run_id, "model": r.model, "task": r.task,
                                     "request_type": r.request_type, "rows": r.rows, "action": r.action}
                                    for r in results], "notes": notes, **(extra or {})}, indent=2))
        return
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    for r in results:
        print(f"{r.action:16s} {r.run_id}  {r.model} / {r.task}  ({r.request_type}, {r.rows} rows)")
    new = sum(r.action != "already imported" for r in results)
    print(f"{len(results)} unit(s): {new} imported, {len(results) - new} already in {store}; "
          f"score them with `rescore score --store {store}`")


def register(app: typer.Typer) -> None:
    sub = typer.Typer(help="Import runs made by other tools (lm-eval, JSONL, token tensors) into the store.",
                      no_args_is_help=True, rich_markup_mode=None)
    app.add_typer(sub, name="import")

    @sub.command("lm-eval")
    @handle_errors
    def import_lm_eval_cmd(
        path: Annotated[Path, typer.Argument(help="lm-eval --output_path directory (searched recursively) or one results_*.json.")],
        store: StoreOpt = DEFAULT_STORE,
        model_name: Annotated[str | None, typer.Option("--model-name", help="Model name in the store (default: from model_args pretrained).")] = None,
        step: Annotated[int | None, typer.Option(min=0, max=INT64_MAX, help="Training step of the checkpoint.")] = None,
        stage: Annotated[str | None, typer.Option(help="Training stage of the checkpoint.")] = None,
        suite: Annotated[str, typer.Option(help="Suite name recorded in the manifests.")] = "lm-eval",
        task: Annotated[list[str] | None, typer.Option("--task", "-t", help="Only these lm-eval tasks (glob). Repeatable, or comma separated.", callback=comma_list)] = None,
        include_path: Annotated[Path | None, typer.Option("--include-path", help="Directory of the run's own task YAMLs (lm-eval's --include_path), so that `rescore score` computes their lm-eval.* metrics; default: the directory of the YAML the run was made from if it is still there, else the installed lm-eval's tasks.")] = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Import lm-evaluation-harness 0.4 output written with --log_samples (results_*.json + samples_*.jsonl).

        Multiple-choice tasks become loglikelihood units (per-choice sums and greedy flags; no per-token
        logprobs), loglikelihood_rolling tasks rolling units, generate_until tasks generate units (raw
        responses before filters). `rescore score` computes their lm-eval.* metrics with the installed
        lm-eval's task of the same name, as for units generated with the lm_eval family.
        """
        from rescore.artifacts.store import Store
        from rescore.errors import ConfigError
        from rescore.importers.common import checked_name
        from rescore.importers.lm_eval import Options, import_lm_eval

        if include_path is not None and not include_path.is_dir():
            raise ConfigError(f"--include-path {include_path} is not a directory",
                              hint="give the directory of the task YAMLs the run was made with (lm-eval's --include_path)")
        opts = Options(model_name=model_name, step=step, stage=stage, suite=checked_name(suite, "suite name"),
                       tasks=tuple(task or ()), include_path=str(include_path.resolve()) if include_path else None)
        results, notes = import_lm_eval(Store(store), path, opts, command=" ".join(sys.argv))
        _report(results, notes, store, json_out)

    @sub.command("jsonl")
    @handle_errors
    def import_jsonl_cmd(
        path: Annotated[Path, typer.Argument(help="JSONL file: one JSON object per sample.")],
        mapping: MapOpt,
        store: StoreOpt = DEFAULT_STORE,
        json_out: JsonOpt = False,
    ) -> None:
        """Import a JSONL file of generations (one line per sample, n candidates each) as a generate unit.

        The mapping YAML names the fields (dotted paths reach into nested objects). Reranker scores are
        merged into <store>/imports/reranker_scores.jsonl for `rescore score --reranker FILE` (bon_reranker).

        \b
        task: gsm8k_bon
        model: {name: sft-7b, path: /ckpt/sft-7b, step: 2000, precision: bf16}
        seed: 0
        gen: {temperature: 0.8, n: 8}
        sample_id_format: "{:08d}"      # optional
        fields:
          sample_id: problem_id
          candidates: candidates        # list of strings
          target: answer                # and/or answer: final_answer
          prompt: question              # optional from here on
          scores: scores                # reranker score per candidate
          logprobs: token_logprobs      # per candidate, per token
          meta: [answers]
        """
        from rescore.artifacts.store import Store
        from rescore.importers.jsonl import import_jsonl, load_mapping

        result, notes, extra = import_jsonl(Store(store), path, load_mapping(mapping), command=" ".join(sys.argv))
        _report([result], notes, store, json_out, extra)

    @sub.command("tensors")
    @handle_errors
    def import_tensors_cmd(
        path: Annotated[Path, typer.Argument(help=".pt (loaded with weights_only=True) or .safetensors file.")],
        mapping: MapOpt,
        store: StoreOpt = DEFAULT_STORE,
        json_out: JsonOpt = False,
    ) -> None:
        """Import generated token ids + masks saved per method as generate units, decoded with a tokenizer.

        Per method: token ids [N, T] or [N, n, T], a mask of the same shape, optional per-token logprobs.
        Each method becomes one unit (task <task>.<method>). .pt files load only with weights_only=True.

        \b
        task: gsm8k
        model: {name: sft-7b, path: /ckpt/sft-7b, step: 2000}
        tokenizer: /ckpt/sft-7b         # directory or tokenizer.json
        mask: keep                      # keep: 1 = token; pad: 1 = padding
        sample_ids: problem_ids         # optional 1-D tensor; default row index
        references: {file: refs.jsonl, sample_id: idx, target: answer}
        methods:
          greedy: {token_ids: greedy.ids, mask: greedy.mask}
          t0.8: {token_ids: s.ids, mask: s.mask, logprobs: s.lps, gen: {temperature: 0.8, n: 8}}
        """
        from rescore.artifacts.store import Store
        from rescore.importers.tensors import import_tensors, load_mapping

        results, notes = import_tensors(Store(store), path, load_mapping(mapping), command=" ".join(sys.argv))
        _report(results, notes, store, json_out)
