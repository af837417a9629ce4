"""Read a local data file, with a bad file refused by name and line.

`datasets` answers an empty .jsonl with a bare `StopIteration` and a malformed line with a builder traceback
that names neither the file nor the line. The happy path costs nothing extra: the file is scanned only when it
is empty-looking or `datasets` has already failed on it.
"""

from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset, load_dataset

from distillkit.errors import ConfigError

FILE_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
EXAMPLE_ROW = '{"prompt": "2+3=", "completion": "5"}'


def load_data_file(path: Path) -> Dataset:
    """The rows of a local .json/.jsonl/.parquet file; ConfigError for a missing, empty or malformed one."""
    if not path.exists():
        raise ConfigError(f"Data file {path} does not exist.")
    if path.suffix != ".parquet" and is_blank(path):
        raise ConfigError(f"Data file {path} is empty. It needs one row per line, each a JSON object such as "
                          f"{EXAMPLE_ROW}.")
    try:
        dataset = load_dataset(FILE_FORMATS[path.suffix], data_files=str(path), split="train")
    except Exception as err:  # noqa: BLE001  (datasets' builder errors have no common useful type)
        problem = json_problem(path) if path.suffix != ".parquet" else None
        raise ConfigError(problem or f"Data file {path} cannot be read as {path.suffix[1:]}: {root_cause(err)}.") \
            from None
    if len(dataset) == 0:
        raise ConfigError(f"Data file {path} has no rows. It needs rows such as {EXAMPLE_ROW}.")
    return dataset


def is_blank(path: Path, chunk: int = 1 << 16) -> bool:
    """True when the file holds only whitespace (read until the first other byte)."""
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            if block.strip():
                return False
    return True


def json_problem(path: Path) -> str | None:
    """The first line of a JSON Lines file that is not a JSON object, in words; None if every line is one.

    A .json file that parses as one document (a list of rows) has no problem here either."""
    if path.suffix == ".json":
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            return None if document else f"Data file {path} has no rows. It needs rows such as {EXAMPLE_ROW}."
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass  # maybe JSON Lines under a .json name: check it line by line
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                return (f"Data file {path}, line {number}, is not valid JSON ({err.msg}, column {err.colno}). Each "
                        f"line must be one JSON object such as {EXAMPLE_ROW}.")
            if not isinstance(row, dict):
                return (f"Data file {path}, line {number}, is a JSON {type(row).__name__}, not an object. Each line "
                        f"must be one JSON object such as {EXAMPLE_ROW}.")
    return None


def root_cause(err: BaseException) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
