"""tinybn.progress: the tutorial's log line, plain off a terminal, under a tqdm bar on one."""
import io
import re

from tinybn.progress import Progress

LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}: step (\d+), loss = 2\.30 \(512\.0 examples/sec; "
                  r"0\.250 sec/batch\)")
TEXT = "loss = 2.30 (512.0 examples/sec; 0.250 sec/batch)"


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_off_a_terminal_only_the_tutorial_lines():
    out = io.StringIO()
    p = Progress(100, start=40, stream=out)
    p.log(50, TEXT)
    p.log(60, TEXT)
    p.close()
    lines = out.getvalue().split("\n")
    assert lines[-1] == "" and len(lines) == 3
    assert [LINE.fullmatch(line).group(1) for line in lines[:2]] == ["50", "60"]
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_on_a_terminal_the_lines_scroll_above_a_tqdm_bar():
    out = Terminal()
    p = Progress(100, start=40, stream=out)
    p.log(50, TEXT)
    assert p.bar.n == 50 and p.bar.total == 100
    p.log(60, TEXT)
    p.close()
    text = out.getvalue()
    lines = [line for chunk in text.split("\n") for line in chunk.split("\r")]
    assert [LINE.fullmatch(line).group(1) for line in lines if LINE.fullmatch(line)] == ["50", "60"]
    assert any(re.search(r"\b60/100\b", line) for line in lines)            # the bar at the last step
    assert text.endswith("\n") and p.bar is None
    p.close()                                                               # a second close is harmless
