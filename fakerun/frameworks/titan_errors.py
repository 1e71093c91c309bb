"""torchtitan 0.2.x's own refusals as a rank prints them: the Python traceback through torchtitan's frames
(train.py, ParallelDims, ConfigManager) down to the exception."""

from __future__ import annotations

import os
import sysconfig

from fakerun.frameworks import pytrace

__all__ = ["traceback_text"]

# One frame: file (under torchtitan/, "<site>" for site-packages, "<frozen runpy>"), line, function, the
# source line stripped, and the part Python 3.11+ underlines: (start, primary length, subscript length) or
# None when it spans the whole line.
_Frame = tuple[str, int, str, str, tuple[int, int, int] | None]
_RUNPY: tuple[_Frame, ...] = (
    ("<frozen runpy>", 198, "_run_module_as_main", "", None),
    ("<frozen runpy>", 88, "_run_code", "", None),
    ("train.py", 781, "<module>", "main(Trainer)", None),
)
_INIT: tuple[_Frame, ...] = (
    *_RUNPY,
    ("train.py", 749, "main", "trainer = trainer_class(config)", (10, 21, 0)),
    (
        "<site>/torch/distributed/elastic/multiprocessing/errors/__init__.py",
        367,
        "wrapper",
        "return f(*args, **kwargs)",
        (7, 18, 0),
    ),
)
_FRAMES: dict[str, tuple[_Frame, ...]] = {
    # train_spec_module.get_train_spec(job_config.model.name) of an unregistered name
    "train_spec": (
        *_INIT,
        (
            "train.py",
            117,
            "__init__",
            "self.train_spec = train_spec_module.get_train_spec(job_config.model.name)",
            (18, 55, 0),
        ),
        (
            "protocols/train_spec.py",
            87,
            "get_train_spec",
            'raise ValueError(f"TrainSpec {name} is not registered.")',
            None,
        ),
    ),
    # self.train_spec.model_args[job_config.model.flavor] of a flavor the model does not have
    "flavor": (
        *_INIT,
        (
            "train.py",
            138,
            "__init__",
            "model_args = self.train_spec.model_args[job_config.model.flavor]",
            (13, 26, 25),
        ),
    ),
    # ParallelDims.__post_init__'s _validate, from init_distributed
    "mesh": (
        *_INIT,
        (
            "train.py",
            93,
            "__init__",
            "self.parallel_dims = parallel_dims = self.init_distributed()",
            (37, 23, 0),
        ),
        ("train.py", 373, "init_distributed", "return ParallelDims(", None),
        ("<string>", 13, "__init__", "", None),
        ("distributed/parallel_dims.py", 33, "__post_init__", "self._validate()", None),
    ),
    # the batch check in Trainer.__init__
    "batch": (*_INIT, ("train.py", 202, "__init__", "assert (", None)),
    # the model's parallelize_fn (without pipeline stages), whose first statement checks the sequence length
    "parallelize": (
        *_INIT,
        (
            "train.py",
            256,
            "__init__",
            "model = self.train_spec.parallelize_fn(model, parallel_dims, job_config)",
            (8, 64, 0),
        ),
    ),
    # ConfigManager._maybe_load_toml of a config file it cannot open
    "config_file": (
        *_RUNPY,
        ("train.py", 745, "main", "config = config_manager.parse_args()", (9, 27, 0)),
        ("config/manager.py", 47, "parse_args", "toml_values = self._maybe_load_toml(args)", (14, 27, 0)),
        ("config/manager.py", 84, "_maybe_load_toml", "raise e", None),
        ("config/manager.py", 80, "_maybe_load_toml", 'with open(file_path, "rb") as f:', (5, 21, 0)),
    ),
}
# The registry form's ConfigManager (torchtitan after 0.2.x): _load_config refusing --module/--config.
_REGISTRY: tuple[_Frame, ...] = (
    ("<frozen runpy>", 198, "_run_module_as_main", "", None),
    ("<frozen runpy>", 88, "_run_code", "", None),
    ("train.py", 79, "<module>", "main()", None),
    ("train.py", 29, "main", "config = config_manager.parse_args()", (9, 27, 0)),
    ("config/manager.py", 37, "parse_args", "loaded_config, args = self._load_config(args)", (22, 23, 0)),
)
_FRAMES.update(
    {
        "config_missing": (*_REGISTRY, ("config/manager.py", 90, "_load_config", "raise ValueError(", None)),
        "config_module": (*_REGISTRY, ("config/manager.py", 120, "_load_config", "raise ImportError(", None)),
        "config_function": (
            *_REGISTRY,
            ("config/manager.py", 153, "_load_config", "raise ValueError(", None),
        ),
    }
)
# ParallelDims._validate's assertions by their source line. "ep" is the expert-parallel check torchtitan added
# after 0.2.x (#4258: 0.2.x's build_mesh failed on the truncated efsdp degree instead), its raise placed
# six lines below the product assertion as it is in the source.
_MESH_LINES = {"degree": 46, "dp_shard": 48, "dp_shard_derived": 51, "product": 53, "ep": 59, "etp": 59}
# Each model's parallelize_fn: (file, line of its sequence-length assertion, function) in 0.2.x.
_PARALLELIZE = {
    "llama3": ("models/llama3/infra/parallelize.py", 67, "parallelize_llama"),
    "llama4": ("models/llama4/infra/parallelize.py", 80, "parallelize_llama"),
    "deepseek_v3": ("models/deepseek_v3/infra/parallelize.py", 59, "parallelize_deepseekv3"),
    "qwen3": ("models/qwen3/infra/parallelize.py", 61, "parallelize_qwen3"),
}


def _root() -> str:
    """Where torchtitan's sources are: the checkout run_train.sh runs from, else site-packages."""
    here = os.path.abspath("torchtitan")
    if os.path.isdir(here):
        return here
    return os.path.join(sysconfig.get_paths()["purelib"], "torchtitan")


def traceback_text(where: str, exception: str, *, assertion: str = "") -> str:
    """The traceback a rank prints when torchtitan raises `exception` (`KeyError: 'x'`) at `where` (a key of
    _FRAMES); ParallelDims' assertions name theirs (`assertion`, a key of _MESH_LINES), parallelize_fn's its
    model (`assertion`, a key of _PARALLELIZE). Ranks past init_process_group prefix every line `[rankN]: `
    (pytrace.RANK_SLOT stands for N)."""
    root, site = _root(), sysconfig.get_paths()["purelib"]
    frames = list(_FRAMES[where])
    if where == "parallelize":
        path, line, func = _PARALLELIZE.get(assertion, _PARALLELIZE["llama3"])
        frames.append((path, line, func, "assert (", None))
    elif assertion:
        line = _MESH_LINES[assertion]
        frames.append(("distributed/parallel_dims.py", line, "_validate", _ASSERTS[assertion], None))
    entries = []
    for path, lineno, func, code, marks in frames:
        if path.startswith("<site>"):
            path = site + path.removeprefix("<site>")
        elif not path.startswith("<"):
            path = f"{root}/{path}"
        underline = None
        if marks is not None:
            start, primary, subscript = marks
            underline = (start, "~" * primary + "^" * subscript if subscript else "^" * primary)
        entries.append(pytrace.Frame(path, lineno, func, code or None, underline=underline))
    # Before init_process_group (the config's parsing) torch's excepthook is not in yet.
    return pytrace.traceback_text(entries, exception, after_init=not where.startswith("config"))


_ASSERTS = {
    "degree": 'assert d >= 1, "Parallelism degree should be >= 1, except for dp_shard"',
    "dp_shard": 'assert dp_shard == -1 or dp_shard >= 1, "dp_shard must -1 or >=1."',
    "dp_shard_derived": "assert dp_shard >= 1",
    "product": "assert dp_replicate * dp_shard * cp * tp * pp == self.world_size, (",
    "etp": 'assert etp == tp or etp == 1, "Currently we only support ETP=TP or ETP=1"',
    "ep": "raise ValueError(",
}
