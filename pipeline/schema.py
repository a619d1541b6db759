"""The building blocks of the params schema, shared by pipeline/params.py and the data formats'
own sections (pipeline/formats/): a frozen section that rejects unknown keys and non-finite
numbers, and the bounded number types."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    # Every float must be finite: NaN or infinity in a hyperparameter or a statistic is a typo.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# Integer widths TensorFlow, NumPy and the shard writer accept; bounds far above any real use, so a
# value outside them is a typo caught here rather than an overflow deep inside a stage.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
BatchSize = Annotated[int, Field(ge=1, le=65_536)]
Checksums = dict[str, Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]]
ClassNames = Annotated[list[str], Field(min_length=2)]
