"""Moved to :mod:`trainscope.widgets._delivery` (the Jupyter layer).  The old import path stays
and names the same module object."""

import sys

from .widgets import _delivery as _moved
from .widgets._delivery import (
    STRATEGIES as STRATEGIES,
)
from .widgets._delivery import (  # the names other modules use, for static readers
    Delivery as Delivery,
)
from .widgets._delivery import (
    InprocPump as InprocPump,
)
from .widgets._delivery import (
    NoDelivery as NoDelivery,
)
from .widgets._delivery import (
    SubshellRoute as SubshellRoute,
)
from .widgets._delivery import (
    UiPoll as UiPoll,
)
from .widgets._delivery import (
    _interrupts_held as _interrupts_held,
)
from .widgets._delivery import (
    active as active,
)
from .widgets._delivery import (
    available as available,
)
from .widgets._delivery import (
    current_kernel as current_kernel,
)
from .widgets._delivery import (
    get_delivery as get_delivery,
)
from .widgets._delivery import (
    reset as reset,
)

sys.modules[__name__] = _moved
