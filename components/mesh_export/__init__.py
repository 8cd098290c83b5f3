from components.mesh_export.component import mesh_export

__all__ = ["mesh_export"]
