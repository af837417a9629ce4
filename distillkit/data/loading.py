"""Load a data set (built-in task, local files or a hub name), check its columns, and tokenize it once."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from datasets import Dataset, load_dataset
from omegaconf import DictConfig, OmegaConf

from distillkit.data.addition import addition_dataset
from distillkit.data.files import FILE_FORMATS, load_data_file
from distillkit.data.hinted_tasks import (
    addition_hinted_dataset,
    maximum_dataset,
    subtraction_dataset,
    subtraction_lettered_dataset,
)
from distillkit.data.long_addition import long_addition_dataset
from distillkit.data.routed_arithmetic import arithmetic_routed_dataset
from distillkit.errors import ConfigError

BUILTIN_TASKS = {
    "addition": addition_dataset,
    "addition_hinted": addition_hinted_dataset,
    "subtraction": subtraction_dataset,
    "maximum": maximum_dataset,
    "subtraction_lettered": subtraction_lettered_dataset,
    "addition_scratchpad": long_addition_dataset,
    "arithmetic_routed": arithmetic_routed_dataset,
}


def load_examples(
    source: str,
    split: str = "train",
    num_examples: int | None = None,
    seed: int = 0,
    *,
    subset: str | None = None,
    columns: Mapping[str, str] | None = None,
    chat: bool = False,
    system_prompt: str | None = None,
    where: str = "training",
) -> Dataset:
    """`source` is a built-in task name, a local .json/.jsonl/.parquet file, or a hub data set name.

    `subset` is a hub data set's configuration (`load_dataset(source, subset)`, e.g. `main` for `openai/gsm8k`).
    `columns` maps target column -> source column, copying (see `map_columns`); `chat` wraps string prompts as a
    user message, after `system_prompt` if one is given (see `as_chat`). `where` names the data set in errors.
    """
    if system_prompt and not chat:
        raise ConfigError(
            "data.system_prompt is set but data.chat=false: a system prompt needs chat prompts. Set data.chat=true "
            "(string prompts become a user message after the system message), or data.system_prompt=null."
        )
    if source in BUILTIN_TASKS:
        if not num_examples:
            raise ConfigError(f"The built-in task {source!r} needs data.*.num_examples > 0.")
        dataset = BUILTIN_TASKS[source](num_examples, seed)
    else:
        path = Path(source)
        if path.suffix in FILE_FORMATS:
            dataset = load_data_file(path)  # missing, empty or malformed: refused with the file and line
        elif subset:
            dataset = load_dataset(source, subset, split=split)
        else:
            dataset = load_dataset(source, split=split)
        if num_examples:
            dataset = dataset.select(range(min(num_examples, len(dataset))))
    dataset = map_columns(dataset, columns, where)
    return as_chat(dataset, system_prompt) if chat else dataset


# The `data:` keys of each split: source, hub split, row count, seed, hub subset, column mapping.
SPLIT_KEYS = {
    "train": ("train", "split", "num_train", "seed", "subset", "columns"),
    "eval": ("eval", "eval_split", "num_eval", "eval_seed", "eval_subset", "eval_columns"),
}


def load_split(data: Mapping, which: str) -> Dataset:
    """The `train` or `eval` data set that the config's `data:` section describes, columns mapped, prompts wrapped.

    Keys this function reads that a config lacks (one written before they existed) take their defaults.
    """
    if which not in SPLIT_KEYS:
        raise ValueError(f"which={which!r}: expected one of {sorted(SPLIT_KEYS)}")
    source, split, num_examples, seed, subset, columns = (data.get(key) for key in SPLIT_KEYS[which])
    return load_examples(
        source, split or "train", num_examples, seed or 0, subset=subset, columns=columns,
        chat=bool(data.get("chat", False)), system_prompt=data.get("system_prompt"),
        where="training" if which == "train" else "evaluation",
    )


def map_columns(dataset: Dataset, columns: Mapping[str, str] | None, where: str = "training") -> Dataset:
    """`columns` maps target column -> source column; each target gets a copy of its source.

    Copies, so one source can fill two targets (`{prompt: question, privileged_context: answer}` keeps `answer`
    for reward functions), and all targets are read before any is written (a swap works). An existing target
    column is replaced.
    """
    if not columns:
        return dataset
    mapping = OmegaConf.to_container(columns) if isinstance(columns, DictConfig) else dict(columns)
    for target, source in mapping.items():
        if not isinstance(source, str):
            raise ConfigError(f"data.columns.{target}={source!r}: a source column is a column name (a string).")
    existing = dataset.column_names
    unknown = {target: source for target, source in mapping.items() if source not in existing}
    if unknown:
        listed = ", ".join(f"{target} <- {source}" for target, source in unknown.items())
        raise ConfigError(
            f"data.columns ({listed}) names source column(s) {sorted(set(unknown.values()))} that the {where} data "
            f"set does not have; it has {existing}. data.columns maps target column -> source column."
        )
    return dataset.map(lambda batch: {target: batch[source] for target, source in mapping.items()}, batched=True,
                       keep_in_memory=True, desc="data.columns")


def as_chat(dataset: Dataset, system_prompt: str | None = None) -> Dataset:
    """String prompts become `[{"role": "user", "content": prompt}]` (after the system message, if any), so the
    tokenizer's chat template applies. Prompts that are already chat messages get the system message when they
    have none, and are otherwise kept.
    """
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []

    def wrap(prompt):
        if isinstance(prompt, str):
            return [*system, {"role": "user", "content": prompt}]
        if system and not any(m.get("role") == "system" for m in prompt):
            return [*system, *prompt]
        return prompt

    if "prompt" not in dataset.column_names:  # require_columns says so, with the columns it has
        return dataset
    return dataset.map(lambda batch: {"prompt": [wrap(p) for p in batch["prompt"]]}, batched=True,
                       keep_in_memory=True, desc="data.chat")


def require_columns(dataset: Dataset, needs_completion: bool, where: str, more: dict[str, str] | None = None) -> None:
    """`more` maps further required columns to why the run needs them."""
    columns = set(dataset.column_names)
    for column, why in (more or {}).items():
        if column not in columns:
            raise ConfigError(
                f"The {where} data set has no `{column}` column (it has {sorted(columns)}), and this run needs one: "
                f"{why}. Add the column, or rename the one that holds it."
            )
    if "prompt" not in columns:
        raise ConfigError(
            f"The {where} data set has no `prompt` column (it has {sorted(columns)}). Rename the input column to "
            "`prompt`, e.g. `dataset.rename_column('question', 'prompt')`."
        )
    if needs_completion and "completion" not in columns:
        raise ConfigError(
            f"The {where} data set has no `completion` column, and this run needs one: off-policy micro-batches "
            "(method.lmbda < 1 with method.seq_kd=false) train on the data set's completions. Add a `completion` "
            "column, set method.lmbda=1 (pure on-policy), or set method.seq_kd=true (the teacher writes them)."
        )


def encode_prompt(prompt, tokenizer) -> list[int]:
    if isinstance(prompt, str):
        return tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError(
            "A prompt is a list of chat messages but the tokenizer has no chat template. Give string prompts, "
            "or use a tokenizer (model) with a chat template."
        )
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def encode_completion(completion, tokenizer) -> list[int]:
    if isinstance(completion, list):  # chat form: the assistant message(s)
        completion = "".join(m["content"] for m in completion)
    return tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def tokenize(
    dataset: Dataset, tokenizer, max_prompt_length: int, with_completion: bool, where: str
) -> list[dict]:
    """Token ids for every example, with the other columns kept (reward functions and evaluation use them)."""
    rows = []
    too_long = []
    for i, example in enumerate(dataset):
        row = dict(example)
        row["prompt_ids"] = encode_prompt(example["prompt"], tokenizer)
        if len(row["prompt_ids"]) > max_prompt_length:
            too_long.append((i, len(row["prompt_ids"])))
        if with_completion and example.get("completion") is not None:
            row["completion_ids"] = encode_completion(example["completion"], tokenizer)
        rows.append(row)
    if too_long:
        worst = max(n for _, n in too_long)
        raise ConfigError(
            f"{len(too_long)} {where} prompts are longer than the prompt budget of {max_prompt_length} tokens "
            f"(the model's context minus max_completion_length; the longest has {worst}, e.g. row "
            f"{too_long[0][0]}). Filter them out, lower train.max_completion_length, or use a model with a "
            "longer context."
        )
    return rows
