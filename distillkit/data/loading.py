"""Load a data set (built-in task, local files or a hub name), check its columns, and tokenize it once."""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, load_dataset

from distillkit.data.addition import addition_dataset
from distillkit.data.hinted_tasks import addition_hinted_dataset, maximum_dataset, subtraction_dataset
from distillkit.models import ConfigError

BUILTIN_TASKS = {
    "addition": addition_dataset,
    "addition_hinted": addition_hinted_dataset,
    "subtraction": subtraction_dataset,
    "maximum": maximum_dataset,
}
FILE_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def load_examples(source: str, split: str = "train", num_examples: int | None = None, seed: int = 0) -> Dataset:
    """`source` is a built-in task name, a local .json/.jsonl/.parquet file, or a hub data set name."""
    if source in BUILTIN_TASKS:
        if not num_examples:
            raise ConfigError(f"The built-in task {source!r} needs data.*.num_examples > 0.")
        return BUILTIN_TASKS[source](num_examples, seed)
    path = Path(source)
    if path.suffix in FILE_FORMATS:
        if not path.exists():
            raise ConfigError(f"Data file {source} does not exist.")
        dataset = load_dataset(FILE_FORMATS[path.suffix], data_files=str(path), split="train")
    else:
        dataset = load_dataset(source, split=split)
    if num_examples:
        dataset = dataset.select(range(min(num_examples, len(dataset))))
    return dataset


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
