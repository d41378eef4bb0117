"""Stopping at convergence: the rule on curves, a real run that stops, its resume after a kill,
and the replay that measures what the switch changes on finished runs."""
import math

import pandas as pd
import pytest
from _runs import fpt, kill_after_first_checkpoint

from fpt_core import convergence, results
from fpt_core.cell import make_cell
from fpt_core.run import Run
from fpt_core.train import train_cell

RUN = Run(progress=False)
# a tiny model that reaches its plateau on bit-xor well inside the budget
CELL = {"task": "bit-xor", "backbone": "gpt2-tiny", "init": "random", "trainable": "all",
        "steps": 600, "eval_every": 20, "eval_size": 128, "batch_size": 32, "patience": 3}


def curve(*accuracies, key="test_acc"):
    return [{"step": 10 * (i + 1), "test_acc": a if key == "test_acc" else 0.0,
             "val_acc": a if key == "val_acc" else math.nan} for i, a in enumerate(accuracies)]


def test_converged_once_patience_evaluations_gain_less_than_a_point():
    assert not convergence.converged(curve(0.5, 0.6, 0.7), patience=2)
    assert convergence.converged(curve(0.5, 0.7, 0.705, 0.709), patience=2)
    assert not convergence.converged(curve(0.5, 0.7, 0.705, 0.711), patience=2)  # 1.1 points
    assert not convergence.converged(curve(0.7, 0.7), patience=2)  # too few evaluations


def test_the_rule_watches_validation_where_there_is_one():
    # test accuracy flat, validation still rising: not converged, since validation decides
    rising = [dict(r, test_acc=0.5) for r in curve(0.5, 0.6, 0.7, 0.8, key="val_acc")]
    assert convergence.monitored(rising) == "val_acc"
    assert not convergence.converged(rising, patience=2)
    assert convergence.monitored(curve(0.5)) == "test_acc"


def test_stop_index_is_the_first_evaluation_the_online_rule_stops_at():
    accuracies = (0.3, 0.5, 0.8, 0.805, 0.79, 0.81, 0.9)
    assert convergence.stop_index(curve(*accuracies), patience=2) == 4
    assert convergence.stop_index(curve(0.1, 0.2, 0.3, 0.4), patience=2) is None


def test_a_run_that_stops_is_the_budget_run_cut_where_the_replay_says(tmp_path):
    budget = train_cell(make_cell(CELL), tmp_path / "budget", RUN).iloc[0]
    stopped = train_cell(make_cell({**CELL, "stop": "converged"}), tmp_path / "stopped", RUN).iloc[0]
    whole = results.read_curve(tmp_path / "budget")
    cut = results.read_curve(tmp_path / "stopped")

    replayed = convergence.replay(whole, patience=CELL["patience"]).iloc[0]
    assert budget["stop_reason"] == "budget" and budget["steps_done"] == CELL["steps"]
    assert stopped["stop_reason"] == "converged (test_acc)"
    assert stopped["steps_done"] == replayed["stop_step"] < CELL["steps"]
    columns = ["step", "train_loss", "test_loss", "test_acc", "train_acc"]
    pd.testing.assert_frame_equal(cut[columns], whole[columns].iloc[:len(cut)])
    assert stopped["final_test_acc"] == replayed["final_stopped"]
    assert budget["final_test_acc"] == replayed["final"]


def test_a_stopping_run_killed_and_resumed_stops_at_the_same_step_with_the_same_numbers(tmp_path):
    args = [f"{k}={v}" for k, v in {**CELL, "trainable": "all", "stop": "converged"}.items()]
    args = ["train", *args, "checkpoint_every=20", "progress=false"]
    whole = fpt(*args, f"out={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr
    killed = tmp_path / "killed"
    kill_after_first_checkpoint(args, killed)
    assert not (killed / results.SUMMARY).exists()
    resumed = fpt(*args, f"out={killed}")
    assert resumed.returncode == 0 and "resumed from step" in resumed.stderr, resumed.stderr
    volatile = ["wall_time_s", "finished_at", "hostname"]
    pd.testing.assert_frame_equal(results.read_summary(killed).drop(columns=volatile),
                                  results.read_summary(tmp_path / "whole").drop(columns=volatile))
    pd.testing.assert_frame_equal(results.read_curve(killed).drop(columns=["wall_time_s"]),
                                  results.read_curve(tmp_path / "whole").drop(columns=["wall_time_s"]))
    assert results.read_summary(killed)["stop_reason"].iloc[0].startswith("converged")


def test_a_run_still_at_its_task_floor_has_not_converged():
    plateau = curve(0.5, 0.51, 0.5, 0.5, 0.5)  # bit-xor at chance: waiting to start, not converged
    assert not convergence.converged(plateau, 3, floor=convergence.task_floor("bit-xor"))
    assert convergence.converged(plateau, 3)  # without its floor the rule would stop it
    assert convergence.converged(curve(0.6, 0.6, 0.6, 0.6), 3, floor=convergence.task_floor("bit-xor"))
    assert convergence.task_floor("bit-memory") == 0.75  # the trivial baseline, above chance
    assert convergence.task_floor("bit-xor") == 0.5


def test_the_stopping_table_counts_what_stopping_changes_and_names_the_cells_it_costs():
    def rows(cell_id, accuracies):
        return [{"cell_id": cell_id, "step": 10 * (i + 1), "test_acc": a, "val_acc": math.nan}
                for i, a in enumerate(accuracies)]

    curves = pd.DataFrame(
        rows("flat", [0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6])  # stops at step 50, same final
        + rows("late", [0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.9])  # stops at 40, loses 30 points
        + rows("chance", [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.9])  # at bit-xor's floor: never stops
        + rows("climbs", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]))  # never stops
    aggregate = pd.DataFrame({"cell_id": ["flat", "late", "late", "chance", "climbs", "other"],
                              "ablation": ["a", "a", "b", "a", "a", "a"], "label": ["x", "y", "z", "u", "w", "v"],
                              "task": ["bit-xor", "bit-xor", "bit-xor", "bit-xor", "mnist", "mnist"],
                              "seed": [0, 1, 1, 2, 0, 2]})
    summary, losers = convergence.stopping_table(aggregate, curves, patiences=(3,))
    xor = summary.set_index("task").loc["bit-xor"]
    assert (xor["cells"], xor["stopped"], xor["lose_over_1"]) == (3, 2, 1)
    assert xor["steps_kept"] == (50 + 40 + 80) / (3 * 80)
    assert xor["final_worst"] == pytest.approx(-30.0) and xor["final_mean"] == pytest.approx(-10.0)
    mnist = summary.set_index("task").loc["mnist"]  # "other" has no curve: not counted
    assert (mnist["cells"], mnist["stopped"], mnist["steps_kept"]) == (1, 0, 1.0)
    assert losers[["cell_id", "rows", "stop_step"]].values.tolist() == [["late", "a/y, b/z", 40]]
    page = convergence.stopping_markdown(summary, losers, "stopping")
    assert "a/y, b/z" in page and "more than a point" in page
