"""`tune run` as torchtune's CLI (v0.6.1) does it: torchrun, here fakerun, with the built-in recipe's file."""

from __future__ import annotations

import os
import sys
import sysconfig

from fakerun.cli import parse_command_line
from fakerun.dialects.torchtune import config_model
from fakerun.main import main as fakerun_main

__all__ = ["main"]

_USAGE = "usage: tune run [TORCHRUN-OPTIONS] <recipe> --config <config> [RECIPE-OPTIONS]"
_TUNE_USAGE = "usage: tune [-h] {download,ls,cp,run,validate,cat} ..."
# torchtune/_recipe_registry.py's recipes: name -> supports_distributed.
RECIPES = {
    "full_finetune_single_device": False,
    "full_finetune_distributed": True,
    "lora_finetune_single_device": False,
    "lora_dpo_single_device": False,
    "lora_dpo_distributed": True,
    "full_dpo_distributed": True,
    "ppo_full_finetune_single_device": False,
    "lora_finetune_distributed": True,
    "dev/lora_finetune_distributed_multi_dataset": True,
    "generate": False,
    "dev/generate_v2": False,
    "dev/generate_v2_distributed": True,
    "dev/early_exit_finetune_distributed": True,
    "eleuther_eval": False,
    "quantize": False,
    "qat_distributed": True,
    "qat_lora_finetune_distributed": True,
    "knowledge_distillation_single_device": False,
    "knowledge_distillation_distributed": True,
}


def _error(usage: str, prog: str, message: str) -> int:
    """argparse's parser.error: the usage line and `prog: error: message` on stderr, exit status 2."""
    print(usage, file=sys.stderr)
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def launch_argv(args: list[str], root: str) -> tuple[list[str], bool] | str:
    """fakerun's arguments for `tune run ARGS` (recipes and configs installed under `root`) and whether
    torchrun options make it distributed, or the error tune's parser gives."""
    cmd = parse_command_line(args, os.environ, prog="tune run")
    recipe_args = list(cmd.torchrun.training_script_args)
    at = len(args) - len(recipe_args) - 1  # the recipe: the first positional, the rest is the recipe's
    if "--config" not in recipe_args[:-1]:
        return "The '--config' argument is required."
    recipe, launcher = args[at], args[:at]
    if recipe in RECIPES:
        if launcher and not RECIPES[recipe]:
            # Two literals joined without a space, as run.py's message is.
            return (
                f"Recipe {recipe} does not support distributed training.Please run without torchrun commands."
            )
        script = [os.path.join(root, "recipes", f"{recipe}.py")]
    else:
        # A custom recipe runs as a module (`-m my.recipe`), as run.py's _convert_to_dotpath makes it.
        script = ["-m", os.path.splitext(recipe)[0].replace("/", ".")]
    i = recipe_args.index("--config") + 1
    if config_model(recipe_args[i]) is not None and not recipe_args[i].endswith(".yaml"):
        recipe_args[i] = os.path.join(root, "recipes", "configs", f"{recipe_args[i]}.yaml")
    # No torchrun option: tune runs the recipe in its own process, on one device.
    distributed = bool(launcher)
    options = launcher if distributed else ["--nproc-per-node", "1"]
    if not any(a.split("=", 1)[0] in ("--rdzv-endpoint", "--rdzv_endpoint") for a in options):
        options = [*options, "--standalone"]  # run.py: no rendezvous endpoint means standalone
    return [*options, *script, *recipe_args], distributed


def main(argv: list[str] | None = None) -> int:
    """The `tune` shim's entry point: `tune run ...`; other subcommands are not simulated."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "run":
        sub = args[0] if args else ""
        if sub in ("download", "ls", "cp", "validate", "cat"):
            print(f"tune {sub}: not available under fakerun; only `tune run` is simulated", file=sys.stderr)
            return 2
        message = f"argument subcommand: invalid choice: {sub!r}" if sub else "a subcommand is required"
        return _error(_TUNE_USAGE, "tune", message)
    launched = launch_argv(args[1:], sysconfig.get_paths()["purelib"])
    if isinstance(launched, str):
        return _error(_USAGE, "tune run", launched)
    fakerun_args, distributed = launched
    if distributed:
        print("Running with torchrun...", flush=True)  # run.py's _run_distributed
    return fakerun_main(["tune", *fakerun_args])


if __name__ == "__main__":
    sys.exit(main())
