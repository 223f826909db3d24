"""pudrt: defend image classifiers against backdoor and adversarial attacks at once.

Every model, engine and attack in pudrt sees RGB NCHW float32 images in [0, 1].
"""

from pudrt.errors import PudrtError

__version__ = "0.1.0"
__all__ = ["PudrtError", "__version__"]
