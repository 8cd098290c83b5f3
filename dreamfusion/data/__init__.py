"""Camera sampling (the ``data`` group) and view-dependent prompts."""

from dreamfusion.config.schema import DataConfig
from dreamfusion.registry import register


@register("data", "data")
class CameraData:
    """The seed's ``data: data`` option: random training views, circles for validation and test."""

    Config = DataConfig
