from components.video_render.component import video_render

__all__ = ["video_render"]
