"""File names that never overwrite a finished result."""
import os
from typing import Callable


def free_name(base: str, taken: Callable[[str], bool] = os.path.exists) -> str:
    """``base``, or ``base-2``, ``base-3``, ...: the first name that ``taken`` says is free."""
    path, k = base, 1
    while taken(path):
        k += 1
        path = f"{base}-{k}"
    return path
