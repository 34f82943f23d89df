"""Base models and tokenizers: loading, ChatML tokens, LoRA, and the tiny from-scratch model."""
