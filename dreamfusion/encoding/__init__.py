"""Input encodings: multi-resolution hash grid (Instant-NGP) and frequency (NeRF positional) encoding."""

from dreamfusion.encoding.frequency import FrequencyEncoding
from dreamfusion.encoding.hashgrid import HashGrid, HashGridConfig

__all__ = ["HashGrid", "HashGridConfig", "FrequencyEncoding"]
