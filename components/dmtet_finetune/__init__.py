from components.dmtet_finetune.component import dmtet_finetune

__all__ = ["dmtet_finetune"]
