"""Export: LoRA merge, GGUF."""
