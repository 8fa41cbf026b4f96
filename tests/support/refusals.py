"""Reading the one-line refusal (PlantidError) that plantid's functions raise on bad input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from plantid.errors import PlantidError


def refusal(call: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """The message of the PlantidError `call(*args, **kwargs)` must raise; the test fails unless it
    is raised and fits on one line (what the CLI prints, with no traceback)."""
    with pytest.raises(PlantidError) as refused:
        call(*args, **kwargs)
    message = str(refused.value)
    assert "\n" not in message, message
    return message
