"""Teachers score the student's completion tokens: hidden states, top-k log-probs or token log-probs."""

from distillkit.teachers.live import LiveTeacher

__all__ = ["LiveTeacher"]
