"""`method=sdpo`: self-distillation policy optimization (Hübotter et al., 2026, arXiv 2601.20802).

Each prompt gets `num_generations` rollouts, scored by reward functions. A rollout's teacher is the model
re-prompted with the first *other* successful rollout of its group (reward >= `success_reward_threshold`) and,
optionally, environment feedback (the `privileged_context` column). Rollouts with neither are masked out of the
distillation term. The loss per token is (1 - w) * PPO-clip policy term + w * distillation, w =
`distillation_weight`: w=0 is GRPO-like (no teacher forward), w=1 is pure self-distillation.
"""

from __future__ import annotations

import logging
import math
import re

import torch

from distillkit.batch import collate
from distillkit.data.loading import encode_prompt
from distillkit.distributed import gather_lists, sum_across_processes
from distillkit.errors import ConfigError
from distillkit.losses.policy import PPOClipTerm
from distillkit.methods.micro_batch import MicroBatch, RolloutContext, per_token, split_evenly
from distillkit.methods.self_distillation import SelfDistillationMethod, grouped
from distillkit.methods.teacher_prompts import check_template, rewrite_prompt
from distillkit.rewards import load_reward_functions

log = logging.getLogger(__name__)
SCALE_REWARDS = ("group", "batch", "none")
STD_EPS = 1e-4  # TRL's: (r - mean) / (std + 1e-4)
ID_COLUMNS = ("prompt", "prompt_ids", "completion_ids", "teacher_prompt_ids")


def group_advantages(rewards: torch.Tensor, num_generations: int, scale: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(r - group mean) / (std + 1e-4); std is the group's (`group`), the batch's (`batch`) or 1 (`none`).

    Returns the advantages and each group's reward std (for the flat-group diagnostics).
    """
    groups = rewards.view(-1, num_generations)
    mean = groups.mean(dim=1).repeat_interleave(num_generations)
    group_std = groups.std(dim=1) if num_generations > 1 else torch.zeros(groups.shape[0])
    if scale == "group":
        std = group_std.repeat_interleave(num_generations)
    elif scale == "batch":
        std = rewards.std().expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    else:
        std = torch.ones_like(rewards)
    return (rewards - mean) / (std + STD_EPS), group_std


def demonstration_indices(
    rewards: list[float], num_generations: int, threshold: float, exclude_self: bool
) -> list[int | None]:
    """For each rollout, the first successful rollout of its group (other than itself if `exclude_self`)."""
    out: list[int | None] = []
    for i in range(len(rewards)):
        start = i - i % num_generations
        candidates = (j for j in range(start, start + num_generations) if not (exclude_self and j == i))
        out.append(next((j for j in candidates if rewards[j] >= threshold), None))
    return out


class SDPO(SelfDistillationMethod):
    def __init__(
        self,
        reward_funcs: list,
        beta: float = 1.0,
        temperature: float = 1.0,
        num_generations: int = 8,
        num_iterations: int = 1,
        distillation_is_clip: float | None = 2.0,
        distillation_weight: float = 1.0,
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        scale_rewards: str = "group",
        success_reward_threshold: float = 1.0,
        use_successful_as_teacher: bool = True,
        dont_reprompt_on_self_success: bool = True,
        include_environment_feedback: bool = False,
        environment_feedback_only_without_solution: bool = False,
        reprompt_template: str = "{prompt}{solution}{feedback}\n\nCorrectly solve the original question.\n",
        solution_template: str = "\nCorrect solution:\n\n{successful_previous_attempt}\n\n",
        feedback_template: str = "\nThe following is feedback from your unsuccessful earlier attempt:\n\n{feedback_raw}\n\n",
        remove_thinking_from_demonstration: bool = False,
        max_reprompt_len: int = 10240,
        diagnostics_warning_interval: int = 10,
        diagnostics_flat_tolerance: float = 1e-8,
    ):
        super().__init__(beta, temperature, num_generations, num_iterations, distillation_is_clip)
        self.rewards = load_reward_functions(reward_funcs)
        self.distillation_weight = float(distillation_weight)
        if not 0.0 <= self.distillation_weight <= 1.0:
            raise ConfigError(f"method.distillation_weight={distillation_weight} must lie in [0, 1].")
        if self.num_generations < 2:
            raise ConfigError(
                f"method.num_generations={num_generations}: SDPO compares rollouts within a group (advantages, "
                "successful siblings), so it needs at least 2."
            )
        self.epsilon = float(epsilon)
        self.epsilon_high = self.epsilon if epsilon_high is None else float(epsilon_high)
        if self.epsilon < 0 or self.epsilon_high < 0:
            raise ConfigError("method.epsilon and method.epsilon_high must be >= 0.")
        if scale_rewards not in SCALE_REWARDS:
            raise ConfigError(f"method.scale_rewards={scale_rewards!r} must be one of {list(SCALE_REWARDS)}.")
        self.scale_rewards = scale_rewards
        self.success_reward_threshold = float(success_reward_threshold)
        self.use_successful_as_teacher = bool(use_successful_as_teacher)
        self.dont_reprompt_on_self_success = bool(dont_reprompt_on_self_success)
        self.include_environment_feedback = bool(include_environment_feedback)
        self.environment_feedback_only_without_solution = bool(environment_feedback_only_without_solution)
        fields = ("prompt", "solution", "feedback")
        check_template("reprompt_template", reprompt_template, ("prompt",), fields)
        check_template("solution_template", solution_template, ("successful_previous_attempt",),
                       ("successful_previous_attempt",))
        check_template("feedback_template", feedback_template, ("feedback_raw",), ("feedback_raw",))
        self.reprompt_template, self.solution_template = reprompt_template, solution_template
        self.feedback_template = feedback_template
        self.remove_thinking_from_demonstration = bool(remove_thinking_from_demonstration)
        self.max_reprompt_len = int(max_reprompt_len)
        self.warning_interval = int(diagnostics_warning_interval)
        self.flat_tolerance = float(diagnostics_flat_tolerance)
        self._degenerate_steps = {"flat": 0, "no_reprompt": 0}
        self._warned_unused_feedback = False

    def token_term(self, micro: MicroBatch, device: torch.device) -> PPOClipTerm | None:
        """The PPO-clip policy term on rollouts with advantages (all of them unless w = 1)."""
        if micro.advantages is None:
            return None
        old = None if micro.old_logprobs is None else micro.old_logprobs.to(device)
        return PPOClipTerm(micro.advantages.to(device), old, self.epsilon, self.epsilon_high)

    def required_columns(self) -> dict[str, str]:
        if self.include_environment_feedback:
            return {"privileged_context": "method.include_environment_feedback=true reads feedback from it"}
        return {}

    # ---- rewards
    def score(self, rows: list[dict], completions: list[list[int]], tokenizer) -> tuple[torch.Tensor, dict]:
        """Weighted reward per rollout ([S]), and the per-function means for the metrics."""
        return self.weigh(self.reward_table(rows, completions, tokenizer))

    def reward_table(self, rows: list[dict], completions: list[list[int]], tokenizer) -> torch.Tensor:
        """Each reward function's value per rollout: [S, F], NaN where a function gave None."""
        chat = not isinstance(rows[0]["prompt"], str)
        texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
        decoded = [[{"role": "assistant", "content": t}] for t in texts] if chat else texts
        columns = {k: [r.get(k) for r in rows] for k in rows[0] if k not in ID_COLUMNS}
        table = torch.full((len(rows), len(self.rewards)), math.nan)
        for f, reward in enumerate(self.rewards):
            values = reward.fn(prompts=[r["prompt"] for r in rows], completions=decoded, completion_ids=completions,
                               **columns)
            if len(values) != len(rows):
                raise ValueError(f"Reward function {reward.name} returned {len(values)} values for {len(rows)} "
                                 "completions.")
            table[:, f] = torch.tensor([math.nan if v is None else float(v) for v in values])
        return table

    def weigh(self, table: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The reward table's weighted sum per rollout ([S]), and the per-function means for the metrics."""
        weights = torch.tensor([r.weight for r in self.rewards])
        rewards = (table * weights).nansum(dim=1)
        means = {f"rewards/{r.name}/mean": float(table[:, f].nanmean()) for f, r in enumerate(self.rewards)}
        return rewards, means

    # ---- teacher prompts
    def teacher_prompt(self, prompt, demonstration: str | None, feedback: str | None):
        solution = "" if demonstration is None else self.solution_template.format(
            successful_previous_attempt=demonstration)
        feedback_text = "" if feedback is None else self.feedback_template.format(feedback_raw=feedback)
        return rewrite_prompt(prompt, lambda q: self.reprompt_template.format(prompt=q, solution=solution,
                                                                               feedback=feedback_text))

    def demonstration_text(self, completion: list[int], tokenizer) -> str:
        text = tokenizer.decode(completion, skip_special_tokens=True)
        if self.remove_thinking_from_demonstration:
            text = re.sub(r"<think>.*?</think>", "", text, flags=re.DOTALL).strip()
        return text

    def rollouts(self, rows: list[dict], ctx: RolloutContext) -> list[MicroBatch]:
        g = self.num_generations
        completions = ctx.generator.generate([r["prompt_ids"] for r in rows], n=g)
        seq_rows = grouped(rows, g)
        local_table = self.reward_table(seq_rows, completions, ctx.tokenizer)
        # Advantages and reprompting need whole groups, the metrics the whole step: computed on the batch gathered
        # across processes.
        gathered, mine = gather_lists(list(zip(local_table.tolist(), completions,
                                               [r.get("privileged_context") for r in seq_rows], strict=True)))
        all_table, all_completions, all_feedback = (list(column) for column in zip(*gathered, strict=True))
        rewards, reward_means = self.weigh(torch.tensor(all_table))
        all_rewards = rewards.tolist()
        advantages, group_std = group_advantages(rewards, g, self.scale_rewards)
        demos = (demonstration_indices(all_rewards, g, self.success_reward_threshold,
                                       self.dont_reprompt_on_self_success)
                 if self.use_successful_as_teacher else [None] * len(all_rewards))
        has_feedback = [isinstance(f, str) and f.strip() != "" for f in all_feedback]
        use_feedback = [self.include_environment_feedback and has_feedback[i]
                        and not (self.environment_feedback_only_without_solution and demos[i] is not None)
                        for i in range(len(all_rewards))]
        active = [demos[i] is not None or use_feedback[i] for i in range(len(all_rewards))]
        if any(has_feedback) and not self.include_environment_feedback and not self._warned_unused_feedback:
            self._warned_unused_feedback = True
            log.warning("The batch has privileged_context (environment feedback) but "
                        "method.include_environment_feedback=false, so it is ignored.")

        teacher_prompts, truncated = [], 0
        for local_i, i in enumerate(range(mine.start, mine.stop)):
            row = seq_rows[local_i]
            if not active[i] or self.distillation_weight == 0:
                teacher_prompts.append(row["prompt_ids"])  # masked out; the student's own view keeps shapes simple
                continue
            demo = None if demos[i] is None else self.demonstration_text(all_completions[demos[i]], ctx.tokenizer)
            ids = encode_prompt(self.teacher_prompt(row["prompt"], demo, all_feedback[i] if use_feedback[i] else None),
                                ctx.tokenizer)
            truncated += len(ids) > self.max_reprompt_len
            teacher_prompts.append(ids[-self.max_reprompt_len:])
        truncated = sum_across_processes({"truncated": truncated})["truncated"]  # each process encodes its own

        sequences = list(zip(seq_rows, completions, teacher_prompts, advantages[mine].tolist(), active[mine],
                             strict=True))
        micros = []
        for part in split_evenly(sequences, ctx.num_micro_batches):
            part_rows, part_completions, part_teacher, part_adv, part_active = (list(x) for x in zip(*part, strict=True))
            student = collate([r["prompt_ids"] for r in part_rows], part_completions, ctx.pad_id)
            distills = self.distillation_weight > 0 and any(part_active)
            micros.append(MicroBatch(
                student,
                collate(part_teacher, part_completions, ctx.pad_id) if distills else None,
                on_policy=True,
                rows=part_rows,
                distill_weights=per_token([float(a) for a in part_active], part_completions) if distills else None,
                advantages=per_token(part_adv, part_completions) if self.distillation_weight < 1 else None,
            ))
        self._metrics = self.rollout_metrics(rewards, group_std, demos, active, has_feedback, use_feedback,
                                             reward_means, truncated)
        return micros

    def rollout_metrics(self, rewards, group_std, demos, active, has_feedback, use_feedback, reward_means,
                        truncated) -> dict[str, float]:
        g = self.num_generations
        n = max(len(active), 1)
        success = (rewards >= self.success_reward_threshold).float()
        flat = (group_std <= self.flat_tolerance).float()
        metrics = {
            "rewards/mean": float(rewards.mean()),
            "rewards/std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
            **reward_means,
            "self_distillation/success_sample_fraction": float(success.mean()),
            "self_distillation/success_group_fraction": float(success.view(-1, g).amax(1).mean()),
            "self_distillation/with_demonstration_fraction": sum(d is not None for d in demos) / n,
            "self_distillation/feedback_available_fraction": sum(has_feedback) / n,
            "self_distillation/feedback_used_fraction": sum(use_feedback) / n,
            "self_distillation/reprompt_fraction": sum(active) / n,
            "self_distillation/reprompt_truncated": float(truncated),
            "rewards/flat_group_fraction": float(flat.mean()),
        }
        self.warn_if_degenerate("flat", bool(flat.all()) and self.distillation_weight < 1,
                                "every group of rollouts got the same reward: the policy term has no signal. "
                                "Check the reward functions, or raise the temperature.")
        self.warn_if_degenerate("no_reprompt", sum(active) == 0 and self.distillation_weight > 0,
                                "no rollout had a successful sibling or feedback: the distillation term is zero. "
                                "Lower method.success_reward_threshold, or raise num_generations.")
        return metrics

    def warn_if_degenerate(self, key: str, degenerate: bool, message: str) -> None:
        """Warn at the first degenerate step and then every `diagnostics_warning_interval` in a row."""
        self._degenerate_steps[key] = self._degenerate_steps[key] + 1 if degenerate else 0
        count = self._degenerate_steps[key]
        if degenerate and self.warning_interval and (count == 1 or count % self.warning_interval == 0):
            log.warning("SDPO, %d step(s) in a row: %s", count, message)
