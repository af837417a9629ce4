"""`distillkit compare`: a table of MLflow runs (the settings that differ, final metrics, tokens/s) and a PNG
of chosen metric curves.

    distillkit compare                                   # the `distillkit` experiment in outputs/mlflow.db
    distillkit compare --experiment sdpo_vs_grpo --metric eval/accuracy --metric rewards/mean --plot curves.png
    distillkit compare --filter "tags.method = 'sdpo'" --tracking-uri http://127.0.0.1:5000
    distillkit compare --sweep latest                    # the jobs of the newest sweep (`distillkit -m ...`)
"""

from __future__ import annotations

import argparse
import os
import sys

FINAL_METRICS = ("eval/accuracy", "eval/teacher_kl", "train/loss", "summary/tokens_per_s")
IGNORED_PARAMS = ("hydra", "tracking.", "data.num_eval")  # paths and bookkeeping, not settings


def differing_params(runs: list) -> list[str]:
    """Config keys whose values are not the same in every run: what the comparison is about."""
    keys = sorted({k for r in runs for k in r.data.params})
    keep = []
    for key in keys:
        if key.startswith(IGNORED_PARAMS):
            continue
        if len({r.data.params.get(key) for r in runs}) > 1:
            keep.append(key)
    return keep


def label(run) -> str:
    """The run's name and the start of its id: names can repeat (older runs), ids cannot."""
    return f"{run.info.run_name or 'run'} [{run.info.run_id[:6]}]"


def table(runs: list, params: list[str]) -> str:
    header = ["run", *params, *FINAL_METRICS]
    rows = [header]
    for r in runs:
        metrics = r.data.metrics
        rows.append([label(r), *(r.data.params.get(k, "") for k in params),
                     *(f"{metrics[m]:.4g}" if m in metrics else "-" for m in FINAL_METRICS)])
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)


def plot(client, runs: list, metrics: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for r in runs:
            history = sorted(client.get_metric_history(r.info.run_id, metric), key=lambda m: m.step)
            if history:
                ax.plot([m.step for m in history], [m.value for m in history], marker=".",
                        label=label(r))
        ax.set_title(metric)
        ax.set_xlabel("optimizer step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def sweep_filter(client, experiment_id: str, sweep: str) -> str:
    """`latest`, a parent run id or a sweep folder -> an MLflow filter for that sweep's job runs."""
    from distillkit.sweep import SWEEP_KIND

    if sweep == "latest" or os.path.isdir(sweep):
        where = f"tags.`distillkit.kind` = '{SWEEP_KIND}'"
        if sweep != "latest":
            where += f" and tags.`distillkit.sweep_dir` = '{os.path.abspath(sweep)}'"
        parents = client.search_runs([experiment_id], filter_string=where, order_by=["start_time DESC"],
                                     max_results=1)
        if not parents:
            raise LookupError(f"no sweep matches {sweep!r} (sweeps are the runs of `distillkit -m ...`)")
        sweep = parents[0].info.run_id
    return f"tags.mlflow.parentRunId = '{sweep}'"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="distillkit compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default="sqlite:///" + os.path.abspath("outputs/mlflow.db"))
    parser.add_argument("--experiment", default="distillkit")
    parser.add_argument("--filter", default="", help="an MLflow filter string, e.g. \"tags.method = 'gkd'\"")
    parser.add_argument("--sweep", help="only the jobs of one sweep: `latest`, its parent run id or its folder")
    parser.add_argument("--metric", action="append", help="a metric to plot (repeatable); default eval/accuracy")
    parser.add_argument("--plot", default="compare.png", help="where to write the PNG of the curves")
    args = parser.parse_args(argv)

    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(args.tracking_uri)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        print(f"distillkit compare: no experiment {args.experiment!r} at {args.tracking_uri}", file=sys.stderr)
        return 2
    where = args.filter
    if args.sweep:
        try:
            where = " and ".join(w for w in (sweep_filter(client, experiment.experiment_id, args.sweep), where) if w)
        except LookupError as err:
            print(f"distillkit compare: {err}", file=sys.stderr)
            return 2
    runs = client.search_runs([experiment.experiment_id], filter_string=where, order_by=["start_time ASC"])
    runs = [r for r in runs if r.data.tags.get("distillkit.kind") != "sweep"]  # a sweep's parent has no curves
    if not runs:
        print(f"distillkit compare: no runs in {args.experiment!r} match {where!r}", file=sys.stderr)
        return 2
    print(table(runs, differing_params(runs)))
    plot(client, runs, args.metric or ["eval/accuracy"], args.plot)
    print(f"\ncurves: {args.plot}")
    return 0
