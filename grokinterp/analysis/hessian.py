"""Hessian spectra, saddle points and block coupling of a loss, from Hessian-vector products.

"Mechanistic Insights into Grokking from the Embedding Layer" (arXiv 2505.15624) compares the
largest Hessian eigenvalue of the embedding block E with that of the first weight block W, and
argues that the bilinear coupling of E and W makes saddle points more likely. This module
computes those quantities for any loss written as a function of a parameter dictionary:

* `HessianProblem`: the Hessian of the mean training loss with respect to one block of
  parameters (the others held fixed), as a flat Hessian-vector product (HVP). Data are
  processed in chunks, and the HVP of the whole set is the size-weighted mean of the chunk
  HVPs, so the result does not depend on the chunk size.
* `extreme_eigenvalues`: the largest and smallest eigenvalues by Lanczos iteration (scipy's
  ARPACK `eigsh`), with the residual ||Hv - λv|| of each eigenpair.
* `saddle_verdict`, `hutchinson_trace`, `mixed_block_norm` (the spectral norm of the
  off-diagonal block H_ab) and `gradient_norms`.
* `dense_hessian`: the full matrix for tiny models, as a test oracle.

A loss function has the signature ``loss_fn(params, inputs, labels) -> scalar`` and must
return the *mean* loss over the batch, because the chunk weights assume it. It must be
functional in ``params`` (no in-place updates), as `model_loss_fn` builds with
`torch.func.functional_call`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from threadpoolctl import threadpool_limits
from torch import Tensor, nn

logger = logging.getLogger(__name__)

LossFn = Callable[[dict[str, Tensor], Tensor, Tensor], Tensor]
"""A mean loss ``loss_fn(params, inputs, labels) -> 0-d tensor``."""

HvpMethod = Literal["fwd_rev", "double_backward", "auto"]
SpectrumEnd = Literal["both", "largest", "smallest"]

_HVP_METHODS = ("fwd_rev", "double_backward", "auto")
_WHICH = ("both", "largest", "smallest")
_SOLVERS = ("arpack", "lanczos")
VERDICTS = ("saddle", "minimum", "maximum", "flat", "non-stationary")
"""The verdicts that `saddle_verdict` can return."""


def model_loss_fn(model: nn.Module) -> LossFn:
    """Build the mean cross-entropy loss of a model as a function of its parameters.

    The returned function calls the model with `torch.func.functional_call`, so it evaluates
    the model at the given parameters without changing the module. A model output of shape
    [batch, pos, vocab] (a HookedTransformer) is read at the last position, where the answer
    is, and an output [batch, p] (a HookedMLP) is used as it is. Buffers are taken from the
    module unchanged, so for a float64 Hessian of a model with floating buffers, convert the
    model with ``model.double()`` first.

    Args:
        model: a module that maps inputs [batch, ...] to logits.

    Returns:
        ``loss_fn(params, inputs, labels)``, the mean cross-entropy of the answer logits
        against integer labels.

    Example:
        >>> model = nn.Linear(3, 4)
        >>> loss_fn = model_loss_fn(model)
        >>> params = dict(model.named_parameters())
        >>> loss = loss_fn(params, torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0]))
        >>> loss.shape
        torch.Size([])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model is a {type(model).__name__}: expected a torch.nn.Module.")

    def loss_fn(params: dict[str, Tensor], inputs: Tensor, labels: Tensor) -> Tensor:
        output = torch.func.functional_call(model, params, (inputs,))
        if output.ndim == 3:
            output = output[:, -1]
        if output.ndim != 2:
            raise ValueError(
                f"The model output has shape {tuple(output.shape)}: expected logits [batch, p] "
                "or [batch, pos, p]."
            )
        return F.cross_entropy(output, labels)

    return loss_fn


# ---------------------------------------------------------------------------------------------
# Hessian-vector products over a parameter block


class HessianProblem:
    """The Hessian of a mean loss over a data set, with respect to one block of parameters.

    The block is a sequence of parameter names; the other parameters are held fixed. Vectors
    are flat: the block's parameters flattened and concatenated in block order (see `flatten`
    and `unflatten`). The data set is split into chunks of ``chunk_size`` samples, and every
    quantity is the size-weighted mean of its chunk values, which equals the value on the whole
    set because the loss is a mean.

    HVP methods, which agree to rounding:

    * ``"fwd_rev"``: forward-mode over reverse-mode, `torch.func.jvp` of `torch.func.grad`.
    * ``"double_backward"``: `torch.autograd.grad` twice, the second time of g·v.
    * ``"auto"``: ``"double_backward"``, unless an HVP on one sample raises because an operation
      cannot be differentiated twice, or returns 0 where ``"fwd_rev"`` does not (a backward
      marked ``@once_differentiable`` loses the second derivative silently). Then ``"fwd_rev"``
      is used and the switch is logged.
      Double backward was the faster method on the package's models, by a few percent: the
      median of paired timings was 3 % lower on the paper's MLP and 6 % lower on the reference
      transformer (``benchmarks/hessian_eigs.py``, one CPU thread, docs/benchmarks.md).

    Args:
        loss_fn: ``loss_fn(params, inputs, labels)``, the mean loss over a batch.
        params: every parameter the loss needs, by name (e.g. ``dict(model.named_parameters())``).
            The values are detached, so the module is not changed.
        inputs: the data set's inputs, batch first.
        labels: the data set's labels, batch first.
        block: the names of the parameters to differentiate; None means all of ``params``.
        chunk_size: samples per chunk; None processes the whole set at once.
        method: the HVP method, as above.
        dtype: if given, floating parameters and floating inputs are cast to it, e.g.
            torch.float64 for accurate eigenvalues.

    Example:
        >>> A = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> def loss_fn(params, inputs, labels):
        ...     x = params["x"]
        ...     return 0.5 * x @ A @ x
        >>> params = {"x": torch.zeros(2, dtype=torch.float64)}
        >>> problem = HessianProblem(loss_fn, params, torch.zeros(1), torch.zeros(1))
        >>> problem.hvp(torch.tensor([1.0, 0.0], dtype=torch.float64)).tolist()
        [2.0, 1.0]
    """

    def __init__(
        self,
        loss_fn: LossFn,
        params: Mapping[str, Tensor],
        inputs: Tensor,
        labels: Tensor,
        block: Sequence[str] | None = None,
        chunk_size: int | None = None,
        method: HvpMethod = "auto",
        dtype: torch.dtype | None = None,
    ) -> None:
        _check_data(inputs, labels)
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(
                f"chunk_size={chunk_size!r} is invalid: expected a positive integer or None."
            )
        if method not in _HVP_METHODS:
            raise ValueError(f"method={method!r} is invalid: expected one of {_HVP_METHODS}.")
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"dtype={dtype} is not a floating dtype: pass e.g. torch.float64.")

        self._loss_fn = loss_fn
        self._block = _check_block(params, block, "block")

        # Detached copies make the loss a function of these tensors only.
        values = {name: _cast(value.detach(), dtype) for name, value in params.items()}
        self._fixed = {name: value for name, value in values.items() if name not in self._block}
        self._block_values = {name: values[name] for name in self._block}
        self._shapes = [value.shape for value in self._block_values.values()]
        self._numels = [value.numel() for value in self._block_values.values()]

        inputs, labels = _cast(inputs, dtype), _cast(labels, dtype)
        n_samples = inputs.shape[0]
        size = n_samples if chunk_size is None else chunk_size
        self._chunks = [
            (chunk_inputs, chunk_labels, chunk_inputs.shape[0] / n_samples)
            for chunk_inputs, chunk_labels in zip(
                torch.split(inputs, size), torch.split(labels, size), strict=True
            )
        ]
        self._n_samples = n_samples
        self._method_request = method
        self._resolved_method: str | None = None

    @property
    def block(self) -> tuple[str, ...]:
        """Names of the block's parameters, in the order of the flat vectors."""
        return self._block

    @property
    def size(self) -> int:
        """Number of scalar parameters in the block: the side of the Hessian."""
        return sum(self._numels)

    @property
    def method(self) -> str:
        """The HVP method in use, "fwd_rev" or "double_backward".

        For method="auto" the first access (or the first `hvp`) runs the one-sample probe.
        """
        if self._resolved_method is None:
            self._resolved_method = self._resolve_method(self._method_request)
        return self._resolved_method

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the block's parameters and of the vectors that `hvp` returns."""
        return next(iter(self._block_values.values())).dtype

    @property
    def device(self) -> torch.device:
        """Device of the block's parameters."""
        return next(iter(self._block_values.values())).device

    @property
    def n_samples(self) -> int:
        """Number of samples in the data set."""
        return self._n_samples

    def flatten(self, tensors: Mapping[str, Tensor]) -> Float[Tensor, " n"]:
        """Concatenate one tensor per block parameter into a flat vector, in block order."""
        missing = [name for name in self._block if name not in tensors]
        if missing:
            raise ValueError(f"tensors is missing the block parameters {missing}.")
        return torch.cat([tensors[name].reshape(-1) for name in self._block])

    def unflatten(self, vector: Float[Tensor, " n"]) -> dict[str, Tensor]:
        """Split a flat vector into one tensor per block parameter, shaped like the parameter."""
        if vector.shape != (self.size,):
            raise ValueError(
                f"vector has shape {tuple(vector.shape)}: expected ({self.size},), one entry per "
                "scalar parameter of the block."
            )
        pieces = torch.split(vector, self._numels)
        return {
            name: piece.reshape(shape)
            for name, piece, shape in zip(self._block, pieces, self._shapes, strict=True)
        }

    def block_vector(self) -> Float[Tensor, " n"]:
        """Return the block's current parameter values as a flat vector."""
        return self.flatten(self._block_values)

    def loss(self, vector: Float[Tensor, " n"] | None = None) -> Float[Tensor, ""]:
        """Compute the mean loss over the data set, with the block set to ``vector``.

        None keeps the block's current values. The result is differentiable in ``vector``.
        """
        block_values = self._block_values if vector is None else self.unflatten(vector)
        total = 0.0
        for inputs, labels, weight in self._chunks:
            total = total + weight * self._block_loss(block_values, inputs, labels)
        return total

    def gradient(self) -> Float[Tensor, " n"]:
        """Compute the gradient of the mean loss with respect to the block, flat."""
        gradient = torch.zeros(self.size, dtype=self.dtype, device=self.device)
        for inputs, labels, weight in self._chunks:
            with torch.enable_grad():
                chunk_gradient = torch.func.grad(self._block_loss)(
                    self._block_values, inputs, labels
                )
            gradient += weight * self.flatten(chunk_gradient)
        return gradient

    def hvp(self, vector: Float[Tensor, " n"]) -> Float[Tensor, " n"]:
        """Compute the Hessian-vector product H v of the mean loss over the block.

        ``vector`` is cast to the problem's dtype and device, so a float64 CPU vector from
        scipy works with any problem. The result has the problem's dtype and device.
        """
        tangents = self.unflatten(vector.detach().to(dtype=self.dtype, device=self.device))
        product = torch.zeros(self.size, dtype=self.dtype, device=self.device)
        for inputs, labels, weight in self._chunks:
            product += weight * self.flatten(self._chunk_hvp(self.method, tangents, inputs, labels))
        return product

    __call__ = hvp

    def _block_loss(
        self, block_values: dict[str, Tensor], inputs: Tensor, labels: Tensor
    ) -> Tensor:
        return self._loss_fn({**self._fixed, **block_values}, inputs, labels)

    def _chunk_hvp(
        self, method: str, tangents: dict[str, Tensor], inputs: Tensor, labels: Tensor
    ) -> dict[str, Tensor]:
        if method == "fwd_rev":
            return self._chunk_hvp_fwd_rev(tangents, inputs, labels)
        return self._chunk_hvp_double_backward(tangents, inputs, labels)

    def _chunk_hvp_fwd_rev(
        self, tangents: dict[str, Tensor], inputs: Tensor, labels: Tensor
    ) -> dict[str, Tensor]:
        def block_gradient(block_values: dict[str, Tensor]) -> dict[str, Tensor]:
            return torch.func.grad(self._block_loss)(block_values, inputs, labels)

        with torch.enable_grad():
            _, product = torch.func.jvp(block_gradient, (self._block_values,), (tangents,))
        return product

    def _chunk_hvp_double_backward(
        self, tangents: dict[str, Tensor], inputs: Tensor, labels: Tensor
    ) -> dict[str, Tensor]:
        leaves = {
            name: value.detach().requires_grad_(True) for name, value in self._block_values.items()
        }
        with torch.enable_grad():
            loss = self._block_loss(leaves, inputs, labels)
            if not loss.requires_grad:
                return {name: torch.zeros_like(value) for name, value in leaves.items()}
            gradients = torch.autograd.grad(
                loss,
                tuple(leaves.values()),
                create_graph=True,
                allow_unused=True,
                materialize_grads=True,
            )
            directional = sum(
                (g * tangents[name]).sum() for name, g in zip(self._block, gradients, strict=True)
            )

            # A loss that is at most linear in the block has a constant gradient, so H = 0.
            if not directional.requires_grad:
                return {name: torch.zeros_like(value) for name, value in leaves.items()}
            products = torch.autograd.grad(
                directional, tuple(leaves.values()), allow_unused=True, materialize_grads=True
            )
        return dict(zip(self._block, products, strict=True))

    def _resolve_method(self, method: str) -> str:
        if method != "auto":
            return method

        inputs, labels, _ = self._chunks[0]
        tangents = {name: torch.ones_like(value) for name, value in self._block_values.items()}
        try:
            product = self._chunk_hvp_double_backward(tangents, inputs[:1], labels[:1])
        except (RuntimeError, NotImplementedError) as error:
            logger.info("Double-backward HVP failed (%s), so forward-over-reverse is used.", error)
            return "fwd_rev"

        # An operation whose backward is not differentiable (@once_differentiable) gives a
        # first gradient without a graph, which double backward reads as H = 0. A zero probe is
        # therefore checked against forward-over-reverse, which does not need that graph.
        if any(bool(value.any()) for value in product.values()):
            return "double_backward"
        try:
            check = self._chunk_hvp_fwd_rev(tangents, inputs[:1], labels[:1])
        except (RuntimeError, NotImplementedError):
            return "double_backward"
        if any(bool(value.any()) for value in check.values()):
            logger.info("Double backward gave H v = 0 where forward-over-reverse did not: using it.")
            return "fwd_rev"
        return "double_backward"


def _cast(tensor: Tensor, dtype: torch.dtype | None) -> Tensor:
    if dtype is None or not tensor.is_floating_point():
        return tensor
    return tensor.to(dtype)


def _check_data(inputs: Tensor, labels: Tensor) -> None:
    if inputs.ndim == 0 or labels.ndim == 0 or inputs.shape[0] == 0:
        raise ValueError(
            f"inputs has shape {tuple(inputs.shape)} and labels {tuple(labels.shape)}: expected "
            "batch-first tensors with at least one sample."
        )
    if inputs.shape[0] != labels.shape[0]:
        raise ValueError(
            f"inputs has {inputs.shape[0]} samples but labels has {labels.shape[0]}: pass one "
            "label per input."
        )


def _check_block(
    params: Mapping[str, Tensor], block: Sequence[str] | None, argument: str
) -> tuple[str, ...]:
    if len(params) == 0:
        raise ValueError(
            "params is empty: pass the model's parameters, e.g. dict(model.named_parameters())."
        )
    if isinstance(block, str):
        raise TypeError(
            f"{argument}={block!r} is a string: pass a sequence of names, e.g. [{block!r}]."
        )

    names = tuple(params) if block is None else tuple(block)
    if len(names) == 0:
        raise ValueError(f"{argument} is empty: pass at least one parameter name, or None for all.")
    unknown = [name for name in names if name not in params]
    if unknown:
        raise ValueError(
            f"{argument} names unknown parameters {unknown}: expected names among {list(params)}."
        )
    if len(set(names)) != len(names):
        raise ValueError(f"{argument}={list(names)} repeats a name: list each parameter once.")
    not_floating = [name for name in names if not params[name].is_floating_point()]
    if not_floating:
        raise TypeError(
            f"{argument} contains non-floating parameters {not_floating}: the Hessian needs floating ones."
        )
    return names


# ---------------------------------------------------------------------------------------------
# Spectra


@dataclass(frozen=True)
class EigenResult:
    """Extreme eigenpairs of a symmetric operator, with their residuals.

    Attributes:
        eigenvalues: computed eigenvalues in increasing order. For ``which="both"`` the first
            ``k_smallest`` are the smallest and the last ``k`` the largest.
        residuals: ||H v - λ v|| of each eigenpair, with ||v|| = 1, in the order of
            ``eigenvalues``. Small residuals relative to max |λ| mean converged pairs.
        eigenvectors: unit eigenvectors as columns, or None when not requested.
        which: "both", "largest" or "smallest".
        tol: the relative tolerance passed to `eigsh`.
        n_matvecs: number of operator applications, including the residual checks.
    """

    eigenvalues: Float[Tensor, " eig"]
    residuals: Float[Tensor, " eig"]
    eigenvectors: Float[Tensor, "n eig"] | None
    which: str
    tol: float
    n_matvecs: int

    def __post_init__(self) -> None:
        if self.which not in _WHICH:
            raise ValueError(f"which={self.which!r} is invalid: expected one of {_WHICH}.")
        if self.residuals.shape != self.eigenvalues.shape:
            raise ValueError(
                f"residuals has shape {tuple(self.residuals.shape)} but eigenvalues "
                f"{tuple(self.eigenvalues.shape)}: expected one residual per eigenvalue."
            )
        if (
            self.eigenvectors is not None
            and self.eigenvectors.shape[1] != self.eigenvalues.shape[0]
        ):
            raise ValueError(
                f"eigenvectors has {self.eigenvectors.shape[1]} columns but there are "
                f"{self.eigenvalues.shape[0]} eigenvalues: expected one column per eigenvalue."
            )

    @property
    def smallest(self) -> float:
        """The smallest computed eigenvalue; the operator's λ_min unless which="largest"."""
        return float(self.eigenvalues[0])

    @property
    def largest(self) -> float:
        """The largest computed eigenvalue; the operator's λ_max unless which="smallest"."""
        return float(self.eigenvalues[-1])


def extreme_eigenvalues(
    hvp: Callable[[Tensor], Tensor],
    n: int,
    k: int = 1,
    which: SpectrumEnd = "both",
    tol: float = 1e-8,
    dtype: torch.dtype = torch.float64,
    return_eigenvectors: bool = False,
    max_iterations: int | None = None,
    generator: torch.Generator | None = None,
    solver: str = "arpack",
    k_smallest: int | None = None,
    tol_smallest: float | None = None,
) -> EigenResult:
    """Compute the k largest and/or k smallest eigenvalues of a symmetric operator by Lanczos.

    Two solvers:

    * ``"arpack"``: the operator is wrapped in a scipy `LinearOperator` and passed to ARPACK's
      implicitly restarted Lanczos method (`scipy.sparse.linalg.eigsh`) with which="LA" for the
      largest (algebraic) and which="SA" for the smallest eigenvalues, one run per end.
    * ``"lanczos"``: one Lanczos run with full reorthogonalisation serves both ends, because
      its Krylov space approximates the largest and the smallest eigenvalues at once. It stops
      at the first step at which every wanted Ritz pair (θ, y) has the residual estimate
      |β_m s_m| = ||H y - θ y|| below ``tol`` times the largest |θ|, an estimate of ||H||. So
      it takes no more products than a fixed-length Lanczos run from the same start vector
      that reaches the same residual, while ARPACK builds at least 20 Lanczos vectors per end
      (scipy's default ``ncv`` for k <= 9). It keeps every Lanczos vector,
      ``max_iterations × n`` float64 values at most.

    The residual ||H v - λ v|| of every eigenpair is computed afterwards with one more product.

    Args:
        hvp: the operator, v [n] -> H v [n], e.g. a `HessianProblem`. It must be symmetric.
        n: the dimension of the operator.
        k: eigenvalues per end; 1 <= k < n, and 2k <= n for which="both".
        which: "largest", "smallest" or "both".
        tol: for "arpack", the relative accuracy of the eigenvalues, where 0 means machine
            precision. For "lanczos", the residual bound relative to the largest |Ritz value|;
            it must be > 0.
        dtype: dtype of the vectors passed to ``hvp``. A `HessianProblem` casts them to its own
            dtype, so build it with dtype=torch.float64 for a float64 Hessian.
        return_eigenvectors: whether to keep the eigenvectors in the result.
        max_iterations: for "arpack", the maximum number of Arnoldi update iterations (None:
            scipy's default of 10 n); for "lanczos", the maximum number of Lanczos steps
            (None: min(n, 300)).
        generator: draws the Lanczos start vector; None uses a generator seeded with 0, so
            the result is reproducible.
        solver: "arpack" or "lanczos", as above.
        k_smallest: eigenvalues at the smallest end when it differs from ``k``; None means
            ``k``. Used by which="smallest" and "both".
        tol_smallest: the tolerance of the smallest end when it differs from ``tol``; None
            means ``tol``.

    Returns:
        An `EigenResult` with eigenvalues in increasing order and their residuals.

    Raises:
        RuntimeError: when the solver does not converge; raise max_iterations or tol.

    Example:
        >>> A = torch.diag(torch.tensor([-2.0, 0.5, 1.0, 3.0], dtype=torch.float64))
        >>> result = extreme_eigenvalues(lambda v: A @ v, 4, k=1)
        >>> [round(value, 8) for value in result.eigenvalues.tolist()]
        [-2.0, 3.0]
    """
    if which not in _WHICH:
        raise ValueError(f"which={which!r} is invalid: expected one of {_WHICH}.")
    k_small = k if k_smallest is None else k_smallest
    tol_small = tol if tol_smallest is None else tol_smallest
    for name, value in (("k", k), ("k_smallest", k_small)):
        if not 1 <= value < n:
            raise ValueError(
                f"{name}={value} is invalid for n={n}: Lanczos needs 1 <= {name} < n; use "
                "dense_hessian for tiny n."
            )
    if which == "both" and k + k_small > n:
        raise ValueError(
            f"k={k} largest and k_smallest={k_small} smallest eigenvalues exceed n={n}: pass "
            "fewer, or use dense_hessian."
        )
    for name, value in (("tol", tol), ("tol_smallest", tol_small)):
        if value < 0:
            raise ValueError(f"{name}={value!r} is invalid: expected a relative tolerance >= 0.")
    if solver not in _SOLVERS:
        raise ValueError(f"solver={solver!r} is invalid: expected one of {_SOLVERS}.")
    if solver == "lanczos" and min(tol, tol_small) == 0:
        raise ValueError(
            "tol=0 is invalid for solver='lanczos': pass a residual bound > 0, e.g. 1e-8."
        )

    n_matvecs = 0

    def apply(vector: np.ndarray) -> np.ndarray:
        nonlocal n_matvecs
        n_matvecs += 1
        product = hvp(
            torch.from_numpy(np.ascontiguousarray(vector, dtype=np.float64).reshape(-1)).to(dtype)
        )
        return product.detach().to(device="cpu", dtype=torch.float64).numpy()

    operator = LinearOperator((n, n), matvec=apply, dtype=np.float64)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    start = torch.randn(n, generator=generator, dtype=torch.float64).numpy()

    # A random start vector lies in the null space of a non-zero H with probability 0, so
    # H start = 0 means H = 0, where ARPACK would stop with "starting vector is zero".
    start_product = apply(start)
    if not np.any(start_product):
        logger.info("The operator maps the random start vector to 0, so it is taken to be 0.")
        count = {"both": k + k_small, "largest": k, "smallest": k_small}[which]
        return _zero_operator_result(n, count, which, tol, return_eigenvectors, n_matvecs)

    targets = {"SA": (k_small, tol_small), "LA": (k, tol)}
    ends = {
        end: targets[end]
        for end in {"both": ("SA", "LA"), "largest": ("LA",), "smallest": ("SA",)}[which]
    }
    # numpy's and scipy's OpenBLAS threads busy-wait after each call and so compete with torch's
    # threads inside every Hessian-vector product. On 2 cores, limiting them to one thread cut
    # the report's Hessian section of the p = 97 MLP from 19.8 s to 8.7 s (torch's own MKL is
    # linked into torch and not affected).
    with threadpool_limits(limits=1, user_api="blas"):
        if solver == "lanczos":
            steps = min(n, 300) if max_iterations is None else max_iterations
            values, vectors = _lanczos_ends(apply, start, start_product, ends, steps)
        else:
            values, vectors = _arpack_ends(
                operator, start, ends, max_iterations, lambda: n_matvecs
            )

    eigenvalues = torch.from_numpy(np.concatenate(values))
    eigenvectors = torch.from_numpy(np.concatenate(vectors, axis=1))
    residuals = torch.empty_like(eigenvalues)
    for i, value in enumerate(eigenvalues.tolist()):
        eigenvector = eigenvectors[:, i]
        product = torch.from_numpy(apply(eigenvector.numpy()))
        residuals[i] = torch.linalg.vector_norm(product - value * eigenvector)
    logger.debug("Lanczos (%s, k=%d, n=%d) used %d products.", which, k, n, n_matvecs)

    return EigenResult(
        eigenvalues=eigenvalues,
        residuals=residuals,
        eigenvectors=eigenvectors if return_eigenvectors else None,
        which=which,
        tol=tol,
        n_matvecs=n_matvecs,
    )


def _arpack_ends(
    operator: LinearOperator,
    start: np.ndarray,
    ends: dict[str, tuple[int, float]],
    max_iterations: int | None,
    count_products: Callable[[], int],
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Run ARPACK once per end ("SA" or "LA" → (k, tol)); return (values, vectors) per end.

    Values are in increasing order, vectors are columns.
    """
    values, vectors = [], []
    for end, (k, tol) in ends.items():
        try:
            end_values, end_vectors = eigsh(
                operator, k=k, which=end, tol=tol, v0=start, maxiter=max_iterations
            )
        except ArpackNoConvergence as error:
            raise RuntimeError(
                f"Lanczos ({end}) did not converge after {count_products()} products: raise "
                f"max_iterations (now {max_iterations}) or tol (now {tol})."
            ) from error
        order = np.argsort(end_values)
        values.append(end_values[order])
        vectors.append(end_vectors[:, order])
    return values, vectors


def _lanczos_ends(
    apply: Callable[[np.ndarray], np.ndarray],
    start: np.ndarray,
    start_product: np.ndarray,
    ends: dict[str, tuple[int, float]],
    max_steps: int,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Run Lanczos with full reorthogonalisation until the Ritz pairs of ``ends`` converge.

    ``ends`` maps "SA" and/or "LA" to (k, tol): the k smallest or largest Ritz pairs must each
    have a residual estimate of at most tol times the largest |Ritz value|. Returns one
    (values, vectors) pair per end, in the layout of the ARPACK branch: values in increasing
    order, vectors as columns.
    """
    n = start.shape[0]
    norm = float(np.linalg.norm(start))
    basis = torch.empty(min(max_steps, 32), n, dtype=torch.float64)
    basis[0] = torch.from_numpy(start / norm)
    product = torch.from_numpy(start_product / norm)
    alphas: list[float] = []
    betas: list[float] = []
    needed = sum(k for k, _ in ends.values())

    for step in range(max_steps):
        if step > 0:
            product = torch.from_numpy(apply(basis[step].numpy()))
        vector = basis[step]
        alpha = float(vector @ product)
        alphas.append(alpha)
        remainder = product - alpha * vector
        if step > 0:
            remainder -= betas[-1] * basis[step - 1]
        # Orthogonalising against every earlier vector, twice, keeps the basis orthonormal to
        # rounding. Plain Lanczos loses orthogonality and returns spurious copies of eigenvalues.
        for _ in range(2):
            remainder -= basis[: step + 1].T @ (basis[: step + 1] @ remainder)
        beta = float(torch.linalg.vector_norm(remainder))

        tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off_diagonal = torch.tensor(betas, dtype=torch.float64)
            tridiagonal += torch.diag(off_diagonal, 1) + torch.diag(off_diagonal, -1)
        ritz_values, ritz_vectors = torch.linalg.eigh(tridiagonal)
        size = step + 1
        wanted = {
            end: list(range(k)) if end == "SA" else list(range(size - k, size))
            for end, (k, _) in ends.items()
        }
        scale = float(ritz_values.abs().max())
        # A breakdown (beta ~ 0) or an exhausted space means the Ritz pairs are exact.
        exact = beta <= 1e-12 * scale or size == n
        if size >= needed:
            converged = all(
                bool((beta * ritz_vectors[-1, wanted[end]].abs() <= tol * scale).all())
                for end, (_, tol) in ends.items()
            )
            if exact or converged:
                break
        if exact:
            raise RuntimeError(
                f"Lanczos found an invariant subspace of dimension {size}, fewer than the "
                f"{needed} eigenvalues requested: pass another generator for the start vector."
            )

        if size == max_steps:
            raise RuntimeError(
                f"Lanczos did not reach its tolerance ({_describe_ends(ends)}) in "
                f"max_iterations={max_steps} steps: raise max_iterations or tol."
            )

        betas.append(beta)
        if size == basis.shape[0]:
            grown = torch.empty(min(2 * size, max_steps), n, dtype=torch.float64)
            grown[:size] = basis
            basis = grown
        basis[size] = remainder / beta

    values, vectors = [], []
    for end in ends:
        columns = ritz_vectors[:, wanted[end]]
        values.append(ritz_values[wanted[end]].numpy())
        vectors.append((basis[:size].T @ columns).numpy())
    return values, vectors


def _describe_ends(ends: dict[str, tuple[int, float]]) -> str:
    names = {"SA": "smallest", "LA": "largest"}
    return ", ".join(f"tol={tol:g} for the {k} {names[end]}" for end, (k, tol) in ends.items())


def _zero_operator_result(
    n: int, count: int, which: str, tol: float, return_eigenvectors: bool, n_matvecs: int
) -> EigenResult:
    return EigenResult(
        eigenvalues=torch.zeros(count, dtype=torch.float64),
        residuals=torch.zeros(count, dtype=torch.float64),
        eigenvectors=torch.eye(n, count, dtype=torch.float64) if return_eigenvectors else None,
        which=which,
        tol=tol,
        n_matvecs=n_matvecs,
    )


def dense_hessian(
    loss_fn: LossFn,
    params: Mapping[str, Tensor],
    inputs: Tensor,
    labels: Tensor,
    block: Sequence[str] | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
    max_size: int = 4096,
) -> Float[Tensor, "n n"]:
    """Compute the full Hessian of the mean loss over a block, for tiny models and tests.

    The matrix comes from `torch.autograd.functional.hessian` of `HessianProblem.loss` as a
    function of the flat block vector, a path that does not use `HessianProblem.hvp`.

    Args:
        loss_fn, params, inputs, labels, block, chunk_size, dtype: as in `HessianProblem`.
        max_size: the largest block size accepted; the matrix has max_size^2 entries.

    Returns:
        The Hessian, shape [n, n] with n the block size, rows and columns in flat block order.
    """
    problem = HessianProblem(
        loss_fn,
        params,
        inputs,
        labels,
        block=block,
        chunk_size=chunk_size,
        method="double_backward",
        dtype=dtype,
    )
    if problem.size > max_size:
        raise ValueError(
            f"The block has {problem.size} parameters, more than max_size={max_size}: use "
            "extreme_eigenvalues with a HessianProblem, or raise max_size."
        )
    return torch.autograd.functional.hessian(problem.loss, problem.block_vector())


@dataclass(frozen=True)
class TraceEstimate:
    """A Hutchinson estimate of a trace.

    Attributes:
        estimate: the mean of z^T H z over the samples.
        standard_error: the sample standard deviation over sqrt(n_samples).
        n_samples: number of Rademacher vectors z.
    """

    estimate: float
    standard_error: float
    n_samples: int

    def __post_init__(self) -> None:
        if self.n_samples < 2:
            raise ValueError(
                f"n_samples={self.n_samples} is invalid: a standard error needs at least 2 samples."
            )
        if not self.standard_error >= 0:
            raise ValueError(
                f"standard_error={self.standard_error!r} is invalid: expected a value >= 0."
            )


def hutchinson_trace(
    hvp: Callable[[Tensor], Tensor],
    n: int,
    n_samples: int,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
) -> TraceEstimate:
    """Estimate the trace of a symmetric operator from products with random sign vectors.

    Hutchinson's estimator: for z with independent entries ±1 (Rademacher), E[z^T H z] =
    tr(H). The estimate is the mean over ``n_samples`` vectors, and its standard error is the
    sample standard deviation divided by sqrt(n_samples).

    Args:
        hvp: the operator, v [n] -> H v [n], e.g. a `HessianProblem`.
        n: the dimension of the operator.
        n_samples: number of random vectors, at least 2.
        generator: the source of the random signs.
        dtype: dtype of the vectors passed to ``hvp``.

    Returns:
        A `TraceEstimate`.
    """
    if n_samples < 2:
        raise ValueError(
            f"n_samples={n_samples} is invalid: expected at least 2 to estimate a standard error."
        )
    if n < 1:
        raise ValueError(f"n={n} is invalid: expected the operator dimension, at least 1.")

    samples = torch.empty(n_samples, dtype=torch.float64)
    for i in range(n_samples):
        signs = (torch.randint(0, 2, (n,), generator=generator) * 2 - 1).to(dtype)
        product = hvp(signs).detach().to(device="cpu", dtype=torch.float64)
        samples[i] = signs.to(torch.float64) @ product

    return TraceEstimate(
        estimate=float(samples.mean()),
        standard_error=float(samples.std(correction=1) / math.sqrt(n_samples)),
        n_samples=n_samples,
    )


# ---------------------------------------------------------------------------------------------
# Saddle points, block coupling and gradients


@dataclass(frozen=True)
class SaddleVerdict:
    """The curvature type of a point, read from extreme Hessian eigenvalues.

    Attributes:
        grad_norm: L2 norm of the gradient at the point.
        lambda_min: smallest eigenvalue given.
        lambda_max: largest eigenvalue given.
        n_negative: number of given eigenvalues below -tau.
        n_positive: number of given eigenvalues above tau.
        tau: the curvature threshold; eigenvalues in [-tau, tau] count as flat.
        grad_tol: the gradient threshold for stationarity, or None when not checked.
        verdict: one of `VERDICTS` (see `saddle_verdict`).
    """

    grad_norm: float
    lambda_min: float
    lambda_max: float
    n_negative: int
    n_positive: int
    tau: float
    grad_tol: float | None
    verdict: str

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict={self.verdict!r} is invalid: expected one of {VERDICTS}.")
        if self.lambda_min > self.lambda_max:
            raise ValueError(f"lambda_min={self.lambda_min} exceeds lambda_max={self.lambda_max}.")


def saddle_verdict(
    grad_norm: float,
    eigenvalues: Float[Tensor, " eig"] | EigenResult,
    tau: float,
    grad_tol: float | None = None,
) -> SaddleVerdict:
    """Classify the curvature at a point from its extreme Hessian eigenvalues.

    With λ_min and λ_max the smallest and largest eigenvalues given:

    * "non-stationary": ``grad_tol`` is given and grad_norm > grad_tol, so the point is not a
      critical point and no curvature verdict applies.
    * "saddle": λ_min < -tau and λ_max > tau (curvature of both signs).
    * "minimum": λ_min >= -tau and λ_max > tau (no direction curves down by more than tau).
    * "maximum": λ_max <= tau and λ_min < -tau.
    * "flat": every eigenvalue lies in [-tau, tau].

    Without ``grad_tol`` the verdict describes curvature only, and the caller judges from
    grad_norm whether the point is close to a critical point. The verdict covers the whole
    Hessian only when both ends of its spectrum were computed.

    Args:
        grad_norm: L2 norm of the gradient at the point, >= 0.
        eigenvalues: eigenvalues from both ends of the spectrum, or an `EigenResult` computed
            with which="both".
        tau: curvature threshold >= 0, in the units of the eigenvalues.
        grad_tol: optional gradient-norm threshold for a critical point.

    Returns:
        A `SaddleVerdict` that records the inputs and the verdict.

    Example:
        >>> saddle_verdict(0.0, torch.tensor([-1.0, 2.0]), tau=1e-3).verdict
        'saddle'
    """
    if isinstance(eigenvalues, EigenResult):
        if eigenvalues.which != "both":
            raise ValueError(
                f"eigenvalues was computed with which={eigenvalues.which!r}: a verdict needs both "
                "ends of the spectrum, so compute it with which='both'."
            )
        eigenvalues = eigenvalues.eigenvalues
    if eigenvalues.ndim != 1 or eigenvalues.shape[0] == 0:
        raise ValueError(
            f"eigenvalues has shape {tuple(eigenvalues.shape)}: expected a non-empty vector."
        )
    if not tau >= 0:
        raise ValueError(f"tau={tau!r} is invalid: expected a threshold >= 0.")
    if not grad_norm >= 0:
        raise ValueError(f"grad_norm={grad_norm!r} is invalid: expected a norm >= 0.")
    if grad_tol is not None and not grad_tol >= 0:
        raise ValueError(f"grad_tol={grad_tol!r} is invalid: expected a threshold >= 0 or None.")

    lambda_min, lambda_max = float(eigenvalues.min()), float(eigenvalues.max())
    curves_down, curves_up = lambda_min < -tau, lambda_max > tau
    if grad_tol is not None and grad_norm > grad_tol:
        verdict = "non-stationary"
    elif curves_down and curves_up:
        verdict = "saddle"
    elif curves_up:
        verdict = "minimum"
    elif curves_down:
        verdict = "maximum"
    else:
        verdict = "flat"

    return SaddleVerdict(
        grad_norm=float(grad_norm),
        lambda_min=lambda_min,
        lambda_max=lambda_max,
        n_negative=int((eigenvalues < -tau).sum()),
        n_positive=int((eigenvalues > tau).sum()),
        tau=float(tau),
        grad_tol=grad_tol,
        verdict=verdict,
    )


def mixed_block_norm(
    loss_fn: LossFn,
    params: Mapping[str, Tensor],
    inputs: Tensor,
    labels: Tensor,
    block_a: Sequence[str],
    block_b: Sequence[str],
    chunk_size: int | None = None,
    method: HvpMethod = "auto",
    dtype: torch.dtype | None = None,
    tol: float = 1e-8,
    max_iterations: int | None = None,
    generator: torch.Generator | None = None,
) -> float:
    """Compute the spectral norm of the off-diagonal Hessian block H_ab between two blocks.

    H_ab = d^2 L / (d θ_a d θ_b) measures how a step in block b changes the gradient of block
    a, e.g. the coupling between the embedding E and the first layer W. Its largest singular
    value is the largest eigenvalue of the symmetric matrix [[0, H_ab], [H_ba, 0]], whose
    eigenvalues are ±σ_i(H_ab). Lanczos runs on that matrix, one HVP on the union of the
    blocks per half: H_ab v is read from H [0; v] on block a, and H_ba u from H [u; 0] on
    block b. This avoids the squared condition number of H_ab^T H_ab.

    Args:
        loss_fn, params, inputs, labels, chunk_size, method, dtype: as in `HessianProblem`.
        block_a: parameter names of the first block.
        block_b: parameter names of the second block, disjoint from block_a.
        tol, max_iterations, generator: as in `extreme_eigenvalues`.

    Returns:
        σ_max(H_ab) >= 0.
    """
    names_a = _check_block(params, block_a, "block_a")
    names_b = _check_block(params, block_b, "block_b")
    shared = sorted(set(names_a) & set(names_b))
    if shared:
        raise ValueError(
            f"block_a and block_b share the parameters {shared}: pass disjoint blocks."
        )

    problem = HessianProblem(
        loss_fn,
        params,
        inputs,
        labels,
        block=names_a + names_b,
        chunk_size=chunk_size,
        method=method,
        dtype=dtype,
    )
    size_a = sum(params[name].numel() for name in names_a)

    def coupling(vector: Tensor) -> Tensor:
        vector = vector.to(dtype=problem.dtype, device=problem.device)
        only_a = torch.zeros_like(vector)
        only_a[:size_a] = vector[:size_a]
        only_b = torch.zeros_like(vector)
        only_b[size_a:] = vector[size_a:]
        return torch.cat([problem.hvp(only_b)[:size_a], problem.hvp(only_a)[size_a:]])

    result = extreme_eigenvalues(
        coupling,
        problem.size,
        k=1,
        which="largest",
        tol=tol,
        max_iterations=max_iterations,
        generator=generator,
    )
    return max(result.largest, 0.0)


def gradient_norms(
    loss_fn: LossFn,
    params: Mapping[str, Tensor],
    inputs: Tensor,
    labels: Tensor,
    blocks: Mapping[str, Sequence[str]] | Sequence[str],
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Compute the L2 norm of the mean-loss gradient over each block, from one gradient pass.

    Args:
        loss_fn, params, inputs, labels, chunk_size, dtype: as in `HessianProblem`.
        blocks: block label -> parameter names, e.g. ``{"E": ["embed.W_E"], "W": ["mlp.W_in"]}``,
            or a sequence of parameter names, each its own block.

    Returns:
        Block label (or parameter name) -> gradient norm.

    Example:
        >>> def loss_fn(params, inputs, labels):
        ...     return (params["x"] ** 2).sum() + 2 * params["y"].sum()
        >>> params = {"x": torch.tensor([3.0, 4.0]), "y": torch.zeros(4)}
        >>> gradient_norms(loss_fn, params, torch.zeros(1), torch.zeros(1), ["x", "y"])
        {'x': 10.0, 'y': 4.0}
    """
    if isinstance(blocks, str):
        raise TypeError(
            f"blocks={blocks!r} is a string: pass a sequence of names, e.g. [{blocks!r}]."
        )
    named_blocks = (
        dict(blocks) if isinstance(blocks, Mapping) else {name: [name] for name in blocks}
    )
    if not named_blocks:
        raise ValueError("blocks is empty: pass at least one block.")
    for label, names in named_blocks.items():
        _check_block(params, names, f"blocks[{label!r}]")

    union = tuple(dict.fromkeys(name for names in named_blocks.values() for name in names))
    problem = HessianProblem(
        loss_fn, params, inputs, labels, block=union, chunk_size=chunk_size, dtype=dtype
    )
    gradient = problem.unflatten(problem.gradient())

    return {
        label: math.sqrt(sum(float(gradient[name].pow(2).sum()) for name in names))
        for label, names in named_blocks.items()
    }
