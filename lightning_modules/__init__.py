"""Lightning fine-tuning of grounded region tokens (LoRA via peft)."""
