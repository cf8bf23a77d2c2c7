"""Figure 7 of arXiv 2505.15624: λ_max of the Hessian blocks of E and W over training.

Largest Hessian eigenvalue of the training loss with respect to the embedding E and to the first
layer W, for Adam and Adam-LR on (a + b) mod 97, from Lanczos iterations on Hessian-vector products
at up to 16 checkpoints per run. Results are cached in each run's figure_cache/.

Usage:
    python analyses/fig07_hessian_lambda_max.py [--quick] [--seeds N] [--out DIR] [--runs DIR]

Writes DIR/fig07_hessian_lambda_max.png and DIR/fig07_hessian_lambda_max.json (the numbers behind the figure). Runs already
trained under --runs with the same config are reused; ``grokinterp figures`` draws every figure.
"""

import sys

from grokinterp.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("fig07_hessian_lambda_max"))
