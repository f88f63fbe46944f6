"""The retained-message store: the last retained message of each subject, bounded.

A publisher marks a message retained; the broker keeps the newest one per subject so that a
subscription made later starts from the current value, as MQTT's retained messages do. An empty
retained payload deletes the entry. The store is bounded twice, in subjects and in bytes, and a
message that would pass either bound is refused rather than evicting another subject's value:
a store that silently forgot keys would be a key-value store that loses data. The byte bound
counts the store's own structure as well as the sizes its caller gives, so it bounds memory: a
deep subject costs far more in trie nodes than its value does.

Entries live in a token trie, so a wildcard pattern visits only the branches it can match
instead of every retained subject. This module is pure: it never imports trio or socket.
"""

from __future__ import annotations

from typing import Final, Generic, TypeVar, final

__all__ = ["CHILDREN_COST", "ENTRY_COST", "NODE_COST", "RetainedStore"]

T = TypeVar("T")

# The three costs below were measured on CPython 3.11 with sys.getsizeof and with tracemalloc
# over 20,000 real nodes and entries, then rounded up to what pymalloc really allocates (blocks
# of 16 bytes), since resident memory is what a bound is for.

#: Bytes charged for each trie node an insert creates, refunded when a delete prunes it: the
#: `_Node` (48), its token key (53 for a 4-character token, a 64-byte block) and its slot in the
#: parent's children dict (about 25 in a wide dict). Traced: 126 bytes a leaf, over 20,000
#: leaves under one parent; 137 in blocks; rounded up. A token longer than 15 characters costs
#: more, a byte a character; subjects are short (256 bytes at most), so the estimate stays close.
NODE_COST: Final = 144

#: Bytes charged when a node gets its children dict (with its first child), refunded when its
#: last child is pruned and the dict is let go: 184 for a dict of up to 5 keys (192 in blocks),
#: less the one slot NODE_COST already charges. Traced: 285 bytes a node over a chain of 20,000
#: nodes, each its parent's only child (304 in blocks), within NODE_COST + CHILDREN_COST.
CHILDREN_COST: Final = 176

#: Bytes charged for each entry on top of the size the caller gives and the subject's length:
#: the (subject, value, size) tuple (64) and the subject string's header (49, in a block of 64
#: or more), rounded up.
ENTRY_COST: Final = 128


@final
class _Node(Generic[T]):
    __slots__ = ("children", "entry")

    def __init__(self) -> None:
        # None until the first child: half the nodes of a trie or more are leaves, and an empty
        # dict would add 64 bytes to each (measured: 190 bytes a leaf with one, 126 without).
        self.children: dict[str, _Node[T]] | None = None
        self.entry: tuple[str, T, int] | None = None  # subject, value, size


@final
class RetainedStore(Generic[T]):
    """Values keyed by concrete subject, found by pattern; bounded in count and bytes.

    The caller decides what a value is (the server keeps the encoded message) and what it
    weighs; the store adds what its own structure costs and keeps the books. Subjects are
    assumed valid and concrete: the server validates them before they get here.

    Attributes:
        subjects: How many subjects hold a value.
        bytes: Memory the store holds, estimated: the sizes given, plus `NODE_COST` bytes per
            trie node, `CHILDREN_COST` per node with children, and `ENTRY_COST` plus the
            subject's length per entry.
    """

    __slots__ = ("_root", "bytes", "max_bytes", "max_subjects", "subjects")

    def __init__(self, *, max_subjects: int, max_bytes: int) -> None:
        self._root: _Node[T] = _Node()
        self.max_subjects = max_subjects
        self.max_bytes = max_bytes
        self.subjects = 0
        self.bytes = 0

    def __len__(self) -> int:
        return self.subjects

    def get(self, subject: str) -> T | None:
        """The value retained on `subject`, or None."""
        tokens = subject.split(".")
        node, depth = _deepest(self._root, tokens)
        return None if depth < len(tokens) or node.entry is None else node.entry[1]

    def refusal(self, subject: str, size: int) -> str | None:
        """Why storing `size` bytes on `subject` would break a bound, or None if it fits.

        A new subject is charged its size, `ENTRY_COST` plus the subject's length, and what the
        trie grows by: `NODE_COST` for each token it does not have yet and `CHILDREN_COST` for
        each node that gets its first child. Replacing a subject's value counts only the
        difference in size, so an entry can always be replaced by one no larger, even in a
        full store.
        """
        if not self.max_subjects:
            return "retained messages are turned off (max_retained_subjects is 0)"
        tokens = subject.split(".")
        node, depth = _deepest(self._root, tokens)
        old = node.entry if depth == len(tokens) else None
        if old is None and self.subjects >= self.max_subjects:
            return (
                f"the broker retains messages on at most {self.max_subjects} subjects "
                "(max_retained_subjects)"
            )
        if old is None:
            grown = self.bytes + _charge(subject, size) + _growth(node, len(tokens) - depth)
        else:
            grown = self.bytes + size - old[2]
        if grown > self.max_bytes:
            return (
                f"retaining {size} bytes on {subject!r} would hold {grown} bytes with the "
                f"store's own structure, more than max_retained_bytes ({self.max_bytes})"
            )
        return None

    def put(self, subject: str, value: T, size: int) -> str | None:
        """Retain `value` on `subject`, replacing its previous value.

        Returns:
            None when stored; else why not (see `refusal`), and the store is unchanged.
        """
        problem = self.refusal(subject, size)
        if problem is not None:
            return problem
        node = self._root
        for token in subject.split("."):
            if node.children is None:
                node.children = {}
                self.bytes += CHILDREN_COST
            child = node.children.get(token)
            if child is None:
                child = node.children[token] = _Node()
                self.bytes += NODE_COST
            node = child
        if node.entry is None:
            self.subjects += 1
            self.bytes += _charge(subject, size)
        else:
            self.bytes += size - node.entry[2]
        node.entry = (subject, value, size)
        return None

    def delete(self, subject: str) -> bool:
        """Forget `subject`'s value; False if it had none.

        Empty branches are pruned and what they cost refunded, so deleting every subject brings
        `bytes` back to 0.
        """
        tokens = subject.split(".")
        path = [self._root]
        for token in tokens:
            children = path[-1].children
            child = None if children is None else children.get(token)
            if child is None:
                return False
            path.append(child)
        node = path[-1]
        if node.entry is None:
            return False
        self.bytes -= _charge(subject, node.entry[2])
        self.subjects -= 1
        node.entry = None
        for depth in range(len(tokens), 0, -1):
            node = path[depth]
            if node.entry is not None or node.children:
                break
            parent = path[depth - 1]
            assert parent.children is not None
            del parent.children[tokens[depth - 1]]
            self.bytes -= NODE_COST
            if not parent.children:
                parent.children = None  # an emptied dict keeps its table; let it go
                self.bytes -= CHILDREN_COST
        return True

    def matching(self, pattern: str) -> list[tuple[str, T]]:
        """Every (subject, value) whose subject `pattern` matches, sorted by subject.

        `*` matches one token and `>` one or more trailing tokens, as in the routing table.
        Sorted, so a replay has a stable order a reader can predict.
        """
        found = _walk(self._root, pattern.split("."))
        found.sort(key=_subject_of)
        return found


def _charge(subject: str, size: int) -> int:
    # What an entry costs beyond its nodes; the same sum on put and on delete, so they cancel.
    return size + ENTRY_COST + len(subject)


def _growth(node: _Node[T], missing: int) -> int:
    # What adding `missing` tokens below `node` costs: the new nodes, and a children dict in
    # each of them but the last, and in `node` if it has none yet.
    if not missing:
        return 0
    dicts = missing - 1 + (node.children is None)
    return missing * NODE_COST + dicts * CHILDREN_COST


def _deepest(root: _Node[T], tokens: list[str]) -> tuple[_Node[T], int]:
    # The deepest node on the tokens' path that exists, and how many tokens led to it.
    node = root
    for depth, token in enumerate(tokens):
        child = None if node.children is None else node.children.get(token)
        if child is None:
            return node, depth
        node = child
    return node, len(tokens)


def _subject_of(item: tuple[str, object]) -> str:
    return item[0]


def _walk(root: _Node[T], tokens: list[str]) -> list[tuple[str, T]]:
    # An explicit stack, not recursion: subjects may be up to 1024 tokens deep.
    found: list[tuple[str, T]] = []
    last = len(tokens)
    stack: list[tuple[_Node[T], int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        if depth == last:
            if node.entry is not None:
                found.append((node.entry[0], node.entry[1]))
            continue
        token = tokens[depth]
        if node.children is None:
            continue
        if token == ">":
            below = list(node.children.values())
            while below:
                child = below.pop()
                if child.entry is not None:
                    found.append((child.entry[0], child.entry[1]))
                if child.children is not None:
                    below.extend(child.children.values())
        elif token == "*":
            stack.extend((child, depth + 1) for child in node.children.values())
        else:
            exact = node.children.get(token)
            if exact is not None:
                stack.append((exact, depth + 1))
    return found
