"""Output capture: head kept as it arrives, a rolling tail, the middle counted; memory bounded."""

from __future__ import annotations

from orchd.worker.output import MAX_LINE, OutputCapture


def _text(lines: list) -> list[str]:  # type: ignore[type-arg]
    return [line.text for line in lines]


def test_small_output_is_kept_whole_across_chunk_boundaries() -> None:
    cap = OutputCapture(10_000)
    out = cap.feed("stdout", b"one\ntw") + cap.feed("stdout", b"o\nthree") + cap.feed("stderr", b"err\n")
    assert _text(out) == ["one", "two", "err"]
    assert _text(cap.close()) == ["three"]
    assert cap.dropped_lines == 0


def test_large_output_keeps_head_and_tail_and_counts_the_middle() -> None:
    cap = OutputCapture(2_000)
    lines = [f"line-{i:05d}".encode() for i in range(10_000)]
    head = []
    for start in range(0, len(lines), 333):
        head += cap.feed("stdout", b"\n".join(lines[start : start + 333]) + b"\n")
    rest = cap.close()
    kept = _text(head) + _text(rest)
    assert kept[0] == "line-00000"
    assert kept[-1] == "line-09999"
    marker = [t for t in kept if t.startswith("[orchd:")]
    assert len(marker) == 1
    stored = [t for t in kept if not t.startswith("[orchd:")]
    assert cap.dropped_lines + len(stored) == 10_000
    assert sum(len(t) + 1 for t in stored) <= 2_000
    assert f"{cap.dropped_lines} lines" in marker[0]
    numbers = [int(t.split("-")[1]) for t in stored]
    assert numbers == sorted(numbers)  # head then tail, in order, no gaps inside each


def test_a_line_without_newline_is_split() -> None:
    cap = OutputCapture(1_000_000)
    out = cap.feed("stdout", b"x" * (MAX_LINE * 2 + 10))
    assert [len(t) for t in _text(out)] == [MAX_LINE, MAX_LINE]
    assert [len(t) for t in _text(cap.close())] == [10]


def test_invalid_utf8_is_escaped_not_fatal() -> None:
    cap = OutputCapture(1_000)
    assert _text(cap.feed("stdout", b"caf\xe9\r\n")) == ["caf\\xe9"]
