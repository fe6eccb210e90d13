"""Scoring log-likelihood requests over their prefix tree: each distinct token forwarded once.

lm-eval feeds a request's context + continuation (minus its last token) to the model; the
logits at the continuation's positions score it. Across a task these inputs share long
prefixes — the few-shot block is the same for every document, a document's context the same
for all its choices — and their union is a prefix tree whose size (its *trie tokens*) is the
floor of what scoring must forward. The tree is built once per process, as a radix tree whose
nodes are spans of tokens, and walked depth first for every merge: a node's children are
forwarded in batches of ``batch_size`` (sorted by length, right-padded) against the key/value
cache of their common prefix, and each child's row of that cache is where its own children
start. Only the caches on the current path are held: per level of the tree, one batch of at
most ``batch_size`` rows no longer than the model's length. Logits are projected only where a
continuation token is scored (``logits_to_keep``), with lm-eval's float32 log-softmax, sum and
all-tokens-argmax ("greedy") test, so the answers equal lm-eval's to float rounding
(tests/e2e/test_trie.py). Requests lm-eval would truncate are left to lm-eval's own code.

On a GPU that walk issues hundreds of small forwards per λ and leaves the chip idle, so with a
token budget (``pack_tokens``) the tree is cut into *packs* instead: whole subtrees laid out
depth first in one row of at most that many tokens, each token attending to the cached prefix
the pack hangs from, to its ancestors in the pack and to itself (a tree mask: the causal mask
of every root-to-leaf path at once), at its own position. A subtree too large for one pack
puts only its top span in a pack; the span's cache then anchors the packs of its children.
Nothing is forwarded twice (the forwarded tokens are exactly the trie tokens) and a pack has
no padding. The price is attention over masked pairs inside a pack, which is why the budget
is bounded (``PACK_CAP``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from app import compat

# a batch grows while its padding stays within 10% of its tokens or 4 tokens a row (short
# spans: another forward pass would cost more than the padding)
PADDING_SHARE, PADDING_ROW = 0.1, 4
# tokens per pack where the budget comes from free device memory: beyond it the masked pairs
# of a pack's attention cost more than the forwards it saves (docs/benchmarks.md)
PACK_CAP = 4096
MASKABLE = ("sdpa", "eager")  # attention implementations that take an arbitrary 4D mask


@dataclass(eq=False)
class Node:
    """Tokens ``seq[start:end]`` of the inputs through this node; ``slots``: offset in the span
    → the (request, continuation index, target token) its logits score."""

    start: int
    end: int
    seq: tuple[int, ...]
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)
    slots: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict)


def model_input(ctx: list[int], cont: list[int], max_length: int) -> tuple[int, ...]:
    """What lm-eval forwards for a request: the last ``max_length + 1`` tokens of context +
    continuation, minus the final one."""
    return tuple((ctx + cont)[-(max_length + 1):][:-1])


def trie_tokens(inputs) -> int:
    """The number of distinct prefixes of ``inputs`` (positions of their prefix tree)."""
    total, prev = 0, ()
    for seq in sorted(set(inputs)):
        total += len(seq) - _lcp(prev, seq)
        prev = seq
    return total


def _lcp(a: tuple, b: tuple) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def build_tree(inputs) -> tuple[Node, dict[tuple, Node]]:
    """The radix tree of ``inputs`` and the node each input ends in (sorted insertion: each
    sequence branches off the previous one's path at their common prefix)."""
    root = Node(0, 0, ())
    ends: dict[tuple, Node] = {}
    path, prev = [root], ()
    for seq in sorted(set(inputs)):
        shared = _lcp(prev, seq)
        while len(path) > 1 and path[-1].start >= shared:
            path.pop()
        top = path[-1]
        if top.end > shared:  # split: the upper part becomes a new node above it
            upper = Node(top.start, shared, top.seq, top.parent, [top])
            siblings = top.parent.children
            siblings[siblings.index(top)] = upper
            top.start, top.parent = shared, upper
            path[-1] = top = upper
        child = Node(shared, len(seq), seq, top)
        top.children.append(child)
        path.append(child)
        ends[seq] = child
        prev = seq
    return root, ends


@dataclass(eq=False)
class Step:
    """One forward pass: ``nodes`` (each continuing its parent's cached prefix) as a batch."""

    nodes: list[Node]
    ids: torch.Tensor  # [rows, width] the nodes' spans, right-padded
    keep: torch.Tensor  # [rows, width] bool: positions whose logits are projected
    rows: torch.Tensor  # per scored continuation token: its projected row ...
    targets: torch.Tensor  # ... and its target token
    owners: list[tuple[int, int]]  # ... and its (request, index in the continuation)
    release: list[Node]  # nodes whose cache no later step needs


@dataclass(eq=False)
class Pack:
    """One forward pass of ``nodes`` (whole subtrees and single spans hanging from ``anchor``,
    depth first) laid out in one row under a tree mask."""

    anchor: Node
    nodes: list[Node]
    ids: torch.Tensor  # [1, tokens]
    positions: torch.Tensor  # [1, tokens] each token's position in its input
    owner: torch.Tensor  # [tokens] index in ``nodes`` of the node each token belongs to
    above: torch.Tensor  # [nodes, nodes] bool: node j is node i or one of its ancestors
    keep: torch.Tensor  # [1, tokens] bool: positions whose logits are projected
    rows: torch.Tensor
    targets: torch.Tensor
    owners: list[tuple[int, int]]
    anchors: list[tuple[Node, int]]  # (node whose span's cache anchors later packs, offset)
    release: list[Node]  # anchors whose cache no later pack needs


class TrieScorer:
    """Log-likelihoods of prepared HFLM requests from one walk of their prefix tree (or, with
    ``pack_tokens``, from packs of it: see the module's docstring)."""

    def __init__(self, lm, requests: list, pack_tokens: int = 0):
        self.lm, self.requests = lm, requests  # [((context, continuation), ctx, cont)]
        self.fallback = [i for i, (_, ctx, cont) in enumerate(requests)
                         if len(ctx) + len(cont) > lm.max_length + 1]
        skip = set(self.fallback)
        inputs = {i: model_input(ctx, cont, lm.max_length)
                  for i, (_, ctx, cont) in enumerate(requests) if i not in skip}
        self.root, ends = build_tree(inputs.values())
        for i, seq in inputs.items():
            ctx, cont = requests[i][1], requests[i][2]
            node = ends[seq]
            for k in reversed(range(len(cont))):
                pos = len(ctx) - 1 + k  # the input position whose logits predict cont[k]
                while node.start > pos:
                    node = node.parent
                node.slots.setdefault(pos - node.start, []).append((i, k, cont[k]))
        self.packs: list[Pack] = []
        self.steps: list[Step] = []
        if pack_tokens and packable(lm.model):
            self.packs = self._pack_schedule(pack_tokens, max_scored(lm.model))
        else:
            self.steps = self._schedule()

    def _pack_schedule(self, budget: int, scored_cap: int) -> list[Pack]:
        """The packs, fixed once. Under each anchor (the root first), every child's subtree
        that fits the budget (tokens, and scored positions within ``scored_cap``) is one unit,
        every other child a unit of its span alone that becomes an anchor; units go into packs
        first-fit by decreasing size. Anchors are expanded depth first."""
        order, stack = [], [self.root]
        while stack:
            order.append(stack.pop())
            stack.extend(reversed(order[-1].children))
        size, scored = {}, {}
        for node in reversed(order):
            size[id(node)] = node.end - node.start + sum(size[id(c)] for c in node.children)
            scored[id(node)] = len(node.slots) + sum(scored[id(c)] for c in node.children)
        budget = max(budget, max(n.end - n.start for n in order))
        packs, anchors = [], [self.root]
        while anchors:
            anchor = anchors.pop()
            units = []
            for child in anchor.children:
                whole = size[id(child)] <= budget and scored[id(child)] <= scored_cap
                units.append((_subtree(child) if whole else [child], not whole))
            bins: list[list] = []  # [tokens, scored, nodes, big nodes]
            for nodes, big in sorted(units, key=lambda u: -sum(n.end - n.start for n in u[0])):
                tokens = sum(n.end - n.start for n in nodes)
                count = sum(len(n.slots) for n in nodes)
                home = next((b for b in bins if b[0] + tokens <= budget
                             and b[1] + count <= scored_cap), None)
                if home is None:
                    bins.append(home := [0, 0, [], []])
                home[0], home[1] = home[0] + tokens, home[1] + count
                home[2].extend(nodes)
                home[3].extend(nodes if big else [])
            for k, (_, _, nodes, big) in enumerate(bins):
                last = k == len(bins) - 1 and anchor is not self.root
                packs.append(self._pack(anchor, nodes, big, [anchor] if last else []))
                anchors.extend(reversed(big))
        return packs

    def _pack(self, anchor: Node, nodes: list[Node], big: list[Node],
              release: list[Node]) -> Pack:
        index = {id(n): k for k, n in enumerate(nodes)}
        above = torch.zeros((len(nodes), len(nodes)), dtype=torch.bool)
        ids, positions, owner, keep = [], [], [], []
        rows, targets, owners, anchors = [], [], [], []
        projected = 0  # rows of the projected logits, in the order of ``keep``
        for k, node in enumerate(nodes):
            up = node
            while up is not None and id(up) in index:
                above[k, index[id(up)]] = True
                up = up.parent
            if any(node is b for b in big):
                anchors.append((node, len(ids)))
            for offset in range(node.end - node.start):
                if offset in node.slots:
                    for i, c, target in node.slots[offset]:
                        rows.append(projected)
                        targets.append(target)
                        owners.append((i, c))
                    projected += 1
                keep.append(offset in node.slots)
            ids.extend(node.seq[node.start: node.end])
            positions.extend(range(node.start, node.end))
            owner.extend([k] * (node.end - node.start))
        return Pack(anchor, nodes, torch.tensor([ids]), torch.tensor([positions]),
                    torch.tensor(owner), above, torch.tensor([keep]),
                    torch.tensor(rows, dtype=torch.long), torch.tensor(targets, dtype=torch.long),
                    owners, anchors, release)

    def _schedule(self) -> list[Step]:
        """The walk, fixed once: depth first over batches — take up to ``batch_size`` nodes
        from the top of a stack (the children of one batch, longest first, so a batch's spans
        are alike in length) while the padding stays within bounds, forward them, push their
        children; a node's cache is released after the last step that reads it."""
        pad, size = self.lm.tokenizer.pad_token_id or 0, self.lm.batch_size
        steps, stack, last_use = [], [], {}

        def push(nodes):  # the next batches take the longest first
            stack.extend(sorted((c for n in nodes for c in n.children),
                                key=lambda c: c.end - c.start))

        push([self.root])
        while stack:
            nodes = [stack.pop()]
            width, real = nodes[0].end - nodes[0].start, nodes[0].end - nodes[0].start
            while stack and len(nodes) < size and \
                    (stack[-1].parent is self.root) == (nodes[0].parent is self.root):
                span = stack[-1].end - stack[-1].start
                wider = max(width, span)
                padding = wider * (len(nodes) + 1) - real - span
                if padding > max(PADDING_SHARE * (real + span), PADDING_ROW * (len(nodes) + 1)):
                    break
                nodes.append(stack.pop())
                width, real = wider, real + span
            ids = torch.full((len(nodes), width), pad, dtype=torch.long)
            keep = torch.zeros(ids.shape, dtype=torch.bool)
            rows, targets, owners = [], [], []
            projected = 0  # rows of the projected logits, in row-major order of ``keep``
            for r, node in enumerate(nodes):
                ids[r, : node.end - node.start] = torch.tensor(node.seq[node.start: node.end])
                for offset in sorted(node.slots):
                    keep[r, offset] = True
                    for i, k, target in node.slots[offset]:
                        rows.append(projected)
                        targets.append(target)
                        owners.append((i, k))
                    projected += 1
                last_use[id(node.parent)] = len(steps)
            steps.append(Step(nodes, ids, keep, torch.tensor(rows, dtype=torch.long),
                              torch.tensor(targets, dtype=torch.long), owners, []))
            push(nodes)
        for step in steps:
            for node in step.nodes:
                if node.children:
                    steps[last_use[id(node)]].release.append(node)
        return steps

    @torch.no_grad()
    def loglikelihood(self) -> list[tuple[float, bool]]:
        """(log-likelihood, is_greedy) per request, in the requests' order."""
        out: list = [None] * len(self.requests)
        if self.fallback:
            done = compat.loglikelihood_tokens(self.lm, [self.requests[i] for i in self.fallback])
            for i, answer in zip(self.fallback, done):
                out[i] = answer
        terms = {i: [0.0] * len(r[2]) for i, r in enumerate(self.requests) if out[i] is None}
        greedy = dict.fromkeys(terms, True)
        caches: dict[int, list] = {}  # node → per layer (keys, values) of its whole prefix
        for pack in self.packs:
            self._forward_pack(pack, caches, terms, greedy)
        for step in self.steps:
            layers = self._forward(step, caches, terms, greedy)
            for r, node in enumerate(step.nodes):
                if node.children:  # its row, without the left padding of shorter prefixes
                    lo = layers[0][0].shape[2] - step.ids.shape[1] - node.start
                    caches[id(node)] = [(k[r: r + 1, :, lo: lo + node.end],
                                         v[r: r + 1, :, lo: lo + node.end]) for k, v in layers]
            for node in step.release:
                del caches[id(node)]
        for i, values in terms.items():
            out[i] = (float(torch.tensor(values, dtype=torch.float32).sum()), greedy[i])
        return out

    def _forward_pack(self, pack: Pack, caches, terms, greedy) -> None:
        """Run one pack; record its scored tokens; keep its anchors' caches."""
        model, device = self.lm.model, self.lm.device
        prefix = pack.anchor.end
        cache = compat.kv_cache(caches.get(id(pack.anchor)))
        mask = tree_mask(model, pack, prefix, device)
        logits = model(pack.ids.to(device), cache=cache, use_cache=True, attention_mask=mask,
                       position_ids=pack.positions.to(device),
                       logits_to_keep=pack.keep.to(device) if pack.owners else 1).logits
        if pack.owners:
            self._record(logits, pack, terms, greedy)
        layers = compat.kv_tensors(cache)
        for node, offset in pack.anchors:
            lo, hi = prefix + offset, prefix + offset + node.end - node.start
            caches[id(node)] = [(torch.cat([k[:, :, :prefix], k[:, :, lo:hi]], dim=2),
                                 torch.cat([v[:, :, :prefix], v[:, :, lo:hi]], dim=2))
                                for k, v in layers]
        for node in pack.release:
            del caches[id(node)]

    def _record(self, logits: torch.Tensor, step, terms, greedy) -> None:
        """Each scored token's float32 log-probability and greedy test."""
        device = logits.device
        logprobs = F.log_softmax(logits.reshape(-1, logits.shape[-1]), dim=-1,
                                 dtype=self.lm.softmax_dtype)
        rows, targets = step.rows.to(device), step.targets.to(device)
        values = logprobs[rows, targets].tolist()
        hits = (logprobs.argmax(dim=-1)[rows] == targets).tolist()
        for (i, k), value, hit in zip(step.owners, values, hits):
            terms[i][k] = value
            greedy[i] = greedy[i] and hit

    def _forward(self, step: Step, caches, terms, greedy) -> list:
        """Run one step; record its scored tokens; the batch's cache per layer."""
        device, width = self.lm.device, step.ids.shape[1]
        parents = [node.parent for node in step.nodes]
        starts = [node.start for node in step.nodes]
        kwargs = {}
        if parents[0] is self.root:
            cache = compat.kv_cache(None)
        elif all(p is parents[0] for p in parents):
            cache = compat.kv_cache([(k.expand(len(parents), -1, -1, -1),
                                      v.expand(len(parents), -1, -1, -1))
                                     for k, v in caches[id(parents[0])]])
        else:  # prefixes of different lengths, left-padded and masked
            longest = max(starts)
            rows = [caches[id(p)] for p in parents]
            padded = []
            for layer in range(len(rows[0])):
                k0 = rows[0][layer][0]
                k = k0.new_zeros((len(rows), k0.shape[1], longest, k0.shape[3]))
                v = torch.zeros_like(k)
                for r, (row, start) in enumerate(zip(rows, starts)):
                    k[r, :, longest - start:], v[r, :, longest - start:] = row[layer]
                padded.append((k, v))
            cache = compat.kv_cache(padded)
            mask = torch.ones((len(rows), longest + width), dtype=torch.long)
            for r, start in enumerate(starts):
                mask[r, : longest - start] = 0
            offsets = torch.tensor(starts)[:, None] + torch.arange(width)[None, :]
            kwargs = {"attention_mask": mask.to(device), "position_ids": offsets.to(device)}
        logits = self.lm.model(step.ids.to(device), cache=cache, use_cache=True,
                               logits_to_keep=step.keep.to(device) if step.owners else 1,
                               **kwargs).logits
        if step.owners:
            self._record(logits, step, terms, greedy)
        return compat.kv_tensors(cache)


def _subtree(node: Node) -> list[Node]:
    """``node`` and its descendants, depth first (parents before children)."""
    out, stack = [], [node]
    while stack:
        out.append(stack.pop())
        stack.extend(reversed(out[-1].children))
    return out


def packable(model) -> bool:
    """Whether the model's attention takes a pack's tree mask (an arbitrary 4D mask)."""
    return getattr(model.config, "_attn_implementation", None) in MASKABLE


def tree_mask(model, pack: Pack, prefix: int, device) -> torch.Tensor | dict:
    """The pack's additive attention mask ``[1, 1, tokens, prefix + tokens]`` in the model's
    dtype: every token sees the whole cached prefix and, in the pack, its ancestors' tokens
    and its own span's up to itself; a sliding-window layer's mask also hides positions a
    window or more behind. Per layer type where the model has several."""
    owner, positions = pack.owner.to(device), pack.positions[0].to(device)
    n = owner.numel()
    inside = pack.above.to(device)[owner[:, None], owner[None, :]]
    inside &= torch.ones((n, n), dtype=torch.bool, device=device).tril_()
    seen = torch.cat([torch.ones((n, prefix), dtype=torch.bool, device=device), inside], dim=1)
    config = getattr(model.config, "get_text_config", lambda: model.config)()
    types = set(getattr(config, "layer_types", None) or [])
    dtype = model.dtype

    def additive(allowed):
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(
            ~allowed, torch.finfo(dtype).min)[None, None]

    if not types:
        return additive(seen)
    masks = {}
    for kind in types:
        allowed = seen
        if "sliding" in kind and getattr(config, "sliding_window", None):
            keys = torch.cat([torch.arange(prefix, device=device), positions])
            allowed = seen & (positions[:, None] - keys[None, :] < config.sliding_window)
        masks[kind] = additive(allowed)
    return masks


def max_scored(model, logits_bytes: int = 1 << 30) -> int:
    """Scored positions per pack whose logits (model dtype, float32 log-softmax and its
    argmax) fit in ``logits_bytes``."""
    vocab = model.get_output_embeddings().weight.shape[0]
    return max(1, logits_bytes // (vocab * (model.dtype.itemsize + 4 + 8)))


def pack_budget(model, device, share: float = 0.25) -> int:
    """Tokens per pack for ``pack_tokens=auto``: on CUDA, what a pack's activations, mask
    and cache take within ``share`` of the free device memory, at most ``PACK_CAP``; on
    other devices 0 (the walk by rows, fastest on CPU: docs/benchmarks.md)."""
    device = torch.device(device)
    if device.type != "cuda" or not packable(model):
        return 0
    free, _ = torch.cuda.mem_get_info(device)
    config = getattr(model.config, "get_text_config", lambda: model.config)()
    size = model.dtype.itemsize
    hidden = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    per_token = size * (4 * hidden + 3 * config.intermediate_size
                        + (heads + 2 * getattr(config, "num_key_value_heads", heads)) * head_dim
                        + 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim)
    tokens = PACK_CAP
    while tokens > 256 and tokens * per_token + 3 * tokens * (2 * tokens) * size > share * free:
        tokens //= 2
    return tokens
