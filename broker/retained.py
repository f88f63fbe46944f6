"""The retained-message store: the last retained message of each subject, bounded.

A publisher marks a message retained; the broker keeps the newest one per subject so that a
subscription made later starts from the current value, as MQTT's retained messages do. An empty
retained payload deletes the entry. The store is bounded twice, in subjects and in bytes, and a
message that would pass either bound is refused rather than evicting another subject's value:
a store that silently forgot keys would be a key-value store that loses data.

Entries live in a token trie, so a wildcard pattern visits only the branches it can match
instead of every retained subject. This module is pure: it never imports trio or socket.
"""

from __future__ import annotations

from typing import Generic, TypeVar, final

__all__ = ["RetainedStore"]

T = TypeVar("T")


@final
class _Node(Generic[T]):
    __slots__ = ("children", "entry")

    def __init__(self) -> None:
        self.children: dict[str, _Node[T]] = {}
        self.entry: tuple[str, T, int] | None = None  # subject, value, size


@final
class RetainedStore(Generic[T]):
    """Values keyed by concrete subject, found by pattern; bounded in count and bytes.

    The caller decides what a value is (the server keeps the encoded message) and what it
    weighs; the store only keeps the books. Subjects are assumed valid and concrete: the
    server validates them before they get here.
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
        node = self._find(subject)
        return None if node is None or node.entry is None else node.entry[1]

    def refusal(self, subject: str, size: int) -> str | None:
        """Why storing `size` bytes on `subject` would break a bound, or None if it fits.

        Replacing a subject's value counts only the difference in size, so an entry can always
        be replaced by one no larger, even in a full store.
        """
        node = self._find(subject)
        old = node.entry if node is not None else None
        if not self.max_subjects:
            return "retained messages are turned off (max_retained_subjects is 0)"
        if old is None and self.subjects >= self.max_subjects:
            return (
                f"the broker retains messages on at most {self.max_subjects} subjects "
                "(max_retained_subjects)"
            )
        grown = self.bytes + size - (old[2] if old is not None else 0)
        if grown > self.max_bytes:
            return (
                f"retaining {size} bytes on {subject!r} would hold {grown} bytes, more than "
                f"max_retained_bytes ({self.max_bytes})"
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
            child = node.children.get(token)
            if child is None:
                child = node.children[token] = _Node()
            node = child
        if node.entry is None:
            self.subjects += 1
        else:
            self.bytes -= node.entry[2]
        node.entry = (subject, value, size)
        self.bytes += size
        return None

    def delete(self, subject: str) -> bool:
        """Forget `subject`'s value; False if it had none. Empty branches are pruned."""
        path = [self._root]
        for token in subject.split("."):
            child = path[-1].children.get(token)
            if child is None:
                return False
            path.append(child)
        node = path[-1]
        if node.entry is None:
            return False
        self.bytes -= node.entry[2]
        self.subjects -= 1
        node.entry = None
        tokens = subject.split(".")
        for depth in range(len(tokens), 0, -1):
            node = path[depth]
            if node.entry is not None or node.children:
                break
            del path[depth - 1].children[tokens[depth - 1]]
        return True

    def matching(self, pattern: str) -> list[tuple[str, T]]:
        """Every (subject, value) whose subject `pattern` matches, sorted by subject.

        `*` matches one token and `>` one or more trailing tokens, as in the routing table.
        Sorted, so a replay has a stable order a reader can predict.
        """
        found = _walk(self._root, pattern.split("."))
        found.sort(key=_subject_of)
        return found

    def _find(self, subject: str) -> _Node[T] | None:
        node: _Node[T] | None = self._root
        for token in subject.split("."):
            assert node is not None
            node = node.children.get(token)
            if node is None:
                return None
        return node


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
        if token == ">":
            below = list(node.children.values())
            while below:
                child = below.pop()
                if child.entry is not None:
                    found.append((child.entry[0], child.entry[1]))
                below.extend(child.children.values())
        elif token == "*":
            stack.extend((child, depth + 1) for child in node.children.values())
        else:
            exact = node.children.get(token)
            if exact is not None:
                stack.append((exact, depth + 1))
    return found
