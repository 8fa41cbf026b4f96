"""first_line: the part of a low-level exception that goes into a one-line PlantidError."""

from plantid.errors import first_line


def test_first_line_keeps_the_first_nonblank_line():
    assert first_line(RuntimeError("\n  unexpected pos 64\nat frame 3\n")) == "unexpected pos 64"


def test_first_line_of_an_empty_message_is_the_type_name():
    assert first_line(OSError()) == "OSError"
    assert first_line(ValueError("   ")) == "ValueError"
