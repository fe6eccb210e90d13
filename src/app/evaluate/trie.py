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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from app import compat

# a batch grows while its padding stays within 10% of its tokens or 4 tokens a row (short
# spans: another forward pass would cost more than the padding)
PADDING_SHARE, PADDING_ROW = 0.1, 4


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


class TrieScorer:
    """Log-likelihoods of prepared HFLM requests from one walk of their prefix tree."""

    def __init__(self, lm, requests: list):
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
        self.steps = self._schedule()

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
            logprobs = F.log_softmax(logits.reshape(-1, logits.shape[-1]), dim=-1,
                                     dtype=self.lm.softmax_dtype)
            rows, targets = step.rows.to(device), step.targets.to(device)
            values = logprobs[rows, targets].tolist()
            hits = (logprobs.argmax(dim=-1)[rows] == targets).tolist()
            for (i, k), value, hit in zip(step.owners, values, hits):
                terms[i][k] = value
                greedy[i] = greedy[i] and hit
        return compat.kv_tensors(cache)
