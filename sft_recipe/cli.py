"""`sft-recipe` command line: train, preprocess, generate (and friends).

User mistakes (`UserError`) print one line and exit 2; anything else is a bug and keeps its
traceback. Recipe keys are accepted as `--key value` after the recipe path.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .dependencies import check_dependencies
from .errors import PeerLost, TrainingInterrupted, UserError

EXIT_USER_ERROR = 2
TOOLS_HELP = "JSON file with a list of tool schemas, rendered by the chat template"


def recipe_keys_help() -> str:
    from .recipe.config import SFTConfig
    from .recipe.keys import sections

    lines = ["recipe keys (set in the YAML or as --key value; the command line wins):"]
    for title, fields in sections(SFTConfig):
        lines.append(f"\n{title}:")
        lines += [f"  --{f.name:<28} {f.metadata.get('help', '')}" for f in fields]
    return "\n".join(lines)


def list_commands(parser: argparse.ArgumentParser) -> str:
    """`sft-recipe` alone: every command with its one-line help, and where to start."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lines = [f"{parser.prog}: {parser.description}", "", "commands:"]
    lines += [f"  {a.dest:<11} {a.help}" for a in sub._choices_actions]
    lines += ["", f"{parser.prog} COMMAND --help shows a command's options. "
              f"First run: {parser.prog} train recipes/demo.yaml"]
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace, overrides: list[str]) -> int:
    from .recipe.files import load_recipe

    from .training.host_memory import tune_host_memory

    config = load_recipe(args.recipe, overrides)  # torch is not loaded yet
    applied = tune_host_memory(config.release_host_memory)  # docs/speed-and-memory.md's defaults; said when asked for
    level = logging.INFO if config.release_host_memory else logging.DEBUG
    logging.getLogger("sft_recipe").log(level, "host memory: %s", ", ".join(applied) or "left as set")
    from .commands.train import train

    check = None
    if config.generation_eval_samples:  # `evaluate` (and scipy.stats) cost 27 MiB for the whole run otherwise
        from .commands.evaluation import generation_check as check
    scorer = None
    if config.bench_tasks:  # lm-evaluation-harness is an optional extra: imported only when asked for
        from .commands.bench import bench_best as scorer
    train(config, check, scorer)  # ends with the summary block (best model, time, paths, next commands)
    return 0


def cmd_preprocess(args: argparse.Namespace, overrides: list[str]) -> int:
    from .data.chat_template import setup_chat_template
    from .data.prepare import describe_stats, prepare_data
    from .data.prepared import data_fingerprint, save_prepared
    from .data.preview import show_rows
    from .model.load import load_tokenizer
    from .rundir.paths import writable_dir
    from .recipe.files import load_recipe

    config = load_recipe(args.recipe, overrides)
    writable_dir(args.output, "--output")
    tokenizer = load_tokenizer(config.resolved_tokenizer_name, config.trust_remote_code)
    setup_chat_template(tokenizer, config)
    data = prepare_data(config, tokenizer)
    save_prepared(data, args.output, data_fingerprint(config, tokenizer), tokenizer)  # `dataset:` can name it
    print(f"data: {describe_stats(data.stats)}")
    show_rows(data.train, tokenizer, args.show)
    print(f"wrote {len(data.train)} train and {len(data.eval)} eval rows to {args.output}")
    return 0


def cmd_generate(args: argparse.Namespace, overrides: list[str]) -> int:
    from .commands.chat import generate_command

    reject_overrides(overrides)
    check_generation_options(args)
    return generate_command(args)


def cmd_chat(args: argparse.Namespace, overrides: list[str]) -> int:
    from .commands.chat import chat_loop, read_tools
    from .model.load import load_for_inference
    from .rundir.layout import read_saved_recipe

    reject_overrides(overrides)
    check_generation_options(args)
    tools = read_tools(args.tools)
    model, tokenizer = load_for_inference(args.model_dir)
    if tokenizer.chat_template is None:
        raise UserError(f"{args.model_dir}: the saved tokenizer has no chat template; train with "
                        "dataset_format: messages (and chat_template: chatml if the tokenizer has none)")
    kwargs = read_saved_recipe(args.model_dir).get("chat_template_kwargs") or {}
    chat_loop(model, tokenizer, sys.stdin, sys.stdout, max_new_tokens=args.max_new_tokens,
              temperature=args.temperature, top_p=args.top_p, system=args.system, tools=tools,
              chat_template_kwargs=kwargs)
    return 0


def cmd_tokenizer_train(args: argparse.Namespace, overrides: list[str]) -> int:
    from .data.tokenizer_train import iter_corpus, train_bpe

    reject_overrides(overrides)
    tokenizer = train_bpe(iter_corpus(args.corpus), args.vocab_size, args.output, args.min_frequency)
    print(f"trained a byte-level BPE of {len(tokenizer)} tokens on {args.corpus}; saved to {args.output}")
    return 0


def cmd_eval(args: argparse.Namespace, overrides: list[str]) -> int:
    from .commands.evaluation import eval_command

    return eval_command(args.model_dir, args.recipe, args.output, overrides)


def cmd_bench(args: argparse.Namespace, overrides: list[str]) -> int:
    from .commands.bench import bench_command

    return bench_command(args)


def cmd_plan(args: argparse.Namespace, overrides: list[str]) -> int:
    from .commands.plan import plan_command

    return plan_command(args.recipe, overrides, args.memory, args.device, args.shards)


def cmd_launch(args: argparse.Namespace, rest: list[str]) -> int:
    from .commands.launch import launch

    return launch(rest)


def cmd_merge(args: argparse.Namespace, overrides: list[str]) -> int:
    from .publish.export import merge_adapter

    reject_overrides(overrides)
    out = merge_adapter(args.adapter_dir, args.output)
    print(f"merged model written to {out}", flush=True)
    return 0


def check_generation_options(args: argparse.Namespace) -> None:
    """generate/chat options that the library would reject with a traceback."""
    if args.max_new_tokens <= 0:
        raise UserError(f"command line: --max_new_tokens must be > 0, got {args.max_new_tokens}")
    if not args.temperature >= 0:
        raise UserError(f"command line: --temperature must be >= 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise UserError(f"command line: --top_p must be in (0, 1], got {args.top_p}")


def reject_overrides(overrides: list[str]) -> None:
    if overrides:
        raise UserError(f"unexpected arguments: {' '.join(overrides)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sft-recipe", description="supervised fine-tuning recipes")
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("train", help="train a recipe", epilog=recipe_keys_help(), formatter_class=fmt)
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("--verbose", action="store_true",
                   help="also print every raw metric dict (always written to output_dir/train_log.jsonl)")
    p.set_defaults(func=cmd_train, takes_overrides=True)

    p = sub.add_parser("preprocess", help="write the exact rows training would see", epilog=recipe_keys_help(),
                       formatter_class=fmt)
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("--output", required=True, help="directory for train/ and eval/ (datasets save_to_disk)")
    p.add_argument("--show", type=int, default=3, help="rows to print with the masked part marked")
    p.set_defaults(func=cmd_preprocess, takes_overrides=True)

    p = sub.add_parser("generate", help="answer one prompt with a trained model")
    p.add_argument("model_dir", help="a saved model directory, e.g. outputs/run/best")
    p.add_argument("text", help="the instruction (or raw text with --raw)")
    p.add_argument("--input", default="", help="Alpaca 'input' field for the instruction "
                   "(chat models: appended to the message on a line of its own)")
    p.add_argument("--raw", action="store_true", help="continue raw text, no template")
    p.add_argument("--max_new_tokens", type=int, default=128, help="generation length limit")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 samples")
    p.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling threshold (with temperature)")
    p.add_argument("--tools", default=None, help=TOOLS_HELP)
    p.set_defaults(func=cmd_generate, takes_overrides=False)

    p = sub.add_parser("chat", help="talk to a trained chat model in the terminal (/reset, /exit)")
    p.add_argument("model_dir", help="a saved model directory trained on messages data, e.g. outputs/run/best")
    p.add_argument("--system", default=None, help="a system message to start every conversation with")
    p.add_argument("--max_new_tokens", type=int, default=256, help="generation length limit per answer")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 samples")
    p.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling threshold (with temperature)")
    p.add_argument("--tools", default=None, help=TOOLS_HELP)
    p.set_defaults(func=cmd_chat, takes_overrides=False)

    p = sub.add_parser("eval", help="evaluate a saved model on the recipe's held-out split",
                       epilog=recipe_keys_help(), formatter_class=fmt)
    p.add_argument("model_dir", help="a saved model or LoRA adapter directory, e.g. outputs/run/best")
    p.add_argument("recipe", nargs="?", default=None,
                   help="recipe YAML (default: the sft_recipe.yaml saved in model_dir)")
    p.add_argument("--output", default=None, help="metrics JSON path (default: model_dir/eval_results.json)")
    p.set_defaults(func=cmd_eval, takes_overrides=True)

    p = sub.add_parser("plan", help="predict the memory of a training and an evaluation step, part by part")
    p.add_argument("recipe", help="recipe YAML (recipe keys may follow as --key value)")
    p.add_argument("--memory", default=None, help="a budget (6GiB): print the settings that fit it")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the run will train")
    p.add_argument("--shards", type=int, default=1,
                   help="processes sharing the weights and AdamW state under FSDP or ZeRO-3 (the plan is per device)")
    p.set_defaults(func=cmd_plan, takes_overrides=True)

    p = sub.add_parser("bench", help="benchmark scores through lm-evaluation-harness (pip install -e '.[bench]')")
    p.add_argument("model_dir", help="any saved model or LoRA adapter directory, e.g. outputs/run/best or a base model")
    p.add_argument("--tasks", required=True, help="harness task names, comma-separated (lm-eval ls tasks)")
    p.add_argument("--include_path", default=None, help="a folder of local task YAMLs (they may read local JSON)")
    p.add_argument("--limit", type=float, default=None, help="at most this many examples per task (< 1: a share)")
    p.add_argument("--num_fewshot", type=int, default=None, help="few-shot examples per prompt (the task's default)")
    p.add_argument("--batch_size", type=int, default=8, help="generation and scoring batch size")
    p.add_argument("--chat_template", choices=["auto", "on", "off"], default="auto",
                   help="auto: the model's own template when it was trained on conversations (docs/evaluation.md)")
    p.add_argument("--system", default=None, help="a system prompt for chat-templated tasks")
    p.set_defaults(func=cmd_bench, takes_overrides=False)

    p = sub.add_parser("launch", help="accelerate launch, with a lost machine ending in one line",
                       description="sft-recipe launch [accelerate launch options] train RECIPE [--key value]: "
                                   "the same options as `accelerate launch` (--config_file, --num_machines, "
                                   "--machine_rank, --main_process_ip, ...); see docs/scaling.md.")
    p.set_defaults(func=cmd_launch, takes_overrides=True)

    p = sub.add_parser("merge", help="fold LoRA adapters into their base model and save a full model")
    p.add_argument("adapter_dir", help="a saved LoRA adapter directory, e.g. outputs/run/best")
    p.add_argument("--output", required=True, help="directory for the merged model")
    p.set_defaults(func=cmd_merge, takes_overrides=False)

    p = sub.add_parser("tokenizer", help="tokenizer tools (train)")
    tok_sub = p.add_subparsers(dest="tokenizer_command", required=True)
    p = tok_sub.add_parser("train", help="train a byte-level BPE tokenizer on a text corpus")
    p.add_argument("corpus", help="a .txt file, or a directory of .txt files")
    p.add_argument("--vocab_size", type=int, required=True, help="vocabulary size, special tokens included")
    p.add_argument("--output", required=True, help="directory to save to (loads with AutoTokenizer)")
    p.add_argument("--min_frequency", type=int, default=2, help="a pair must occur this often to be merged")
    p.set_defaults(func=cmd_tokenizer_train, takes_overrides=False)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # a first look: the commands, one line each (exit 0: nothing went wrong)
        print(list_commands(parser))
        return 0
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "takes_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from .console import configure_logging

    configure_logging(verbose=getattr(args, "verbose", False))
    try:
        check_dependencies()  # an older package than pyproject.toml declares: one line, not a traceback later
        return args.func(args, rest)
    except UserError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message held
        print(f"sft-recipe: error: {message}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except PeerLost as exc:  # another machine or process died: one line, and out at once (no collective
        print(f"sft-recipe: error: {exc}", file=sys.stderr, flush=True)  # teardown that could wait on it)
        os._exit(exc.exit_code)
    except TrainingInterrupted as exc:  # SIGTERM / Ctrl-C during training: a checkpoint was saved
        if os.environ.get("RANK", "0") == "0":
            print(f"sft-recipe: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("sft-recipe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
