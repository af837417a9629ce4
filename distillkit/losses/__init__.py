"""Divergences between the student and the teacher, taken over completion tokens only."""

from distillkit.losses.base import Divergence, LossOutput, StudentTokens, TeacherRequest, TeacherTokens
from distillkit.losses.full import FullDivergence
from distillkit.losses.sampled import SampledDivergence
from distillkit.losses.topk import TopKDivergence

__all__ = [
    "Divergence",
    "FullDivergence",
    "LossOutput",
    "SampledDivergence",
    "StudentTokens",
    "TeacherRequest",
    "TeacherTokens",
    "TopKDivergence",
]
