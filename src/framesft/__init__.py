"""framesft: generative supervised fine-tuning (SFT + LoRA) of causal LMs to classify passages into frames."""

__version__ = "0.1.0"
