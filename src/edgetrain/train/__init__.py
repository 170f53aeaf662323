"""On-device training methods, one module per method behind one protocol (``protocol.py``).

* ``es``: forward-only evolution strategies on the integer-exact forward (AbdulQader et al. 2021).
* ``backprop``: float backprop fine-tuning of the same parameters, the upper-bound reference.
* ``select``: which parameters a trainer may change (``last``, ``last:K``, ``bias``, names).

Low-rank Kronecker-sum accumulation and fully quantized training arrive with their issues.
"""

from .protocol import Batch, StepInfo, Trainer
from .select import select_params

__all__ = ["Batch", "StepInfo", "Trainer", "select_params"]
