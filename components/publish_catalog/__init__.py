from components.publish_catalog.component import publish_catalog

__all__ = ["publish_catalog"]
