"""Loading causal LMs and reaching the two pieces the losses need: the decoder and the LM head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from distillkit.errors import ConfigError  # noqa: F401  (re-exported: older imports name it from here)
from distillkit.lm_head import LMHead, lm_head

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def torch_dtype(name: str) -> Any:
    if name not in DTYPES:
        raise ConfigError(f"dtype={name!r} is not one of {sorted(DTYPES)}")
    return DTYPES[name]


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """The first thing that reads a model name: a hub name that cannot be fetched is refused here, in one line."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except OSError as err:  # transformers' "not a local folder and not reachable / not found on the hub"
        raise ConfigError(
            f"Cannot load the model {name!r}: it is not a local folder, and the hub answered: "
            f"{str(err).strip().splitlines()[0]} Check the name or path (model.student, teacher.model), or fetch "
            "the model on a machine with hub access."
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_config(name: str, trust_remote_code: bool = False):
    return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)


def load_causal_lm(
    name: str, dtype: str, device: torch.device, trust_remote_code: bool = False, attn_implementation=None
) -> PreTrainedModel:
    kwargs = {"dtype": torch_dtype(dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(name, **kwargs).to(device)
    sync_from_first_process(model)
    return model


def sync_from_first_process(model: torch.nn.Module) -> None:
    """Under `accelerate launch` with an FSDP config that has `fsdp_cpu_ram_efficient_loading` (accelerate's
    default), transformers reads the weights on each machine's first process only and fills the others with zeros,
    expecting the trainer to copy them over: copy them from process 0. This follows what transformers did while
    loading, whatever `distributed.strategy` says, so it is the loader's business, not a strategy's."""
    import torch.distributed as dist
    from transformers.integrations import is_fsdp_enabled

    if not is_fsdp_enabled():
        return
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)


def context_length(config) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None) or getattr(getattr(config, "text_config", None), key, None)
        if value:
            return int(value)
    return None


def embedding_rows(config) -> int:
    return int(getattr(config, "vocab_size", None) or config.get_text_config().vocab_size)


def shared_vocab_size(student_tok, teacher_tok, student_config, teacher_config) -> int:
    """The vocabulary rows both LM heads mean the same thing by.

    Identical tokenizers whose embedding matrices are padded to different sizes (Qwen2.5-0.5B has 151,936 rows,
    Qwen2.5-7B 152,064) share the prefix that covers the tokenizer. Anything else is a real mismatch.
    """
    if student_tok.get_vocab() != teacher_tok.get_vocab():
        only_s = len(set(student_tok.get_vocab()) - set(teacher_tok.get_vocab()))
        only_t = len(set(teacher_tok.get_vocab()) - set(student_tok.get_vocab()))
        raise ConfigError(
            "The teacher and the student use different tokenizers "
            f"({only_s} tokens only in the student's, {only_t} only in the teacher's; sizes {len(student_tok)} "
            f"and {len(teacher_tok)}). Token-level distillation needs one vocabulary: pick a teacher from the "
            "student's model family, or set teacher.model to a model with the student's tokenizer."
        )
    rows = min(embedding_rows(student_config), embedding_rows(teacher_config))
    if rows < len(student_tok):
        raise ConfigError(
            f"The LM heads have {rows} rows but the tokenizer has {len(student_tok)} tokens: the checkpoints "
            "do not match their tokenizer."
        )
    return rows


@dataclass
class DecoderAndHead:
    """The transformer body (gives last hidden states) and the LM head of a causal LM, PEFT-wrapped or not."""

    decoder: torch.nn.Module
    head: torch.nn.Module
    root: torch.nn.Module | None = None  # the causal LM
    forward_through_root: bool = False  # set by a strategy whose root forward is what gathers the shards (FSDP)

    def lm_head(self, vocab_size: int | None = None) -> LMHead:
        """The head as the model applies it (bias, logit scale, softcap), cut to `vocab_size` rows."""
        return lm_head(self.root, vocab_size)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.forward_through_root:
            return self._hidden_states_through_root(input_ids, attention_mask)
        out = self.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return last_hidden_state(out)

    def _hidden_states_through_root(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Under FSDP only the root's forward gathers the embeddings, the final norm and the head (and keeps them
        gathered until its backward), so run it, computing one position's logits, and catch the decoder's output."""
        caught: list[torch.Tensor] = []
        hook = self.decoder.register_forward_hook(lambda _m, _a, out: caught.append(last_hidden_state(out)))
        try:
            self.root(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1)
        finally:
            hook.remove()
        return caught[-1]


def last_hidden_state(decoder_output) -> torch.Tensor:
    return decoder_output.last_hidden_state if hasattr(decoder_output, "last_hidden_state") else decoder_output[0]


def decoder_and_head(model: torch.nn.Module) -> DecoderAndHead:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return DecoderAndHead(base.get_decoder(), base.get_output_embeddings(), base)


def is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


def apply_lora(model: PreTrainedModel, lora: dict) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model
