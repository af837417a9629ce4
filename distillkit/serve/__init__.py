"""The teacher server (`distillkit serve-teacher`) and its client (`teacher=remote`).

Importing this package loads neither torch nor FastAPI; `server` and `engine` do.
"""
