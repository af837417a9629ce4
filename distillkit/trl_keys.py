"""TRL config keys that distillkit spells differently, and the refusal that names distillkit's key.

A TRL config does not move over key for key (docs/trl.md has the whole mapping). A TRL key given to distillkit
would otherwise end as Hydra's "not in struct" (without `+`) or as an unexpected keyword argument of the method's
constructor (with `+`, or in a YAML file): both name the wrong thing. This names the key to use.
"""

from __future__ import annotations

from collections.abc import Mapping

from distillkit.errors import ConfigError

# TRL key (GKDConfig, DistillationConfig, SDFTConfig, SDPOConfig, TrainingArguments) -> what to write instead.
TRL_ONLY_KEYS: dict[str, str] = {
    "max_new_tokens": "train.max_completion_length (GKDConfig's max_new_tokens)",
    "max_completion_length": "train.max_completion_length",
    "max_prompt_length": "nothing: prompts are never cut; a prompt longer than the context minus "
                         "train.max_completion_length is refused with its row number",
    "distillation_alpha": "method.beta (the same divergence coefficient: 0 forward KL, 1 reverse KL)",
    "distillation_mode": "loss=full (full_logits), loss=topk (topk_logits) or loss=sampled (sampled_token)",
    "distillation_topk": "loss.k, with loss=topk (distillkit's support is the teacher's top-k, TRL's the "
                         "student's)",
    "distillation_add_tail": "loss.add_tail, with loss=topk (default true; TRL's default is false)",
    "teacher_model_kind": "teacher=base, teacher=live (teacher.model=null: the current student) or teacher=ema",
    "teacher_update_rate": "teacher.teacher_update_rate, with teacher=ema",
    "teacher_sync_steps": "teacher.teacher_sync_steps, with teacher=ema",
    "teacher_model_name_or_path": "teacher.model, with teacher=live",
    "teacher_model_init_kwargs": "teacher.dtype and teacher.trust_remote_code",
    "model_init_kwargs": "model.dtype, model.trust_remote_code and model.attn_implementation",
    "learning_rate": "train.lr",
    "per_device_train_batch_size": "train.batch_size (prompts, or rollouts under sdft/sdpo, per process)",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps",
    "max_steps": "train.steps",
    "lr_scheduler_type": "train.lr_scheduler",
    "bf16": "train.mixed_precision=bf16",
    "fp16": "train.mixed_precision=fp16",
    "gradient_checkpointing": "model.gradient_checkpointing",
    "use_vllm": "generation=vllm",
    "vllm_gpu_memory_utilization": "generation.gpu_memory_utilization, with generation=vllm",
    "vllm_enable_sleep_mode": "generation.enable_sleep_mode, with generation=vllm",
    "vllm_mode": "generation=vllm (colocate) or generation=vllm_server (server)",
    "vllm_server_base_url": "generation.urls, with generation=vllm_server",
    "vllm_server_host": "generation.urls, with generation=vllm_server",
    "vllm_server_port": "generation.urls, with generation=vllm_server",
    "top_p": "generation.top_p",
    "top_k": "generation.top_k",
    "reward_weights": "a `weight` in each entry of method.reward_funcs",
    "loss_type": "nothing: distillkit always divides by the completion tokens of the whole step (TRL's 'dapo')",
}

def trl_hint(dotted_key: str) -> str | None:
    """'method.max_new_tokens is TRL's key; use ...' for a TRL-only leaf key, else None."""
    leaf = dotted_key.rsplit(".", 1)[-1]
    if leaf not in TRL_ONLY_KEYS:
        return None
    return (f"{dotted_key} is a TRL config key that distillkit does not read; use {TRL_ONLY_KEYS[leaf]} "
            "(docs/trl.md maps every TRL key).")


def check_trl_keys(cfg: Mapping) -> None:
    """Refuse a TRL-only key under `method` (from `+method.key=...` or a YAML file), before any model loads.

    Only `method` is checked: TRL configs are flat, so that is where a TRL key lands, and other groups own some
    of these names (`generation.top_p`, `generation.max_completion_length`, `teacher.teacher_update_rate`).
    """
    method = cfg.get("method")
    if not isinstance(method, Mapping):
        return
    for key in method:
        hint = trl_hint(f"method.{key}")
        if hint:
            raise ConfigError(hint)
