#!/usr/bin/env python3
"""The layer check: every import in the gateway points down.

The app's top-level modules (src/*) are layers, listed below from the outermost down; a module
may use only the modules listed after it (and itself). The workspace's own crates have their
order too: the HTTP/2 engine and the runtime depend on no crate of ours. Prints each upward
import with its file and line and exits 1; prints nothing and exits 0 when the graph is one-way.

References counted: `crate::x` anywhere outside a `#[cfg(test)] mod tests` block, `use crate::{x, ..}`
groups, and `super::` from a module's root file (which names the crate root). Run from the
repository root: python3 scripts/layers.py [ROOT]
"""
import os
import re
import sys

# Outermost first.
LAYERS = [
    "gateway",
    "ingress",
    "ops",
    "stack",
    "robot",
    "upstream",
    "body",
    "metrics",
    "route",
    "config",
    "auth",
    "tls",
    "error",
]

# Crates of the workspace, by directory: the path dependencies each may have.
# The gateway's package depends on the simulated parts for its binary (`partgate demo`,
# `partgate sim-part`), tests and benches; the library never uses them (checked below).
CRATES = {
    ".": {"crates/http2", "crates/runtime", "crates/proto", "crates/sim"},
    "crates/http2": set(),
    "crates/runtime": set(),
    "crates/proto": set(),
    "crates/sim": {"crates/proto"},
}

REF = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
GROUP = re.compile(r"\buse\s+crate::\{([^}]*)\}", re.S)
TESTS = re.compile(r"#\[cfg\(test\)\]\s*(pub(\([a-z]+\))?\s+)?mod tests\s*\{")


def module_of(src, path):
    top = os.path.relpath(path, src).split(os.sep)[0]
    return top[:-3] if top.endswith(".rs") else top


def strip_tests(text):
    m = TESTS.search(text)
    return text[: m.start()] if m else text


def line_of(text, pos):
    return text.count("\n", 0, pos) + 1


def check_modules(root):
    src = os.path.join(root, "src")
    rank = {name: i for i, name in enumerate(LAYERS)}
    problems = []
    for dp, _, files in os.walk(src):
        for f in sorted(files):
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dp, f)
            top = module_of(src, path)
            if top in ("lib", "main"):
                continue
            if top not in rank:
                problems.append(f"{path}: module `{top}` is in no layer (add it to scripts/layers.py)")
                continue
            if os.path.basename(path) == "tests.rs" or os.sep + "tests" + os.sep in path:
                continue
            text = strip_tests(open(path, encoding="utf-8").read())
            # Comments may name any module; only code counts.
            code = re.sub(r"//[^\n]*", lambda m: " " * len(m.group(0)), text)
            refs = [(m.group(1), m.start()) for m in REF.finditer(code)]
            for g in GROUP.finditer(code):
                for item in g.group(1).split(","):
                    name = item.strip().split("::")[0].strip()
                    if name:
                        refs.append((name, g.start()))
            for m in re.finditer(r"\b(sim|partgate_sim)::", code):
                problems.append(
                    f"{os.path.relpath(path, root)}:{line_of(code, m.start())}: the library uses the "
                    "simulated parts (only the binary, src/main.rs, and tests and benches may)"
                )
            for name, pos in refs:
                if name == top or name not in rank:
                    continue
                if rank[name] < rank[top]:
                    problems.append(
                        f"{os.path.relpath(path, root)}:{line_of(code, pos)}: `{top}` uses `{name}`, "
                        f"a layer above it ({' -> '.join(LAYERS)})"
                    )
    return problems


def check_crates(root):
    problems = []
    for crate, allowed in CRATES.items():
        manifest = os.path.join(root, crate, "Cargo.toml")
        if not os.path.exists(manifest):
            problems.append(f"{manifest}: missing")
            continue
        text = open(manifest, encoding="utf-8").read()
        deps = text.split("[dev-dependencies]")[0]
        for m in re.finditer(r'\{[^}\n]*\bpath\s*=\s*"([^"]+)"', deps):
            target = os.path.normpath(os.path.join(crate, m.group(1)))
            if target not in allowed and target != os.path.normpath(crate):
                problems.append(f"{manifest}: depends on `{target}`, which it may not")
    return problems


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    problems = check_modules(root) + check_crates(root)
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
