"""The NeRF + SDS training loop and its checkpoints."""
