"""Figure 3 of arXiv 2505.15624: heat maps of the embedding gradient early in training.

Records ∇_E L at steps 1, 12, 40 and 68 with batches of 64 and 512 pairs and draws it for seed 0
(rows: tokens, columns: embedding dimensions). Rows of tokens absent from the batch are zero; the
side panel compares the measured share of such tokens with (1 − 1/p)^(2B).

Usage:
    python analyses/fig03_embedding_gradients.py [--quick] [--seeds N] [--out DIR] [--runs DIR]

Writes DIR/fig03_embedding_gradients.png and DIR/fig03_embedding_gradients.json (the numbers behind the figure). Runs already
trained under --runs with the same config are reused; ``grokinterp figures`` draws every figure.
"""

import sys

from grokinterp.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("fig03_embedding_gradients"))
