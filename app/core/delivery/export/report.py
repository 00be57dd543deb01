"""What an export reports and raises: its error, the parity check's figures and tolerance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app.core.base.errors import UserError

if TYPE_CHECKING:
    pass



PARITY_IMAGES = 64
# Largest probability difference accepted between the exported float32 model and the head on
# cached features. Features computed in mixed float16 (GPU) carry float16 rounding of the
# backbone's activations, measured up to ~1e-2 on the tiny backbone: the tolerance says so.
PARITY_TOLERANCE = {"float32": 1e-3, "mixed_float16": 3e-2}


class ExportError(UserError):
    """The export could not be made or did not pass its parity check."""


@dataclass
class ParityReport:
    images: int
    max_abs_diff: float
    top1_mismatches: int
    tolerance: float = PARITY_TOLERANCE["float32"]

    @property
    def ok(self) -> bool:
        return self.top1_mismatches == 0 and self.max_abs_diff <= self.tolerance


@dataclass
class ExportReport:
    """Where the model went and how far its parity with the app was checked."""

    folder: Path
    parity: ParityReport | None
    parity_note: str = ""  # empty when checked and passed; else why it could not be checked
    formats: tuple[str, ...] = ("keras",)  # the forms written

    @property
    def parity_checked(self) -> bool:
        return self.parity is not None and self.parity.images > 0


