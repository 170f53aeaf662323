"""Forward-only evolution-strategies training (AbdulQader et al., arXiv 2103.14007).

``ESTrainer`` (the protocol of ``train/protocol.py``) adapts chosen parameters of a deployed
fixed-point model using only its integer-exact forward: (1+1)-ES, antithetic OpenAI-ES with
centred ranks, SPSA/MeZO, optional low-rank perturbations; ``perturb`` holds the seeded LFSR and
torch noise sources, ``fitness`` the fitness and rank shaping, ``hardware`` the FPGA size estimate.
"""

from .fitness import FITNESS, centered_ranks, fitness
from .hardware import es_hardware
from .perturb import DISTRIBUTIONS, SOURCES, derive_seed, draw, draw_lowrank
from .trainer import ESTIMATORS, ESState, ESTrainer

__all__ = ["DISTRIBUTIONS", "ESState", "ESTIMATORS", "ESTrainer", "FITNESS", "SOURCES", "centered_ranks",
           "derive_seed", "draw", "draw_lowrank", "es_hardware", "fitness"]
