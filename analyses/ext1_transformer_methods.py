"""Extension: the embedding learning-rate methods on a one-layer transformer.

AdamW, AdamW with the embedding's learning rate ×10, and the adaptive ratio
c = (σ_max(E) / σ_max(W)) · (f_W / f_E) on the tiny-transformer preset (p = 31, full batch):
accuracy and the ratio c over training.

Usage:
    python analyses/ext1_transformer_methods.py [--quick] [--seeds N] [--out DIR] [--runs DIR]

Writes DIR/ext1_transformer_methods.png and DIR/ext1_transformer_methods.json (the numbers behind the figure). Runs already
trained under --runs with the same config are reused; ``grokinterp figures`` draws every figure.
"""

import sys

from grokinterp.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("ext1_transformer_methods"))
