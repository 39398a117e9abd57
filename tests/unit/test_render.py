"""What the CLI prints for step results: no `None` rows, the robust error, text kept as text."""

import math

from rich.console import Console

from gfm.cli import render


def _text(renderable) -> str:
    console = Console(width=100, record=True)
    console.print(renderable)
    return console.export_text()


def test_no_tuning_is_one_row_not_a_column_of_nones():
    rows = render.tuned_rows({"best_params": {}, "study": "", "n_trials": 0})
    assert rows == [("tuning", "off (tune.n_trials=0): training uses the settings as given")]
    tuned = render.tuned_rows(
        {"study": "gfm-1", "best_params": {"gfm.width": 8}, "best_value": 0.5, "best_trial": 0}
    )
    assert "None" not in str(tuned) and ("study", "gfm-1") in tuned


def test_the_headline_error_is_the_median_and_accuracies_sit_side_by_side():
    doc = {
        "metrics": {
            "test/rel_mse_persistence": 1.7e5,
            "test/rel_mse_persistence_median": 0.558,
            "test/acc_forecast": 0.5,
            "test/acc_last": 0.4,
            "test/acc_final": 0.9,
        },
        "baselines": {"test/linear/rel_mse_persistence_median": 5.8},
    }
    text = str(render.score_rows(doc))
    assert "0.558" in text and "linear 5.8" in text and "1.7e+05" not in text
    assert "forecast 0.500, last checkpoint 0.400, true final 0.900" in text


def test_held_out_table_fits_100_columns():
    row = {"task": "mlp_regression", "observed_fraction": 0.25, "n_runs": 12}
    row |= {"last_acc": math.nan, "forecast_acc": math.nan, "final_acc": math.nan}
    row |= {"last_loss": 0.51234, "forecast_loss": 0.61, "final_loss": 0.0112}
    text = _text(render.held_out_table([row]))
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "- / 0.512" in text


def test_failure_messages_keep_their_brackets():
    console = render.console
    with console.capture() as captured:
        render.fail(
            "gfm forecast", ValueError("metadata: `layout` is missing: [[name, shape], ...]")
        )
    assert "[[name, shape], ...]" in captured.get()


def test_progress_off_a_terminal_prints_lines_at_each_tenth(capsys):
    # given output that is not a terminal (a file, a DVC stage, CI)
    from gfm.cli.render import progress_bar

    # when a loop reports 20 of 20 steps
    with progress_bar("training runs") as progress:
        for done in range(1, 21):
            progress(done, 20)
    # then the first step, then one line per tenth of the work, the last one complete
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert len(lines) == 11
    assert lines[0].startswith("training runs: 1/20 (5%) after")
    assert lines[1].startswith("training runs: 2/20 (10%) after")
    assert lines[-1].startswith("training runs: 20/20 (100%)")
