"""`data.columns` (target <- source, copied), `data.chat` and `data.system_prompt`, through `load_examples` and the
config-facing `load_split`."""

from __future__ import annotations

import json

import pytest
from configs import compose_config
from datasets import Dataset

from distillkit.data.loading import as_chat, load_examples, load_split, map_columns, require_columns, tokenize
from distillkit.models import ConfigError, load_tokenizer

ROWS = [
    {"question": "What is 2+3?", "answer": "2+3=5\n#### 5", "source": "a"},
    {"question": "What is 4*2?", "answer": "4*2=8\n#### 8", "source": "b"},
    {"question": "What is 9-1?", "answer": "9-1=8\n#### 8", "source": "c"},
]


@pytest.fixture
def gsm_like(tmp_path):
    path = tmp_path / "gsm.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS))
    return path


def test_columns_are_copied_and_one_source_fills_two_targets(gsm_like):
    loaded = load_examples(str(gsm_like), columns={"prompt": "question", "privileged_context": "answer",
                                                   "completion": "answer"})
    assert len(loaded) == 3
    assert set(loaded.column_names) == {"question", "answer", "source", "prompt", "privileged_context", "completion"}
    for row, raw in zip(loaded, ROWS, strict=True):
        assert row["prompt"] == raw["question"]
        assert row["privileged_context"] == row["completion"] == row["answer"] == raw["answer"]  # `answer` stays
    require_columns(loaded, True, "training", {"privileged_context": "SDFT"})  # what the run then checks passes


def test_mapping_applies_after_num_examples_and_swaps_work(gsm_like):
    loaded = load_examples(str(gsm_like), num_examples=2, columns={"question": "answer", "answer": "question"})
    assert len(loaded) == 2
    assert loaded[0]["question"] == ROWS[0]["answer"] and loaded[0]["answer"] == ROWS[0]["question"]


def test_unknown_source_column_is_a_clear_config_error(gsm_like):
    with pytest.raises(ConfigError) as err:
        load_examples(str(gsm_like), columns={"prompt": "problem", "completion": "answer"}, where="evaluation")
    message = str(err.value)
    assert "prompt <- problem" in message and "['problem']" in message  # what was asked for
    assert "evaluation" in message
    assert "['question', 'answer', 'source']" in message  # the columns that exist
    with pytest.raises(ConfigError, match="a column name"):
        map_columns(Dataset.from_list(ROWS), {"prompt": 3})


def test_no_mapping_leaves_the_data_set_alone(gsm_like):
    plain = load_examples(str(gsm_like))
    assert plain.column_names == ["question", "answer", "source"]
    assert map_columns(plain, {}) is plain and map_columns(plain, None) is plain


def test_chat_wraps_string_prompts_with_an_optional_system_message(gsm_like):
    chat = load_examples(str(gsm_like), columns={"prompt": "question"}, chat=True)
    assert chat[0]["prompt"] == [{"role": "user", "content": "What is 2+3?"}]
    with_system = load_examples(str(gsm_like), columns={"prompt": "question"}, chat=True, system_prompt="Be brief.")
    assert with_system[1]["prompt"] == [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "What is 4*2?"}]
    # prompts that are chat messages already: kept, and given the system message only if they have none
    messages = Dataset.from_list([
        {"prompt": [{"role": "user", "content": "hi"}]},
        {"prompt": [{"role": "system", "content": "Own."}, {"role": "user", "content": "yo"}]},
    ])
    assert as_chat(messages)[0]["prompt"] == [{"role": "user", "content": "hi"}]
    wrapped = as_chat(messages, "Sys.")
    assert wrapped[0]["prompt"] == [{"role": "system", "content": "Sys."}, {"role": "user", "content": "hi"}]
    assert wrapped[1]["prompt"] == messages[1]["prompt"]


def test_system_prompt_without_chat_is_refused(gsm_like):
    with pytest.raises(ConfigError, match="data.chat=true"):
        load_examples(str(gsm_like), columns={"prompt": "question"}, system_prompt="Be brief.")


def test_builtin_tasks_take_the_mapping_too():
    loaded = load_examples("addition", num_examples=4, seed=0, columns={"privileged_context": "completion"},
                           chat=True)
    assert loaded[0]["privileged_context"] == loaded[0]["completion"]
    assert loaded[0]["prompt"][0]["role"] == "user"


def test_chat_prompts_get_the_chat_template(tiny_pair):
    """The tiny tokenizer knows digits and `+=` only: the template ends the system turn with `0`."""
    tokenizer = load_tokenizer(str(tiny_pair[0]))
    tokenizer.chat_template = ("{% for m in messages %}{{ m['content'] }}{% if m['role'] == 'system' %}0{% endif %}"
                               "{% endfor %}{% if add_generation_prompt %}={% endif %}")
    chat = as_chat(map_columns(Dataset.from_list([{"q": "1+2"}]), {"prompt": "q"}), system_prompt="9")
    (row,) = tokenize(chat, tokenizer, 10_000, False, "training")
    assert tokenizer.decode(row["prompt_ids"]) == "901+2="


def compose_data(*overrides):
    return compose_config(overrides).data


def test_config_defaults_change_nothing():
    data = compose_data()
    assert data.columns is None and data.eval_columns is None
    assert data.chat is False and data.system_prompt is None
    assert data.subset is None and data.eval_subset is None
    assert load_split(compose_data("data.num_train=5"), "train")[:] == load_examples("addition", "train", 5, 0)[:]


def test_load_split_reads_the_data_section(gsm_like):
    data = compose_data(f"data.train={gsm_like}", f"data.eval={gsm_like}", "data.num_train=2", "data.num_eval=null",
                        "data.columns={prompt: question, completion: answer}", "data.chat=true",
                        "data.system_prompt=Be brief.")
    train, evaluation = load_split(data, "train"), load_split(data, "eval")
    assert len(train) == 2 and len(evaluation) == 3
    assert data.eval_columns == data.columns  # eval_columns follows columns unless set
    for rows in (train, evaluation):
        assert rows[0]["prompt"] == [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "What is 2+3?"}]
        assert rows[0]["completion"] == ROWS[0]["answer"]
    # a different mapping for the evaluation data set
    data = compose_data(f"data.train={gsm_like}", f"data.eval={gsm_like}", "data.num_eval=null",
                        "data.columns={prompt: question}", "data.eval_columns={prompt: source}")
    assert load_split(data, "eval")[0]["prompt"] == "a"
    with pytest.raises(ConfigError, match="evaluation data set"):
        load_split(compose_data(f"data.eval={gsm_like}", "data.eval_columns={prompt: nope}"), "eval")


def test_load_split_accepts_a_config_without_the_new_keys(gsm_like):
    """A config written before `columns`, `chat`, `subset` existed (e.g. a saved run's config.yaml)."""
    old = {"train": str(gsm_like), "split": "train", "num_train": None, "seed": 0,
           "eval": "addition", "eval_split": "test", "num_eval": 3, "eval_seed": 1}
    assert load_split(old, "train").column_names == ["question", "answer", "source"]
    assert len(load_split(old, "eval")) == 3
    with pytest.raises(ValueError, match="which"):
        load_split(old, "test")
