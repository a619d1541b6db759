"""YAML read safely: yaml.safe_load's loader, refusing a document whose aliases expand it past a bound
(a "billion laughs" file) before anything is constructed."""

from __future__ import annotations

import yaml

# YAML aliases (`*name`) may repeat an anchored value, but not add more than this many values to
# the file's own: nested aliases (a "billion laughs" file) multiply, and validation, tracking and
# flattening would walk every copy (gigabytes, minutes) where the parsed file is a few kilobytes.
MAX_ALIAS_VALUES = 1_000_000


class AliasBomb(yaml.YAMLError):
    """A document whose aliases expand it past MAX_ALIAS_VALUES, or one that holds itself."""


def check_aliases(root: yaml.Node, limit: int = MAX_ALIAS_VALUES) -> None:
    """Count the values of the composed document `root` with every alias expanded, in time linear in
    its distinct nodes (each collection's expanded count is computed once); raise AliasBomb when the
    aliases add more than `limit` values to the document's own, or a collection holds itself."""
    size: dict[int, int] = {}  # id(collection) -> its values, aliases expanded
    parents: dict[int, int] = {}  # id(collection) -> how many collections hold it (more than one: aliased)
    nodes: dict[int, yaml.Node] = {}
    scalars: set[int] = set()
    active: set[int] = set()  # the collections on the path being expanded: one met again holds itself
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if isinstance(node, yaml.ScalarNode):
            return  # the document is one scalar
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
        key = id(node)
        if done:
            total = 1
            for child in children:
                if isinstance(child, yaml.ScalarNode):
                    scalars.add(id(child))
                    total += 1
                else:
                    total += size[id(child)]
            size[key] = total
            active.discard(key)
        elif key in active:
            line = node.start_mark.line + 1
            raise AliasBomb(f"the anchor on line {line} holds an alias to itself (a recursive value)")
        elif key not in size:
            active.add(key)
            nodes[key] = node
            stack.append((node, True))
            for child in children:
                if not isinstance(child, yaml.ScalarNode):
                    parents[id(child)] = parents.get(id(child), 0) + 1
                    stack.append((child, False))
    added = size[id(root)] - len(size) - len(scalars)
    if added > limit:
        repeated = max((k for k, n in parents.items() if n > 1), key=size.__getitem__, default=None)
        largest = (
            f" (the anchor on line {nodes[repeated].start_mark.line + 1}, {size[repeated]:,} values, "
            f"{parents[repeated]} times)"
            if repeated is not None
            else ""
        )
        raise AliasBomb(
            f"its aliases expand it to {size[id(root)]:,} values{largest}, more than {limit:,} beyond its own "
            '(a "billion laughs" file)'
        )


class BoundedLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing before anything is constructed a document whose aliases
    would expand it past MAX_ALIAS_VALUES (check_aliases)."""

    def get_single_data(self):
        node = self.get_single_node()
        if node is None:
            return None
        check_aliases(node)
        return self.construct_document(node)
