"""Derive a student from its teacher by keeping a subset of its decoder layers: `distillkit make-student`.

    distillkit make-student --from TEACHER_DIR --layers 0,10,20,29 --out STUDENT_DIR [--force] [--no-verify]

The DistilBERT / Minitron-style start: the student is the teacher's embeddings, the kept decoder layers (their
weights unchanged, in the given order), the final norm and the LM head; tied embeddings stay tied. Generic over
Hugging Face causal LMs whose decoder (`model.get_decoder()`) holds its layers in a `layers` ModuleList (Llama,
Qwen2/3, Mistral, Gemma, SmolLM, Phi3, ...):

- `config.num_hidden_layers` becomes the number of kept layers, and per-layer config lists (`layer_types`, and
  others with one entry per layer) keep the kept layers' entries;
- every `layer_idx` attribute inside a kept layer (the attention module's, which indexes the KV cache) becomes the
  layer's new position;
- the model (with its generation config) and the tokenizer are saved to a temporary folder beside `--out`, which
  is renamed into place, with `make_student.json` saying where the student came from;
- unless `--no-verify`, the saved student is loaded back and its logits on a probe sequence compared with the
  in-memory student's.

In Python: `derive_student(model, layers)` (in place, returns the model) and `make_student(source, layers, out)`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from distillkit.errors import ConfigError
from distillkit.real_models import current_umask

# Config keys that hold one entry per decoder layer, subset like the layers themselves.
PER_LAYER_KEYS = ("layer_types", "no_rope_layers")


def parse_layers(text: str) -> list[int]:
    """`"0,10,20,29"` -> `[0, 10, 20, 29]`; ranges `"0-3,29"` are allowed."""
    layers: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ConfigError(f"--layers {text!r}: an empty entry; give comma-separated layer indices, e.g. 0,10,20,29.")
        span = re.fullmatch(r"(\d+)-(\d+)", part)
        if span:
            layers.extend(range(int(span[1]), int(span[2]) + 1))
            continue
        try:
            layers.append(int(part))
        except ValueError:
            raise ConfigError(
                f"--layers {text!r}: {part!r} is not a layer index; give comma-separated integers, e.g. 0,10,20,29."
            ) from None
    return layers


def check_layers(layers: list[int], num_layers: int) -> list[int]:
    """Kept layers must be non-empty, in range, strictly increasing (sorted, no repeats)."""
    layers = list(layers)
    if not layers:
        raise ConfigError("No layers to keep: give at least one, e.g. --layers 0,10,20,29.")
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise ConfigError(f"Layers {bad} are out of range: the teacher has {num_layers} layers, 0 to {num_layers - 1}.")
    repeated = sorted({i for i in layers if layers.count(i) > 1})
    if repeated:
        raise ConfigError(f"Layers {repeated} are given more than once; each kept layer appears once.")
    if layers != sorted(layers):
        raise ConfigError(f"Layers {layers} are not in increasing order; give them sorted: {sorted(layers)}.")
    return layers


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder's layer list (`model.get_decoder().layers`)."""
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ConfigError(
            f"{type(model).__name__}: cannot find its decoder layers (expected model.get_decoder().layers, a "
            "ModuleList, as in Llama, Qwen, Mistral and Gemma). make-student supports those decoder-only layouts."
        )
    return layers


def derive_student(model: torch.nn.Module, layers: list[int]) -> torch.nn.Module:
    """Keep only `layers` of `model`'s decoder, in place: modules, config and layer indices. Returns the model."""
    module_list = decoder_layers(model)
    config = model.config
    num_layers = config.num_hidden_layers
    if len(module_list) != num_layers:
        raise ConfigError(f"{type(model).__name__} has {len(module_list)} decoder layers but its config says "
                          f"num_hidden_layers={num_layers}.")
    layers = check_layers(layers, num_layers)
    kept = [module_list[i] for i in layers]
    for new_index, layer in enumerate(kept):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    decoder = model.get_decoder()
    decoder.layers = torch.nn.ModuleList(kept)
    for key in PER_LAYER_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, (list, tuple)) and len(value) == num_layers:
            setattr(config, key, type(value)(value[i] for i in layers))
    config.num_hidden_layers = len(layers)
    if getattr(decoder, "config", None) is not None and decoder.config is not config:  # a nested text config
        decoder.config.num_hidden_layers = len(layers)
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (a tied head counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def probe_ids(vocab_size: int, length: int = 12) -> torch.Tensor:
    return (torch.arange(1, length + 1) * 7919 % vocab_size).unsqueeze(0)


def make_student(source: str | Path, layers: list[int], out: str | Path, force: bool = False, verify: bool = True,
                 trust_remote_code: bool = False, log=print) -> Path:
    """Load `source` (an HF folder or hub name), keep `layers`, save model + tokenizer to `out` atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise ConfigError(f"{out} exists and is not empty; choose another --out or pass --force.")
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, trust_remote_code=trust_remote_code)
    teacher_layers, teacher_params = model.config.num_hidden_layers, count_parameters(model)
    derive_student(model, layers)
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):  # a folder with weights only: the student has no tokenizer either
        tokenizer = None
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it private; the final folder is not
    try:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        info = {"from": str(source), "layers": list(layers), "teacher_num_hidden_layers": teacher_layers,
                "teacher_parameters": teacher_params, "student_parameters": count_parameters(model)}
        (staging / "make_student.json").write_text(json.dumps(info, indent=2) + "\n")
        if verify:
            probe = probe_ids(model.config.vocab_size)
            reloaded = AutoModelForCausalLM.from_pretrained(staging, dtype=torch.float32,
                                                            trust_remote_code=trust_remote_code).eval()
            with torch.no_grad():
                if not torch.equal(reloaded(probe).logits, model(probe).logits):
                    raise ConfigError(f"The saved student does not reproduce the derived one's logits "
                                      f"({type(model).__name__}); it is not saved. Please report this.")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"kept layers {list(layers)} of {teacher_layers}: {teacher_params / 1e6:.1f} M -> "
        f"{info['student_parameters'] / 1e6:.1f} M parameters; saved to {out} in {time.perf_counter() - t0:.1f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="distillkit make-student",
        description="Derive a student from a teacher by keeping a subset of its decoder layers (plus embeddings, "
        "final norm and head).",
    )
    parser.add_argument("--from", dest="source", required=True, help="the teacher: an HF folder (or hub name)")
    parser.add_argument("--layers", required=True, help="teacher layers to keep, increasing: 0,10,20,29 or 0-3")
    parser.add_argument("--out", required=True, type=Path, help="the student's folder")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip reloading the saved student to check its logits")
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the folder alone
            make_student(args.source, parse_layers(args.layers), args.out, force=args.force, verify=args.verify,
                         trust_remote_code=args.trust_remote_code,
                         log=lambda text: print(f"distillkit make-student: {text}", file=sys.stderr))
    except ConfigError as err:
        print(f"distillkit: error: {err}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
