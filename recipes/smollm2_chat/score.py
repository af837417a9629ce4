"""Score models on the SmolLM2 chat recipe's 81 multiplication facts: is the answer right?

    python recipes/smollm2_chat/score.py MODEL_DIR --out FILE.json [--label NAME] [--eval .../data/eval.jsonl]

Greedy answers through the chat template (at most 16 new tokens; make_data.greedy). An answer is **right** when
the number it gives (the first number after the first "=", else after the first " is ": "The answer is
12.") equals a * b, whatever follows it (SmolLM2 sometimes rambles on). Reported over
all 81 facts, the 60 training facts and the 21 held-out facts. Also reported: `format` (the answer starts with
"{a} x {b} =", the teacher's phrasing) and `exact` (the whole answer equals the teacher's, make_data.py's
`completion`, then EOS: what distillkit's built-in eval/accuracy measures).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_data import answer_number, greedy  # noqa: E402


def score(model_dir: Path, rows: list[dict]) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    t0 = time.perf_counter()
    texts = greedy(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=16)
    outputs = []
    for row, text in zip(rows, texts, strict=True):
        given = answer_number(text)
        outputs.append({"prompt": row["prompt"], "split": row["split"], "answer": row["answer"], "text": text,
                        "given": given, "right": given == row["answer"],
                        "format": text.strip().startswith(f"{row['a']} x {row['b']} ="),
                        "exact": text.strip() == row["completion"]})

    def rate(key: str, split: str | None = None) -> float:
        part = [o for o in outputs if split is None or o["split"] == split]
        return sum(o[key] for o in part) / len(part)

    return {"right": rate("right"), "right_train": rate("right", "train"), "right_held_out": rate("right", "held_out"),
            "format": rate("format"), "exact": rate("exact"), "n": len(outputs),
            "generate_seconds": time.perf_counter() - t0, "outputs": outputs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--label", default=None)
    parser.add_argument("--eval", type=Path, default=HERE / "data" / "eval.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [json.loads(line) for line in args.eval.read_text().splitlines() if line.strip()]
    result = {"label": args.label or args.model.name, "model": str(args.model), **score(args.model, rows)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['label']}: right {result['right']:.1%} (train facts {result['right_train']:.1%}, held out "
          f"{result['right_held_out']:.1%}), teacher's format {result['format']:.1%}, exact {result['exact']:.1%}")


if __name__ == "__main__":
    main()
