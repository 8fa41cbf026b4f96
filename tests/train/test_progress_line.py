"""The progress line counts epochs from 1, names the size, and estimates the time left for the
whole run; the plan is said in plain words."""

from __future__ import annotations

import io
from types import SimpleNamespace

import torch

from plantid.config import ResizePhase
from plantid.train.plan import Speed, plan_in_words
from plantid.train.progress_line import ProgressLine, epoch_sizes, format_seconds


def _trainer(epoch: int, epochs: int, **metrics: float) -> SimpleNamespace:
    """The few attributes of a Lightning Trainer the line reads."""
    return SimpleNamespace(current_epoch=epoch, max_epochs=epochs, is_global_zero=True, num_training_batches=10,
                           callback_metrics={k: torch.tensor(v) for k, v in metrics.items()})


def test_epoch_sizes_follow_the_phases_then_the_final_size():
    assert epoch_sizes(9, [ResizePhase(epochs=6, image_size=128)], 192) == [128] * 6 + [192] * 3
    assert epoch_sizes(3, [], 96) == [96, 96, 96]
    assert format_seconds(185) == "3:05" and format_seconds(3725) == "1:02:05"


def test_line_counts_from_one_and_the_time_left_covers_later_epochs_at_their_size():
    stream = io.StringIO()
    progress = ProgressLine(epoch_sizes(9, [ResizePhase(epochs=6, image_size=128)], 192), stream=stream)
    progress._pixel_seconds, progress._done_pixels = 10.0 * 3, 3 * 128 ** 2  # three epochs of 10 s at 128 px
    line = progress.line(_trainer(2, 9, val_acc=0.861, train_loss_step=0.412), finished=True)
    assert line.startswith("training  epoch 3 of 9") and "128 px" in line and "val acc 86.1%" in line
    assert "v_num" not in line
    # left: 3 more at 128 px (10 s each) and 3 at 192 px (10 * 2.25 s each) = 97.5 s
    assert "1:38 left" in line or "1:37 left" in line
    progress.on_train_epoch_end(_trainer(2, 9), None)
    assert stream.getvalue().count("\n") == 1  # not a terminal: one line per epoch


def test_plan_in_plain_words():
    speed = Speed(train={128: 30.0, 192: 15.0}, evaluate=60.0, seconds=5.0)
    text = plan_in_words(9, [ResizePhase(epochs=6, image_size=128)], 192, speed, n_train=1800, n_val=300)
    # 6 x (60 + 5) s + 3 x (120 + 5) s = 765 s
    assert text == "9 epochs: 6 at 128 px, then 3 at 192 px; about 13 minutes"
    assert plan_in_words(3, [], 96) == "3 epochs at 96 px"
    assert "each on 40% of the training photos" in plan_in_words(3, [], 96, speed=None, share=0.4)
    # the epoch cap, not the budget, ended the plan: said, with the budget it leaves unused
    capped = plan_in_words(9, [ResizePhase(epochs=6, image_size=128)], 192, speed, n_train=1800, n_val=300,
                           cap=9, budget_minutes=30)
    assert capped == ("9 epochs: 6 at 128 px, then 3 at 192 px; about 13 minutes of the 30 given (9 epochs is "
                      "the most plantid trains 1800 photos for; more did not help)")
    # a plan that fills its budget says nothing more, capped or not
    assert plan_in_words(9, [ResizePhase(epochs=6, image_size=128)], 192, speed, n_train=1800, n_val=300,
                         cap=9, budget_minutes=15) == text
    assert plan_in_words(9, [ResizePhase(epochs=6, image_size=128)], 192, speed, n_train=1800, n_val=300,
                         cap=27, budget_minutes=30) == text
