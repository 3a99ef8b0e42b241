"""See reference.py: the pure-PyTorch oracle of this op."""
