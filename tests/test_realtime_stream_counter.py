"""realtime.stream: one count of a stream's windows (cut, finished by the scheduler) drives pacing and retirement."""

from __future__ import annotations

import threading

from contract.audio import LABELS, SAMPLE_RATE, WINDOW_SAMPLES
from realtime.config import load_daemon_config
from realtime.stream import Stream, StreamSettings, Window
from tests.conftest import tone

SR = SAMPLE_RATE


def stream_with(windows: list[Window], retired: list[Stream]) -> Stream:
    settings = StreamSettings.from_config(load_daemon_config(), WINDOW_SAMPLES)
    return Stream("s", "test", settings, SR, 1, windows.append, LABELS, on_retired=retired.append)


def test_outstanding_is_windows_cut_less_windows_done_and_retirement_follows_it():
    windows: list[Window] = []
    retired: list[Stream] = []
    s = stream_with(windows, retired)
    s.push(tone(seconds=2.0))  # windows ending 1.0, 1.5, 2.0 s
    assert s.seq == len(windows) == 3 and s.outstanding == 3
    s.window_done()
    assert s.outstanding == 2
    s.finish()  # ends on the hop grid: no final window; two still outstanding, so not retired yet
    assert s.ended and not s.retired and retired == []
    s.window_done()
    assert not s.retired
    s.window_done()
    assert s.outstanding == 0 and s.retired and retired == [s]
    s.finish()
    assert retired == [s]  # once
    assert not hasattr(s, "delivered") and not hasattr(s, "mark_delivered")  # no second count of the same windows


def test_a_stream_whose_windows_are_all_done_retires_when_it_ends():
    windows: list[Window] = []
    retired: list[Stream] = []
    s = stream_with(windows, retired)
    s.push(tone(seconds=1.2))
    for _ in windows:
        s.window_done()
    s.finish()  # a final window flush with the end (1.2 s)
    assert [w.end for w in windows] == [SR, int(1.2 * SR)] and not s.retired
    s.window_done()
    assert s.retired and retired == [s]


def test_the_feeding_thread_waits_on_the_same_count():
    windows: list[Window] = []
    s = stream_with(windows, [])
    s.push(tone(seconds=2.0))
    assert not s.wait_outstanding_below(3, timeout=0.01)
    t = threading.Timer(0.05, s.window_done)
    t.start()
    assert s.wait_outstanding_below(3, timeout=10.0)
    t.join()
