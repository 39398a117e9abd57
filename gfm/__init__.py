"""gfm: Gradient Flow Matching — learn how training moves weights and forecast where a run ends.

Reference: Shou, Ding, Gao, "Gradient Flow Matching for Learning Update Dynamics in Neural
Network Training", arXiv 2505.20221 (2025).
"""

from gfm.config import Settings, load_settings

__version__ = "0.1.0"

__all__ = ["Settings", "__version__", "load_settings"]
