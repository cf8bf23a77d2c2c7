"""Figure 2 of arXiv 2505.15624: embeddings cause the delay in generalisation.

Trains the embedding MLP and the same MLP fed the token ids as numbers on (a + b) and (a · b)
mod 97 (Adam, lr 0.01, batch 512, 30 % of pairs for training) and plots train and test accuracy
over training, mean and min–max over seeds, with the mean step of test accuracy ≥ 0.99 marked.

Usage:
    python analyses/fig02_embedding_vs_noembedding.py [--quick] [--seeds N] [--out DIR] [--runs DIR]

Writes DIR/fig02_embedding_vs_noembedding.png and DIR/fig02_embedding_vs_noembedding.json (the numbers behind the figure). Runs already
trained under --runs with the same config are reused; ``grokinterp figures`` draws every figure.
"""

import sys

from grokinterp.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("fig02_embedding_vs_noembedding"))
