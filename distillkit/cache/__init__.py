"""A teacher's log-probs scored once and kept on disk: `distillkit cache-teacher` writes them, `teacher=cache` reads
them (docs/teacher-cache.md)."""
