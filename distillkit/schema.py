"""The typed schema of the plain config sections, as Hydra structured configs.

`conf/config.yaml` lists `distillkit_schema` first in its defaults, so Hydra merges every value into these
dataclasses: `train.lr=abc` or `train.steps=1.5` fails at composition, before a model loads, instead of as a
`TypeError` deep in the optimizer, and a misspelt key (`train.learnig_rate`) is refused by name. The values and
their comments stay in `conf/config.yaml` (one source); fields here are MISSING. The config groups (`method`,
`teacher`, `loss`, `generation`) are `Any`: each option has its own keys, checked by its constructor.

Own module without torch, so that `distillkit --help` and `--cfg job` stay fast.
"""

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Dict, List, Optional, Union, get_args, get_origin  # noqa: UP035  (OmegaConf reads these annotations at runtime)

from omegaconf import MISSING

SCHEMA_NAME = "distillkit_schema"


@dataclass
class ModelConf:
    student: str = MISSING
    dtype: str = MISSING
    trust_remote_code: bool = MISSING
    attn_implementation: Optional[str] = MISSING  # noqa: UP045
    gradient_checkpointing: bool = MISSING
    lora: Any = MISSING  # a mapping or null; Any: OmegaConf 2.3 cannot merge a mapping into a typed null dict


@dataclass
class DataConf:
    train: str = MISSING
    split: str = MISSING
    num_train: Optional[int] = MISSING  # noqa: UP045
    seed: int = MISSING
    eval: str = MISSING
    eval_split: str = MISSING
    num_eval: Optional[int] = MISSING  # noqa: UP045
    eval_seed: int = MISSING
    subset: Optional[str] = MISSING  # noqa: UP045
    eval_subset: Optional[str] = MISSING  # noqa: UP045
    columns: Any = MISSING  # a mapping or null (as model.lora); data.loading checks the sources
    eval_columns: Any = MISSING
    chat: bool = MISSING
    system_prompt: Optional[str] = MISSING  # noqa: UP045


@dataclass
class TrainConf:
    steps: int = MISSING
    batch_size: int = MISSING
    gradient_accumulation_steps: int = MISSING
    lr: float = MISSING
    lr_scheduler: str = MISSING
    warmup_steps: int = MISSING
    weight_decay: float = MISSING
    adam_betas: List[float] = MISSING  # noqa: UP006
    max_grad_norm: Optional[float] = MISSING  # noqa: UP045
    mixed_precision: str = MISSING
    max_completion_length: int = MISSING
    seed: int = MISSING
    log_every: int = MISSING
    eval_every: int = MISSING
    save_every: int = MISSING
    keep_checkpoints: int = MISSING
    resume: bool = MISSING
    async_generation: bool = MISSING
    async_generation_threads: int = MISSING
    async_is_clip: Optional[float] = MISSING  # noqa: UP045


@dataclass
class TrackingConf:
    enabled: bool = MISSING
    tracking_uri: str = MISSING
    experiment: str = MISSING
    run_name: Optional[str] = MISSING  # noqa: UP045


@dataclass
class DistributedConf:
    strategy: str = MISSING
    reshard_after_forward: bool = MISSING
    zero_stage: int = MISSING
    deepspeed_config: Optional[str] = MISSING  # noqa: UP045  (a path to a DeepSpeed JSON)


@dataclass
class DistillkitConfig:
    """The root: free-form groups, then typed plain sections (the order `distillkit --cfg job` prints)."""

    teacher: Any = MISSING
    loss: Any = MISSING
    generation: Any = MISSING
    method: Any = MISSING
    model: ModelConf = field(default_factory=ModelConf)
    data: DataConf = field(default_factory=DataConf)
    train: TrainConf = field(default_factory=TrainConf)
    tracking: TrackingConf = field(default_factory=TrackingConf)
    device: str = MISSING
    distributed: DistributedConf = field(default_factory=DistributedConf)


def register_schema() -> None:
    """Put the schema in Hydra's ConfigStore (idempotent), where `conf/config.yaml`'s defaults find it."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=DistillkitConfig)


def field_type(dotted_key: str) -> str | None:
    """The declared type of a plain key in words, e.g. `train.lr` -> `float`; None outside the schema."""
    node: Any = DistillkitConfig
    for part in dotted_key.split("."):
        match = next((f for f in fields(node) if f.name == part), None) if is_dataclass(node) else None
        if match is None:
            return None
        node = match.type
    if is_dataclass(node) or node is Any:
        return None
    args = [a for a in get_args(node) if a is not type(None)]
    if get_origin(node) is Union and len(args) == 1:  # Optional[X]
        return f"{_type_name(args[0])} or null"
    return _type_name(node)


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin in (list, List):  # noqa: UP006
        return f"a list of {_type_name(get_args(annotation)[0])}"
    if origin in (dict, Dict):  # noqa: UP006
        return "a mapping"
    return _WORDS.get(annotation, getattr(annotation, "__name__", str(annotation)))


_WORDS = {str: "string", int: "integer", float: "float", bool: "boolean (true or false)"}


def check_plain_keys(cfg: Any) -> None:
    """Refuse a key the schema does not declare in a plain section. `+train.key=...` adds one despite the schema
    (Hydra opens the struct for `+`), and nothing would read it: a silent no-op is worse than a refusal."""
    from distillkit.errors import ConfigError
    from distillkit.trl_keys import trl_hint

    for section in fields(DistillkitConfig):
        if not is_dataclass(section.type) or section.name not in cfg:
            continue
        known = {f.name for f in fields(section.type)}
        for key in cfg[section.name]:
            if key not in known:
                dotted = f"{section.name}.{key}"
                raise ConfigError(trl_hint(dotted) or f"{dotted} is not a distillkit key; `distillkit --cfg job` "
                                  f"prints every key (the {section.name} section has {', '.join(sorted(known))}).")


def check_no_missing_values(cfg: Any) -> None:
    """Refuse a `???` (MISSING) value the user did not fill (a recipe's `model.student: ???`), by key, before the
    first read of it raises OmegaConf's MissingMandatoryValue traceback."""
    from omegaconf import OmegaConf

    from distillkit.errors import ConfigError

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{', '.join(missing)} must be given (the config leaves {'it' if len(missing) == 1 else 'them'}"
                          f" as ???): add {' '.join(f'{key}=...' for key in missing)} to the command line.")
