"""Extension: embedding norms of rare tokens under a skewed split.

Per-token embedding norms ‖e_i‖ over training for the embedding MLP trained on a skewed split with
batch 64, the rarest 10 % of operand values highlighted, with group means over seeds and the final
norm of every token against its training-set count.

Usage:
    python analyses/ext4_rare_token_norms.py [--quick] [--seeds N] [--out DIR] [--runs DIR]

Writes DIR/ext4_rare_token_norms.png and DIR/ext4_rare_token_norms.json (the numbers behind the figure). Runs already
trained under --runs with the same config are reused; ``grokinterp figures`` draws every figure.
"""

import sys

from grokinterp.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("ext4_rare_token_norms"))
