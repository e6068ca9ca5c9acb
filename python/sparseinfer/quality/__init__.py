"""Proof on real data: models trained in-repo (sklearn digits MLP/CNN, a character-level Llama on
English text shipped with Python), compressed with every sparseinfer.compress method, and one table
of quality, size and speed against the dense model. Run with `sparseinfer quality`."""
