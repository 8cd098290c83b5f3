from components.nerf_sds.component import nerf_sds

__all__ = ["nerf_sds"]
