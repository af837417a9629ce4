"""Teachers score the student's completion tokens: hidden states, top-k log-probs or token log-probs."""

from distillkit.teachers.base import BaseTeacher
from distillkit.teachers.cache import CacheTeacher
from distillkit.teachers.ema import EmaTeacher
from distillkit.teachers.live import LiveTeacher
from distillkit.teachers.remote import RemoteTeacher
from distillkit.teachers.router import RouterTeacher

__all__ = ["BaseTeacher", "CacheTeacher", "EmaTeacher", "LiveTeacher", "RemoteTeacher", "RouterTeacher"]
