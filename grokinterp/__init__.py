"""grokinterp: mechanistic interpretability of grokking on modular arithmetic."""

__version__ = "0.1.0"


class GrokinterpWarning(UserWarning):
    """Base class of the warnings that grokinterp emits."""
