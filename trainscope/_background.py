"""Moved to :mod:`trainscope.widgets._background` (the Jupyter layer).  The old import path stays
and names the same module object."""

import sys

from .widgets import _background as _moved
from .widgets._background import (  # the names other modules use, for static readers
    BackgroundRun as BackgroundRun,
)
from .widgets._background import (
    StopTraining as StopTraining,
)
from .widgets._background import (
    add_finish_hook as add_finish_hook,
)
from .widgets._background import (
    check_stop as check_stop,
)
from .widgets._background import (
    fit_in_background as fit_in_background,
)
from .widgets._background import (
    stop_requested as stop_requested,
)

sys.modules[__name__] = _moved
