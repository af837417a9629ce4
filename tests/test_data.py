"""Data through `datasets`: local jsonl/parquet files, string and chat prompts, optional completions."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset

from distillkit.data.addition import addition_dataset
from distillkit.data.loading import encode_prompt, load_examples, tokenize
from distillkit.models import ConfigError, load_tokenizer


def test_addition_task_is_checkable_and_seeded():
    rows = addition_dataset(50, seed=3)
    assert rows[:] == addition_dataset(50, seed=3)[:]
    assert rows[:] != addition_dataset(50, seed=4)[:]
    for prompt, completion in zip(rows["prompt"], rows["completion"], strict=True):
        a, b = prompt.rstrip("=").split("+")
        assert len(a) == len(b) == 3 and int(completion) == int(a) + int(b)
        assert completion == str(int(completion))  # no leading zeros


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_local_files(tmp_path, suffix):
    rows = [{"prompt": "12+3=", "completion": "15", "source": "x"}] * 3
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        Dataset.from_list(rows).to_parquet(str(path))
    loaded = load_examples(str(path), num_examples=2)
    assert len(loaded) == 2 and loaded[0] == rows[0]


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_examples(str(tmp_path / "nope.jsonl"))


def test_chat_prompts_use_the_chat_template(tiny_pair):
    tokenizer = load_tokenizer(str(tiny_pair[0]))
    messages = [{"role": "user", "content": "1+2="}]
    with pytest.raises(ConfigError, match="no chat template"):
        encode_prompt(messages, tokenizer)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}={% endif %}"
    assert tokenizer.decode(encode_prompt(messages, tokenizer)) == "1+2=="


def test_tokenize_keeps_extra_columns_and_appends_eos(tiny_pair):
    tokenizer = load_tokenizer(str(tiny_pair[0]))
    rows = tokenize(Dataset.from_list([{"prompt": "1+2=", "completion": "3", "answer": 3}]), tokenizer, 32, True,
                    "training")
    assert rows[0]["answer"] == 3
    assert rows[0]["completion_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(rows[0]["prompt_ids"]) == "1+2="
