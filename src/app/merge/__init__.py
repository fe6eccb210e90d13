"""Merging: a method config and λ → a mergekit configuration → tensors merged in memory into
one working model that is loaded once per process and reused for every λ.

``merger.Merger.merge_into`` takes the method's direct path (``app.merge.direct``) where the
registry (``app.merge.methods``) declares one and the configuration is one it takes, else
mergekit's executor (``app.merge.mergekit_adapter``); both give the same bits.
"""
