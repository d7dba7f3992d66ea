"""The engine's side of proof certificates: the search tree of one spec case, recorded as it is built.

The search names every subdomain it bounds (``SubproblemBatch.ident``, a node of the tree) and tells the
recorder how each node was made (an input split of its parent), how its polytopes were ruled out (a row
bounded above 0 by CROWN with its slopes, on the node's box or on its contracted box) and how its box was
contracted.  ``build`` lays the tree out in the certificate's format (``format.py``): nodes in preorder,
closures and contraction rows referring to them.

The recorder also audits the search: a polytope the search treats as ruled out, or a box it drops,
without a recorded reason makes the case ``uncertified`` (no certificate rather than a wrong one).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from verifier.bounds import Betas, Slopes
from verifier.objective import CaseObjective

if TYPE_CHECKING:
    from verifier.bab.subproblems import SubproblemBatch
    from vnnlib.spec import Spec

Tensor = torch.Tensor

LEAF, INPUT_SPLIT, RELU_SPLIT, FORK = 0, 1, 2, 3


def _slopes_at(source: Any, node: Tensor, row: Tensor) -> Tensor | None:
    """The lower slopes a bound used at subdomains ``node`` for rows ``row`` ``(M,)``, all ReLU layers side by
    side ``(M, H)``: ``source`` is the ``Slopes`` it optimized, or the ``IntermediateBounds`` whose CROWN
    adaptive slopes (1 where ``u > -l``) it took.  Recorded explicitly: the checker's own bounds may be
    tighter, and with the same slopes a tighter bound never hurts (with its own adaptive choice it might)."""
    if isinstance(source, Slopes):
        parts = [t[node.to(t.device), row.to(t.device)] for t in source.final]
    else:
        parts = [hi[node.to(hi.device)] > -lo[node.to(lo.device)] for lo, hi in zip(source.lower, source.upper,
                                                                                     strict=True)]
    return torch.cat([t.cpu().to(torch.float32) for t in parts], dim=1) if parts else None


class _Grow:
    """A tensor that grows along its first axis."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, fill: float | int | bool) -> None:
        self.data = torch.full((64, *shape), fill, dtype=dtype)
        self.fill, self.size = fill, 0

    def extend(self, rows: Tensor) -> None:
        n = rows.shape[0]
        while self.size + n > self.data.shape[0]:
            more = torch.full_like(self.data, self.fill)
            self.data = torch.cat([self.data, more])
        self.data[self.size : self.size + n] = rows.to(self.data.dtype)
        self.size += n

    def view(self) -> Tensor:
        return self.data[: self.size]


@dataclass
class _Closures:
    """Closures recorded by one call: nodes, polytopes, weights ``(M, R)`` and the parameters."""

    ids: Tensor
    poly: Tensor
    weights: Tensor
    alpha: Tensor | None = None  # (M, H) float32
    beta: Tensor | None = None  # (M, H) float32
    nu: Tensor | None = None  # (M, H) float64
    on_box: Tensor | None = None  # (M,) bool: over the node's contracted box (None: none is)


class CaseRecorder:
    """The proof tree of one case: its polytopes have ``row_counts`` rows; the network's ReLU layers
    ``relu_sizes`` neurons."""

    def __init__(self, lower: Tensor, upper: Tensor, row_counts: list[int], relu_sizes: list[int],
                 lemma: bool = False) -> None:
        self.n_in, self.H = int(lower.shape[0]), int(sum(relu_sizes))
        # a derived lemma group's tree: a subdomain may leave its search without a closure (its row then
        # gets no bound there), so a drop is no reason to void the certificate
        self.lemma = lemma
        self.lemmas: list[tuple[dict[str, np.ndarray], str | None]] = []  # groups' arrays, or why there are none
        self.row_counts, self.relu_sizes = row_counts, relu_sizes
        self.P, self.R = len(row_counts), max(row_counts, default=1)
        self.parent = _Grow((), torch.long, -1)
        self.lower = _Grow((self.n_in,), torch.float64, 0.0)
        self.upper = _Grow((self.n_in,), torch.float64, 0.0)
        self.closed = _Grow((self.P,), torch.bool, False)  # per node: polytopes ruled out at it or above
        # per node, how its parent made it: the ReLU split (global neuron, sign) or the fork (polytope, only)
        self.neuron = _Grow((), torch.long, -1)
        self.sign = _Grow((), torch.int8, 0)
        self.fork = _Grow((), torch.long, -1)
        self.only = _Grow((), torch.bool, False)
        self.dead = _Grow((), torch.bool, False)  # made by a search that was given up
        self.shrunk = _Grow((), torch.bool, False)  # its box was contracted: later bounds are over that box
        # per call: nodes, their contracted boxes, and the contraction rows (node, polytope, weights)
        self.boxes: list[tuple[Tensor, Tensor, Tensor]] = []
        self.contract_rows: list[tuple[Tensor, Tensor, Tensor]] = []
        self.closures: list[_Closures] = []
        self.problem: str | None = None
        self.problem_mark = 0
        self._rows: dict[int, tuple[CaseObjective, Tensor, Tensor]] = {}
        self._add(torch.tensor([-1]), lower.double().cpu().unsqueeze(0), upper.double().cpu().unsqueeze(0))

    def _weights(self, obj: CaseObjective) -> tuple[Tensor, Tensor]:
        """Per row of ``obj``, its polytope ``(S,)`` and its weights over that polytope's rows ``(S, R)``."""
        cached = self._rows.get(id(obj))
        if cached is not None and cached[0] is obj:
            return cached[1], cached[2]
        basis = obj.row_basis().cpu()
        poly = obj.groups.to(torch.int8).argmax(0).cpu()
        offsets = np.concatenate([[0], np.cumsum(self.row_counts)]).astype(int)
        lam = torch.zeros(basis.shape[0], self.R, dtype=torch.float64)
        for p, k in enumerate(self.row_counts):
            mine = poly == p
            lam[mine, :k] = basis[mine, offsets[p] : offsets[p] + k]
            if not torch.equal(lam[mine, :k].sum(1), basis[mine].sum(1)):
                self.uncertified("a row combines rows of several polytopes")
        self._rows[id(obj)] = (obj, poly, lam)
        return poly, lam

    def _add(self, parent: Tensor, lower: Tensor, upper: Tensor, closed: Tensor | None = None) -> Tensor:
        first, n = self.parent.size, parent.shape[0]
        self.parent.extend(parent)
        self.lower.extend(lower)
        self.upper.extend(upper)
        self.closed.extend(closed if closed is not None else torch.zeros(n, self.P, dtype=torch.bool))
        for g in (self.neuron, self.sign, self.fork, self.only, self.dead, self.shrunk):
            g.extend(torch.full((n,), g.fill, dtype=g.data.dtype))
        return torch.arange(first, first + n)

    def uncertified(self, reason: str) -> None:
        """The case gets no certificate (the first reason is kept), unless the search that found the reason
        is discarded."""
        if self.problem is None:
            self.problem, self.problem_mark = reason, self.parent.size

    # ---- what the search tells the recorder ----

    def root_ident(self) -> Tensor:
        return torch.zeros(1, dtype=torch.long)

    def mark(self) -> int:
        """A point to ``discard`` back to."""
        return self.parent.size

    def proven(self, node: int) -> None:
        """Node ``node`` was proven by the search below it (its subtree closes every polytope)."""
        self.closed.view()[node] = True

    def discard(self, mark: int) -> None:
        """The nodes made since ``mark`` leave the tree (a search that was given up), and what was found
        wrong in that search with them."""
        self.dead.view()[mark:] = True
        if self.problem is not None and self.problem_mark >= mark:
            self.problem = None

    def branched(self, children: SubproblemBatch, neuron: Tensor | None = None) -> SubproblemBatch:
        """``children`` (each carrying its parent's ident) named as new nodes of the tree; ``neuron``
        ``(B,)``: the global index of the ReLU each child fixed (its sign in ``children.splits``)."""
        if children.ident is None:
            self.uncertified("children without a parent")
            return children
        parent = children.ident.cpu()
        ids = self._add(parent, children.lower.double().cpu(), children.upper.double().cpu(),
                        self.closed.view()[parent])
        if neuron is not None:
            flat = torch.cat([s.cpu() for s in children.splits], dim=1)  # (B, H)
            neuron = neuron.cpu()
            self.neuron.view()[ids] = neuron
            self.sign.view()[ids] = flat.gather(1, neuron.unsqueeze(1)).squeeze(1)
        return replace(children, ident=ids.to(children.lower.device))

    def forked(self, copies: SubproblemBatch, polytopes: Tensor) -> SubproblemBatch:
        """``copies`` of one node, copy ``i`` answering for polytope ``polytopes[i]`` only: a chain of
        forks, each letting its first child answer for one polytope and its second for the rest."""
        if copies.ident is None:
            self.uncertified("a fork of an unnamed subdomain")
            return copies
        node, ids = int(copies.ident[0]), []
        lower, upper = self.lower.view()[node : node + 1].clone(), self.upper.view()[node : node + 1].clone()
        for i, p in enumerate(polytopes.tolist()):
            if i == polytopes.numel() - 1:
                ids.append(node)
                break
            mine = torch.zeros(1, self.P, dtype=torch.bool)
            mine[0, p] = True
            closed = self.closed.view()[node : node + 1]
            first, second = self._add(torch.tensor([node, node]), lower.repeat(2, 1), upper.repeat(2, 1),
                                      torch.cat([closed | ~mine, closed | mine])).tolist()
            self.fork.view()[[first, second]] = p
            self.only.view()[first] = True
            ids.append(first)
            node = second
        return replace(copies, ident=torch.tensor(ids, device=copies.lower.device))

    def bounded(self, ident: Tensor | None, obj: CaseObjective, before: Tensor, rows: Tensor, slopes: Any,
                betas: Betas | None = None, splits: tuple[Tensor, ...] | None = None, on_box: bool = False) -> None:
        """Lower bounds ``rows`` ``(B, S)`` of ``obj``'s rows on the nodes ``ident`` by one backward pass with
        ``slopes`` (``Slopes``, or the ``IntermediateBounds`` whose adaptive slopes it used) and split
        multipliers ``betas`` on the nodes' regions (``on_box``: their contracted boxes, as are all bounds
        made after a node's contraction); ``before`` ``(B, S)``: the bounds they had; ``splits``: their split
        states (multipliers of unsplit neurons are dropped: they multiply 0).  Records a closure for each
        polytope newly ruled out; the parameters are gathered for those only."""
        if ident is None:
            self.uncertified("bounds of unnamed subdomains")
            return
        fresh = obj.left_open(before.cpu()) & ~obj.left_open(rows.cpu())  # (B, P)
        if not bool(fresh.any()):
            return
        node, poly = torch.nonzero(fresh, as_tuple=True)
        self._close(ident, obj, node, poly, rows, slopes, betas, splits, on_box)

    def let_go(self, ident: Tensor | None, obj: CaseObjective, poly: Tensor, rows: Tensor, slopes: Any,
               betas: Betas | None = None, splits: tuple[Tensor, ...] | None = None) -> None:
        """The nodes ``ident`` leave a lemma group's search with their polytopes ``poly`` ``(B,)`` open: each gets
        a closure of that polytope with the parameters of its bound ``rows`` ``(B, S)`` (as in ``bounded``),
        which the checker takes as the bound there (a derived group), whatever its sign."""
        if ident is None:
            self.uncertified("bounds of unnamed subdomains")
            return
        if ident.numel():
            self._close(ident, obj, torch.arange(ident.shape[0]), poly.cpu(), rows, slopes, betas, splits, False)

    def _close(self, ident: Tensor, obj: CaseObjective, node: Tensor, poly: Tensor, rows: Tensor, slopes: Any,
               betas: Betas | None, splits: tuple[Tensor, ...] | None, on_box: bool) -> None:
        """Closures of polytopes ``poly`` at the batch entries ``node`` (each by its best row of ``rows``)."""
        _, lam = self._weights(obj)
        r = rows.cpu()[node]
        row = torch.where(obj.groups.cpu()[poly], r, torch.full_like(r, -torch.inf)).argmax(1)  # its best row
        ids = ident.cpu()[node]
        mult = None
        if betas is not None and betas.values:
            mult = torch.cat([t[node.to(t.device), row.to(t.device)].cpu().float() for t in betas.values], 1)
            split = torch.cat([s[node.to(s.device)].cpu() for s in splits], 1) != 0
            mult = torch.where(split, mult.clamp_min(0), torch.zeros_like(mult))
        self.closures.append(_Closures(ids, poly, lam[row], _slopes_at(slopes, node, row), mult, None,
                                       self.shrunk.view()[ids] | on_box))
        self.closed.view()[ids, poly] = True

    def root_closures(self, obj: CaseObjective, slopes: Any) -> None:
        """A closure at the root for every row of ``obj`` (one row per polytope) with its ``slopes``, whatever
        its bound: a derived lemma group's rows."""
        poly, lam = self._weights(obj)
        row = torch.arange(lam.shape[0])
        node = torch.zeros_like(row)
        self.closures.append(_Closures(node, poly, lam, _slopes_at(slopes, node, row)))

    def solved(self, ident: int, obj: CaseObjective, polytopes: list[int], duals: tuple) -> None:
        """Node ``ident``'s ``polytopes`` (of ``obj``) proven by the certified LP's ``duals`` (per
        polytope: weights of its rows in ``obj``, coefficients of the pre-activations ``(H,)``)."""
        if len(duals) != len(polytopes):
            self.uncertified("an LP leaf without its multipliers")
            return
        poly_of, lam = self._weights(obj)
        for p, (weights, nu) in zip(polytopes, duals, strict=True):
            rows = torch.nonzero(obj.groups[p].cpu()).flatten()
            spec_weights = torch.as_tensor(weights, dtype=torch.float64) @ lam[rows]  # (R,)
            self.closures.append(_Closures(torch.tensor([ident]), torch.tensor([p]), spec_weights.unsqueeze(0),
                                           nu=torch.as_tensor(nu, dtype=torch.float64).unsqueeze(0),
                                           on_box=self.shrunk.view()[[ident]].clone()))
            self.closed.view()[ident, p] = True

    def contracted(self, ident: Tensor | None, obj: CaseObjective, before: SubproblemBatch,
                   after: SubproblemBatch) -> None:
        """The boxes of the nodes ``ident`` contracted from ``before``'s to ``after``'s by the linear bounds
        of ``obj``'s rows of their open polytopes; a polytope whose rows became ``+inf`` was ruled out."""
        if ident is None:
            self.uncertified("a contraction of unnamed subdomains")
            return
        open_before = obj.left_open(before.bound.cpu())  # (B, P)
        gone = open_before & ~obj.left_open(after.bound.cpu())
        changed = ((after.lower != before.lower) | (after.upper != before.upper)).any(1).cpu() | gone.any(1)
        ids = ident.cpu()
        if bool(changed.any()):
            self.boxes.append((ids[changed], after.lower.double().cpu()[changed], after.upper.double().cpu()[changed]))
            self.shrunk.view()[ids[changed]] = True
            poly, lam = self._weights(obj)
            node, row = torch.nonzero(open_before[changed].double() @ obj.groups.double().cpu() > 0, as_tuple=True)
            self.contract_rows.append((ids[changed][node], poly[row], lam[row]))
        self.closed.view()[ids] |= gone

    def audit(self, ident: Tensor | None, obj: CaseObjective, bound: Tensor) -> None:
        """Every polytope ``bound`` ``(B, S)`` rules out at the nodes ``ident`` must have a record."""
        if self.problem is not None:
            return
        if ident is None:
            self.uncertified("subdomains without a node")
            return
        claimed = ~obj.left_open(bound.cpu())
        if bool((claimed & ~self.closed.view()[ident.cpu()]).any()):
            self.uncertified("a polytope was ruled out without a recorded bound")

    def dropped(self, ident: Tensor | None) -> None:
        """The nodes ``ident`` left the search: each must have every polytope ruled out by a record (not so
        in a lemma group's tree)."""
        if ident is not None and ident.numel() and not self.lemma and bool((~self.closed.view()[ident.cpu()]).any()):
            self.uncertified("a subdomain was decided by a method that records no certificate")

    def derived_group(self, layer: int, rows: Tensor, tree: CaseRecorder) -> None:
        """A derived lemma group of this case (``format.py``): the rows ``+-e_j`` ``(P, n)`` of ReLU layer
        ``layer``'s pre-activation (value 0), bounded by what the closures of the lemma recorder ``tree`` give
        (the checker derives it).  A tree that cannot be laid out voids the case's certificate (the search
        used its bounds)."""
        built = tree.build()
        if built is None:
            self.lemmas.append(({}, f"a lemma group: {tree.problem}"))
            return
        P = rows.shape[0]
        arrays = {"rows_layer": np.array([layer], np.int64),
                  "rows_neuron": rows.abs().argmax(1).cpu().numpy().astype(np.int64),
                  "rows_side": rows.sum(1).sign().cpu().numpy().astype(np.int8), "rows_value": np.zeros(P),
                  "rows_claimed": np.zeros(P, dtype=bool), "rows_derive": np.array([True])}
        self.lemmas.append(({**built, **arrays}, None))

    # ---- the certificate ----

    def build(self) -> dict[str, np.ndarray] | None:
        """The case's arrays in the certificate format, or None (``problem`` says why)."""
        if self.problem is not None:
            return None
        parent, dead = self.parent.view().numpy(), self.dead.view().numpy()
        n = parent.shape[0]
        kids: list[list[int]] = [[] for _ in range(n)]
        for child in np.nonzero((parent >= 0) & ~dead)[0].tolist():
            kids[parent[child]].append(child)
        order, kind, arg, point = [], np.zeros(n, np.int8), np.full(n, -1, np.int64), np.full(n, np.nan)
        stack = [0]
        while stack:
            v = stack.pop()
            order.append(v)
            if not kids[v]:
                continue
            split = self._split(kids[v])
            if split is None:
                return None
            kind[v], arg[v], point[v], first, second = split
            stack += [second, first]
        order_a = np.asarray(order, np.int64)
        self._order = order_a
        position = np.full(n, -1, np.int64)
        position[order_a] = np.arange(order_a.shape[0])
        lemmas = {}
        for m, (arrays, why) in enumerate(self.lemmas):
            if why is not None:
                self.uncertified(why)
                return None
            lemmas.update({f"lemma{m}/{k}": v for k, v in arrays.items()})
        return {"kind": kind[order_a], "arg": arg[order_a], "point": point[order_a],
                **self._box_arrays(position), **self._closure_arrays(position), **lemmas}

    def _split(self, kids: list[int]) -> tuple[int, int, float, int, int] | None:
        """How a node's two children were made: kind, argument, point, first and second child."""
        if len(kids) != 2:
            self.uncertified(f"a node with {len(kids)} children")
            return None
        a, b = kids
        fork, neuron = self.fork.view(), self.neuron.view()
        if int(fork[a]) >= 0 and int(fork[a]) == int(fork[b]):
            first, second = (a, b) if bool(self.only.view()[a]) else (b, a)
            return FORK, int(fork[a]), float("nan"), first, second
        if int(neuron[a]) >= 0 and int(neuron[a]) == int(neuron[b]):
            first, second = (a, b) if int(self.sign.view()[a]) < 0 else (b, a)
            return RELU_SPLIT, int(neuron[a]), float("nan"), first, second
        lower, upper = self.lower.view().numpy(), self.upper.view().numpy()
        differ = np.nonzero((upper[a] != upper[b]) | (lower[a] != lower[b]))[0]
        if differ.size != 1:
            self.uncertified("children that differ in more than one input")
            return None
        d = int(differ[0])
        if lower[a, d] > lower[b, d]:
            a, b = b, a
        if upper[a, d] != lower[b, d]:
            self.uncertified("input halves that do not meet")
            return None
        return INPUT_SPLIT, d, float(upper[a, d]), a, b

    def _box_arrays(self, position: np.ndarray) -> dict[str, np.ndarray]:
        box = np.full(int((position >= 0).sum()), -1, np.int64)  # per live node, in preorder
        empty = {"box": box, "box_lower": np.zeros((0, self.n_in)), "box_upper": np.zeros((0, self.n_in)),
                 "contract_node": np.zeros(0, np.int64), "contract_poly": np.zeros(0, np.int64),
                 "contract_weights": np.zeros((0, self.R))}
        if not self.boxes:
            return empty
        ids = torch.cat([b[0] for b in self.boxes]).numpy()
        live = position[ids] >= 0
        box[position[ids[live]]] = np.arange(int(live.sum()))  # a node contracted twice keeps its last box
        q_node = position[torch.cat([q[0] for q in self.contract_rows]).numpy()]
        q_live = q_node >= 0
        return {"box": box, "box_lower": torch.cat([b[1] for b in self.boxes]).numpy()[live],
                "box_upper": torch.cat([b[2] for b in self.boxes]).numpy()[live],
                "contract_node": q_node[q_live],
                "contract_poly": torch.cat([q[1] for q in self.contract_rows]).numpy().astype(np.int64)[q_live],
                "contract_weights": torch.cat([q[2] for q in self.contract_rows]).numpy()[q_live]}

    def _closure_arrays(self, position: np.ndarray) -> dict[str, np.ndarray]:
        node = position[torch.cat([c.ids for c in self.closures]).numpy()] if self.closures else np.zeros(0, np.int64)
        live = node >= 0
        out = {"close_node": node[live], "close_poly": _cat([c.poly for c in self.closures], np.int64, ())[live],
               "close_weights": _cat([c.weights for c in self.closures], np.float64, (self.R,))[live],
               "close_on_box": np.concatenate([np.zeros(c.ids.shape[0], bool) if c.on_box is None else c.on_box.numpy()
                                               for c in self.closures]
                                              )[live] if self.closures else np.zeros(0, bool)}
        for name, dtype in (("alpha", np.float32), ("beta", np.float32), ("nu", np.float64)):
            tables, index, used = [], [], 0
            for c in self.closures:
                values = getattr(c, name)
                if values is None:
                    index.append(np.full(c.ids.shape[0], -1, np.int64))
                else:
                    tables.append(values.numpy().astype(dtype))
                    index.append(np.arange(used, used + c.ids.shape[0], dtype=np.int64))
                    used += c.ids.shape[0]
            out[f"close_{name}"] = np.concatenate(index)[live] if index else np.zeros(0, np.int64)
            out[name] = np.concatenate(tables) if tables else np.zeros((0, self.H), dtype)
        return out


def _cat(parts: list[Tensor], dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    return torch.cat(parts).numpy().astype(dtype) if parts else np.zeros((0, *shape), dtype)


class ProofLog:
    """The recorders of every case of one verification (``spec``, a network of ``relu_sizes``)."""

    def __init__(self, spec: Spec, relu_sizes: list[int]) -> None:
        self.relu_sizes = relu_sizes
        self.cases = [CaseRecorder(torch.as_tensor(c.lower), torch.as_tensor(c.upper),
                                   [p.A.shape[0] for p in c.polytopes], relu_sizes) for c in spec.cases]

    def uncertified(self, reason: str) -> None:
        for case in self.cases:
            case.uncertified(reason)

    def root_bounds(self, index: int, obj: CaseObjective, root: Any) -> None:
        """The root bound ``root`` (a ``BoundResult``) of case ``index``'s rows, from its slopes."""
        case = self.cases[index]
        slopes = root.slopes if root.slopes is not None else root.intermediate
        case.bounded(case.root_ident(), obj, torch.full_like(root.lower, -torch.inf), root.lower, slopes)

    def build(self) -> tuple[list[dict[str, np.ndarray]] | None, str]:
        """Every case's arrays, or None and why there is no certificate."""
        arrays = []
        for i, case in enumerate(self.cases):
            built = case.build()
            if built is None:
                return None, f"case {i}: {case.problem}"
            arrays.append(built)
        return arrays, ""


class _NoRecord:
    """The recorder of a search that records nothing."""

    def branched(self, children: SubproblemBatch, neuron: Tensor | None = None) -> SubproblemBatch:
        return children

    def bounded(self, *args: Any, **kwargs: Any) -> None:
        pass

    def forked(self, copies: SubproblemBatch, polytopes: Tensor) -> SubproblemBatch:
        return copies

    def solved(self, *args: Any) -> None:
        pass

    def contracted(self, *args: Any) -> None:
        pass


NO_RECORD = _NoRecord()
