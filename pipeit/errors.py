"""One exception tree for everything a user can get wrong.

The CLI catches :class:`PipeitError` (and cores' own root), prints its
message as one line and exits with status 2. Anything else escaping is a
bug in pipeit and is allowed to show a traceback.
"""

from __future__ import annotations

__all__ = [
    "PipeitError",
    "ModelError",
    "UnsupportedModelError",
    "SplitError",
    "ProfileError",
    "PredictorError",
    "PlanError",
    "ExecutorError",
    "InputError",
]


class PipeitError(Exception):
    """Root of every error caused by a user's input, file or environment."""


class ModelError(PipeitError):
    """A model file that cannot be read: empty, truncated, not TFLite."""


class UnsupportedModelError(ModelError):
    """A valid TFLite model that pipeit cannot handle (control flow, custom ops)."""


class SplitError(PipeitError):
    """Cut indices that do not describe a valid split of the model."""


class ProfileError(PipeitError):
    """A profile table that is malformed or from another platform."""


class PredictorError(PipeitError):
    """A predictor file that is corrupt, of another version, or not fitted."""


class PlanError(PipeitError):
    """A plan that cannot be made, or that does not match its model/platform."""


class ExecutorError(PipeitError):
    """A pipeline that cannot start or that lost a stage it could not restart."""


class InputError(PipeitError):
    """Frames of the wrong shape or dtype, or an unreadable input file."""
