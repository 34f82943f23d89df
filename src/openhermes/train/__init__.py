"""Training: recipe -> transformers Trainer over packed rows."""
