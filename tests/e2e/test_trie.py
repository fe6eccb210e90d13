"""Prefix-tree scoring: the tree holds each distinct prefix once, and its answers are
lm-eval's — per request log-likelihood to float rounding, identical greedy flags, accuracy and
ECE — on the toy and leaderboard tasks, either padding side, with and without a BOS token,
with sliding-window attention, and for contexts longer than the model (lm-eval's own code)."""

import copy
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from app.config import TOY_DIR
from app.evaluate.engine import HFEngine
from app.evaluate.evaluator import Evaluator
from app.evaluate.trie import build_tree, trie_tokens


@pytest.fixture(scope="module")
def shaped_standin(tmp_path_factory):
    """The MMLU-Pro-shaped stand-in (scripts/build_standins.py --shaped), 8 questions a
    category."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("build_standins",
                                                  root / "scripts" / "build_standins.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("shaped")
    module.build_shaped(out, mmlu_pro_per_category=8)
    return out


def distinct_prefixes(seqs) -> int:
    return len({tuple(s[:i]) for s in seqs for i in range(1, len(s) + 1)})


def test_the_tree_holds_every_distinct_prefix_once():
    rng = random.Random(0)
    shared = [rng.randrange(5) for _ in range(6)]
    seqs = [tuple(shared[: rng.randrange(7)]
                  + [rng.randrange(3) for _ in range(rng.randrange(1, 5))]) for _ in range(60)]
    seqs += seqs[:5] + [seqs[0][:2]]  # repeats and a prefix of another input
    root, ends = build_tree(seqs)
    spans, stack = [], [root]
    while stack:
        node = stack.pop()
        assert all(c.start == node.end and c.seq[: c.start] == node.seq[: node.end]
                   for c in node.children)
        assert node is root or len(node.children) != 1 or node in ends.values()
        spans.append(node.end - node.start)
        stack.extend(node.children)
    assert sum(spans) == trie_tokens(seqs) == distinct_prefixes(seqs)
    for seq, node in ends.items():  # each input ends in its node, reached by its own tokens
        path = []
        while node is not root:
            path[:0] = seq[node.start: node.end]
            node = node.parent
        assert tuple(path) == seq


def random_model(tok, arch="qwen2", **extra):
    from transformers import Gemma2Config, Gemma2ForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    kinds = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "gemma2": (Gemma2Config, Gemma2ForCausalLM)}
    config_class, model_class = kinds[arch]
    config = config_class(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          head_dim=16, pad_token_id=tok.pad_token_id,
                          **{"max_position_embeddings": 4096, **extra})
    return model_class(config).eval()


def with_bos(tok):
    """The toy tokenizer, prefixing every encoding with its BOS token (as Llama's and Gemma's
    tokenizers do)."""
    from tokenizers.processors import TemplateProcessing

    tok = copy.deepcopy(tok)
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)])
    return tok


def compare(model, tok, cfg, lambdas=(None,), other=None, padding="right", pack=0):
    """Both scorings on the same weights at each λ: per-request answers and every metric
    (``pack``: the tree's tokens per forward pass, 0: the walk by rows)."""
    tok.padding_side = padding
    engines = [HFEngine(model, tok, cfg.batch_size, s, pack) for s in ("lm_eval", "trie")]
    plain, tree = (Evaluator(engine, cfg) for engine in engines)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    gaps = []
    for lam in lambdas:
        if lam is not None:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(torch.lerp(base[name], other.get_parameter(name), lam))
        (res_a, _), (res_b, _) = plain.evaluate(), tree.evaluate()
        pairs = [(a.resps[0], b.resps[0]) for a, b in zip(plain._ll, tree._ll)]
        gaps.append(max(abs(a[0] - b[0]) for a, b in pairs))
        assert [a[1] for a, _ in pairs] == [b[1] for _, b in pairs], lam  # greedy flags
        for name in res_a:
            a, b = res_a[name].metrics, res_b[name].metrics
            assert a["acc"] == b["acc"] and a["n"] == b["n"], (name, lam)
            if "ece" in a:
                assert a["ece"] == pytest.approx(b["ece"], abs=1e-6), (name, lam)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(base[name])
    assert max(gaps) < 1e-4, gaps
    return plain, tree


@pytest.mark.parametrize(("padding", "bos"), [("right", False), ("left", True)])
def test_trie_scoring_gives_lm_evals_answers_on_the_toy_at_every_lambda(toy, make_cfg,
                                                                       padding, bos):
    _, it, tok = toy
    tok = with_bos(tok) if bos else copy.deepcopy(tok)
    model = AutoModelForCausalLM.from_pretrained(TOY_DIR / "pt", dtype=torch.float32).eval()
    plain, tree = compare(model, tok, make_cfg("task.limit=60").task, (0.0, 0.4, 1.0), it,
                          padding=padding)
    starts = {ctx[0] for _, ctx, _ in tree.engine.requests}
    assert (starts == {tok.bos_token_id}) is bos
    costs = tree.costs()  # short spans: padding is cheaper than more passes
    assert costs["eval/tokens_forwarded"] <= 1.5 * costs["eval/trie_tokens"]
    assert plain.costs()["eval/tokens_forwarded"] > costs["eval/tokens_forwarded"]
    assert plain.costs()["eval/trie_tokens"] == costs["eval/trie_tokens"]


def test_contexts_longer_than_the_model_go_to_lm_evals_own_code(toy, make_cfg):
    _, _, tok = toy  # 160 positions: some 1-shot MMLU-Pro prompts do not fit
    cfg = make_cfg("task=mmlu_pro", "task.data_dir=${standins:}", "task.limit=12",
                   "task.tasks.0.num_fewshot=1").task
    _, tree = compare(random_model(tok, max_position_embeddings=160), tok, cfg)
    scorer = tree.engine.scorer
    assert scorer.fallback and len(scorer.fallback) < len(scorer.requests)


@pytest.mark.parametrize(("preset", "pack"), [("mmlu_pro", 0), ("bbh", 0), ("mmlu_pro", 300),
                                              ("bbh", 96)])
def test_trie_scoring_gives_lm_evals_answers_on_leaderboard_standins(toy, make_cfg, preset,
                                                                     pack):
    _, _, tok = toy
    cfg = make_cfg(f"task={preset}", "task.data_dir=${standins:}", "task.limit=3",
                   "task.batch_size=4").task  # small batches: children split over steps
    _, tree = compare(random_model(tok), tok, cfg, pack=pack)
    costs, scorer = tree.costs(), tree.engine.scorer
    assert not scorer.fallback
    assert costs["eval/tokens_forwarded"] <= 1.1 * costs["eval/trie_tokens"]
    if pack:  # budgets below a few-shot block: packs hang from spans forwarded before them
        assert costs["eval/tokens_forwarded"] == costs["eval/trie_tokens"]
        assert costs["eval/forwards"] == len(scorer.packs) and not scorer.steps
        assert any(p.anchor is not scorer.root for p in scorer.packs)
        longest = max(n.end - n.start for p in scorer.packs for n in p.nodes)
        assert all(p.ids.shape[1] <= max(pack, longest) for p in scorer.packs)


def test_packs_fill_the_forward_passes_on_the_mmlu_pro_shaped_standin(toy, make_cfg,
                                                                      shaped_standin):
    """MMLU-Pro's shape (14 categories × a 5-shot block of 1,000–1,500 tokens, 8 questions
    each, up to 10 options: 1,010 requests, 20,971 trie tokens): a budget of 4,096 tokens a
    pass scores a λ in 6 forward passes with nothing forwarded twice; the walk by rows of 32
    needs 32 passes and 9% more tokens."""
    _, _, tok = toy
    cfg = make_cfg("task=mmlu_pro", f"task.data_dir={shaped_standin}").task
    model = random_model(tok)
    rows = Evaluator(HFEngine(model, tok, cfg.batch_size, "trie", 0), cfg)
    packed = Evaluator(HFEngine(model, tok, cfg.batch_size, "trie", 4096), cfg)
    (a, _), (b, _) = rows.evaluate(), packed.evaluate()
    gap = max(abs(x.resps[0][0] - y.resps[0][0]) for x, y in zip(rows._ll, packed._ll))
    assert gap < 1e-4 and [x.resps[0][1] for x in rows._ll] == [y.resps[0][1] for y in packed._ll]
    name = "leaderboard_mmlu_pro"
    assert a[name].metrics["acc"] == b[name].metrics["acc"]
    costs = packed.costs()
    assert len(rows._ll) == 1010 and costs["eval/trie_tokens"] == 20971
    assert costs["eval/tokens_forwarded"] == costs["eval/trie_tokens"]
    assert costs["eval/forwards"] <= 6 < rows.costs()["eval/forwards"]


@pytest.mark.parametrize("pack", [0, 200])
def test_sliding_window_attention_is_applied_across_the_cached_prefix(toy, make_cfg, pack):
    _, _, tok = toy  # Gemma-2: every other layer sees 32 positions, prompts are far longer
    model = random_model(tok, "gemma2", sliding_window=32)
    cfg = make_cfg("task=mmlu_pro", "task.data_dir=${standins:}", "task.limit=3").task
    _, tree = compare(model, tok, cfg, pack=pack)
    assert bool(tree.engine.scorer.packs) == bool(pack)
    lengths = [len(ctx) for _, ctx, _ in tree.engine.requests]
    assert min(lengths) > 4 * 32


def test_the_walk_holds_only_the_caches_on_its_path(toy, make_cfg):
    _, _, tok = toy
    cfg = make_cfg("task=bbh", "task.data_dir=${standins:}", "task.limit=2",
                   "task.batch_size=3").task
    engine = HFEngine(random_model(tok), tok, cfg.batch_size, "trie")
    Evaluator(engine, cfg)
    held, peak = set(), 0
    for step in engine.scorer.steps:
        assert all(n.parent in held or n.parent is engine.scorer.root for n in step.nodes)
        held |= {n for n in step.nodes if n.children}
        peak = max(peak, len(held))
        held -= set(step.release)
    assert not held
    depth = max(len(list(_ancestors(n.parent))) for step in engine.scorer.steps
                for n in step.nodes)
    assert peak <= cfg.batch_size * depth


def _ancestors(node):
    while node is not None:
        yield node
        node = node.parent
