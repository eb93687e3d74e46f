"""Pure tensor math shared by every algorithm and backbone (no diffusers imports)."""
