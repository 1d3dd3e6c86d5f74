"""Own PyTorch definitions of the diffusion networks, written for export (filled in by issue 3)."""
