"""Data: the built-in synthetic tasks, loading through `datasets`, and tokenization to prompt/completion ids."""
