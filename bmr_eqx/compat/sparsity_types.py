"""JaxPruner's sparsity types: which entries are pruned together."""

from typing import NamedTuple, Union


class Unstructured(NamedTuple):
    """Any entry may be pruned."""


class Block(NamedTuple):
    """Blocks of `block_shape` on the first two axes (all further axes belong to the block), ranked
    by the mean (`use_avg_pooling=True`) or the max of their scores. Edge blocks may be smaller."""

    block_shape: tuple[int, int]
    use_avg_pooling: bool = True


class NByM(NamedTuple):
    """Keep `n` of every `m` consecutive entries along `axis`."""

    n: int
    m: int
    axis: int = -1


class Channel(NamedTuple):
    """Whole slices along `axis`, ranked by the sum of their scores."""

    axis: int = -1


SparsityType = Union[Unstructured, Block, NByM, Channel]


def is_sparsity_type(instance_to_check) -> bool:
    """Whether the object is one of the four sparsity types."""
    return type(instance_to_check) in (Unstructured, Block, NByM, Channel)
