"""Progress of long passes: a rate on the terminal bar, plain lines with the rate in logs."""

import realign.progress as progress


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_log_lines_carry_count_and_rate_and_come_at_most_every_interval(capsys):
    clock = Clock()
    tick = progress.LineTick("judge (offline)", 3000, clock=clock)
    clock.t = 10.0
    tick(500)                                    # before the interval: silent
    assert capsys.readouterr().err == ""
    clock.t = 40.0
    tick(700, info="loss 0.5")
    assert capsys.readouterr().err.strip() == "judge (offline): 1200/3000 (30.0/s, 40 s, loss 0.5)"
    clock.t = 50.0
    tick(1800)
    tick.finish()
    assert capsys.readouterr().err.strip() == "judge (offline): 3000/3000 (60.0/s, 50 s, loss 0.5)"


def test_the_end_is_printed_once_when_the_last_tick_printed_it(capsys):
    clock = Clock()
    tick = progress.LineTick("judge (offline)", 243, clock=clock)
    clock.t = 52.0
    tick(243)
    tick.finish()
    assert capsys.readouterr().err.strip().splitlines() == ["judge (offline): 243/243 (4.7/s, 52 s)"]


def test_slow_items_are_shown_as_seconds_each(capsys):
    clock = Clock()
    tick = progress.LineTick("finetune", 10, clock=clock)
    clock.t = 40.0
    tick(2)
    assert "2/10 (20.0 s each, 40 s)" in capsys.readouterr().err


def test_without_a_terminal_a_pass_logs_lines_and_progress_0_silences_it(monkeypatch, capsys):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    monkeypatch.setenv("REALIGN_PROGRESS", "1")
    with progress.progress_bar("generate", 4) as tick:
        tick(2)
        tick(2)
    err = capsys.readouterr().err
    assert "generate: 2/4" in err and "generate: 4/4" in err
    monkeypatch.setenv("REALIGN_PROGRESS", "0")
    with progress.progress_bar("generate", 4) as tick:
        tick(4)
    assert capsys.readouterr().err == ""
